"""The edge's pre-warm shell: the router's POST, the fetchers, the report's figures.

POST /api/v1/prewarm (control port, the fleet token) takes a PrewarmOrder and answers
202 {"id", "result": "queued"} (200 "duplicate" for an id queued before; 503 "full"
when the queue has no room). edge.prewarm_concurrency fetchers take URLs from the
queue (edge/prewarm.py decides), each a HEAD to this edge's own content port with the
URL's host, so it goes the way a client's request goes: memory, disk, then one
coalesced fill from the parent or origin. They carry a per-process secret in
PREWARM_HEADER, which tells the proxy not to count them as client load or as popularity.
While the edge is busy a fetcher waits BUSY_WAIT_S and looks again; after each fetch it
yields to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from dataclasses import replace
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from cdn.config import HostPort
from cdn.jsonbody import decode_json_object, read_limited
from cdn.prewarm import MAX_ORDER_URLS, MAX_URL_CHARS, Outcome, PrewarmOrder
from cdn.purge import PurgeError
from cdn.report import LoadReport
from edge.control import refusal
from edge.load import LoadSnapshot
from edge.metrics import EdgeMetrics
from edge.prewarm import HotSet, Job, PrewarmQueue, classify, may_fetch
from edge.relay import PREWARM_HEADER

BUSY_WAIT_S = 0.2  # a busy edge is looked at again this often
FETCH_TIMEOUT_S = 30.0
MAX_BODY_BYTES = MAX_ORDER_URLS * (MAX_URL_CHARS + 4) + 1024
MAX_DEPTH = 3  # {"urls": [...]}

log = logging.getLogger("edge.prewarm")


class Prewarmer:
    """Queue, fetchers and hot set of one edge; start() once the content port is bound."""

    def __init__(
        self,
        *,
        metrics: EdgeMetrics,
        tokens: tuple[str, ...],
        snapshot: Callable[[], LoadSnapshot],
        concurrency: int,
        max_utilization: float,
        clock: Callable[[], float],
    ) -> None:
        self._metrics = metrics
        self._tokens = tokens
        self._snapshot = snapshot
        self._concurrency = concurrency
        self._max_utilization = max_utilization
        self._clock = clock
        self.queue = PrewarmQueue()
        self.hot = HotSet(clock())
        self.secret = secrets.token_urlsafe(16)
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None
        self._content: HostPort | None = None
        self.running = 0  # fetches in progress now (never above concurrency)

    def start(self, content: HostPort) -> None:
        host = "127.0.0.1" if content.host in ("0.0.0.0", "") else content.host
        host = "::1" if host == "::" else host
        self._content = HostPort(host, content.port)
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S), auto_decompress=False
        )
        self._tasks = [
            asyncio.create_task(self._fetcher(), name=f"prewarm-{i}")
            for i in range(self._concurrency)
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def annotate(self, report: LoadReport) -> LoadReport:
        """The report with this edge's hot set and recent pre-warm progress."""
        now = self._clock()
        return replace(report, hot=self.hot.top(now), prewarm=self.queue.progress(now))

    async def handle(self, request: web.Request) -> web.Response:
        """POST /api/v1/prewarm from a router."""
        if (refused := refusal(request, self._tokens)) is not None:
            return refused
        try:
            raw = await read_limited(request.content.read, MAX_BODY_BYTES)  # over the app's cap
            body = decode_json_object(raw, max_bytes=MAX_BODY_BYTES, max_depth=MAX_DEPTH)
            order = PrewarmOrder.from_dict(body)
        except (ValueError, PurgeError) as exc:  # JsonBodyError; PrewarmError is a PurgeError
            return web.json_response({"error": str(exc)}, status=400)
        result = self.queue.admit(order, self._clock())
        self._metrics.prewarm_tasks.labels(result).inc()
        self._metrics.prewarm_queue.set(self.queue.depth)
        log.info("event=prewarm_task id=%s urls=%d result=%s", order.id, len(order.urls), result)
        if result == "queued":
            self._work.set()
        status = {"queued": 202, "duplicate": 200}.get(result, 503)
        return web.json_response({"id": order.id, "result": result}, status=status)

    async def _fetcher(self) -> None:
        while True:
            job = self.queue.take()
            if job is None:
                self._work.clear()
                await self._work.wait()
                continue
            self.running += 1
            try:
                while not may_fetch(self._snapshot().utilization, self._max_utilization):
                    self._metrics.prewarm_waits.inc()
                    await asyncio.sleep(BUSY_WAIT_S)
                outcome, status = await self._fetch(job)
            except Exception as exc:  # one URL's failure must not end this fetcher
                log.warning("event=prewarm_fetch_failed url=%r error=%r", job.url, exc)
                outcome, status = "failed", 0
            finally:
                self.running -= 1
            self.queue.record(job, outcome, status, self._clock())
            self._metrics.prewarm_urls.labels(outcome).inc()
            self._metrics.prewarm_queue.set(self.queue.depth)
            await asyncio.sleep(0)  # yield: client requests waiting on the loop go first

    async def _fetch(self, job: Job) -> tuple[Outcome, int]:
        assert self._session is not None and self._content is not None
        parts = urlsplit(job.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host = self._content.host
        where = f"[{host}]" if ":" in host else host
        headers = {"Host": parts.netloc.rpartition("@")[2], PREWARM_HEADER: self.secret}
        try:
            async with self._session.head(
                f"http://{where}:{self._content.port}{target}",
                headers=headers,
                allow_redirects=False,
            ) as resp:
                return classify(resp.status, resp.headers.get("Cache-Status"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("event=prewarm_fetch_failed url=%r error=%r", job.url, type(exc).__name__)
            return "failed", 0
