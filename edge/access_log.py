"""The edge's access log: one JSON line per request, written off the event loop.

The writer is cdn/jsonlog.py's (shared with the router's query log): a bounded queue, a
writer thread, rotation by size. A full queue drops the line and counts it
(edge_access_log_dropped_total): a slow disk never slows the edge. `sample` keeps that
fraction of the lines (1.0: all), decided per request.

Fields: time (RFC 3339, UTC, ms), client (the socket's peer), site, method, path (target
as sent, bounded), status, bytes (sent
to the client, head included, as nginx's $bytes_sent), cache (hit, miss, stale, ...),
origin_s (time waiting for origin response heads, 0 when none), total_s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import Counter

from cdn.jsonlog import JsonLinesLog
from edge.armour import AccessLogSettings

MAX_PATH_CHARS = 2048  # of a target in a line: a log line stays a line

# Seconds this request waited for origin heads; a list so that a fetch in a child task
# (coalescing, a background refresh) adds to the request's own cell.
ORIGIN_SECONDS: ContextVar[list[float]] = ContextVar("edge_origin_seconds")


def add_origin_time(seconds: float) -> None:
    """Called where an origin answers: adds to the current request's origin time."""
    cell = ORIGIN_SECONDS.get(None)
    if cell is not None:
        cell[0] += seconds


class AccessLog(JsonLinesLog):
    """Started with the edge, stopped with it (stop() writes what is queued)."""

    def __init__(
        self,
        settings: AccessLogSettings,
        dropped: Counter,
        sample: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(settings, on_drop=dropped.inc, sample=sample)


# What the content handler leaves on the request for its line (aiohttp requests are maps).
CACHE_RESULT = web.RequestKey("edge_cache_result", str)
SITE = web.RequestKey("edge_site", str)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def access_middleware(access_log: AccessLog) -> Middleware:
    """The content app's middleware that writes each request's line (installed only when
    the access log is on: otherwise the request path pays nothing)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not access_log.wanted():
            return await handler(request)
        start = time.monotonic()
        cell = [0.0]
        ORIGIN_SECONDS.set(cell)
        status, sent = 500, 0
        try:
            response = await handler(request)
            status, sent = response.status, response.body_length
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            access_log.write(
                client=request.remote or "-",
                site=request.get(SITE, "-"),
                method=request.method,
                path=request.raw_path[:MAX_PATH_CHARS],
                status=status,
                bytes=sent,
                cache=request.get(CACHE_RESULT, "-"),
                origin_s=round(cell[0], 6),
                total_s=round(time.monotonic() - start, 6),
            )

    return middleware
