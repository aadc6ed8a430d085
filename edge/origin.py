"""The edge's origin client: one aiohttp session, bounded waits, failures mapped to OriginError.

Every way an origin can fail us ends as one of three kinds (the edge_origin_errors label,
and through OriginError.status what the client gets): `connect` (refused, unreachable:
502), `timeout` (504), `invalid` (a malformed status line or header, broken chunking, a
body shorter than its Content-Length, a connection dropped mid-response: 502). The proxy
never sees an aiohttp exception.

Four limits end in `timeout` (edge_origin_timeouts{limit}): `connect` and `read` bound
each wait on the socket, and an origin that trickles passes both, one byte at a time. So
`head` bounds the whole fetch up to a complete response head, and `rate` cuts a body that
delivers less than origin_min_bytes_per_s over origin_min_rate_window_s of waiting for
it. Only the time spent waiting on the origin counts, never the time a slow client holds a
chunk (that is back-pressure, not a slow origin); the check costs two clock reads and
additions per chunk. Streams (edge/rules.py is_stream: event streams, X-Accel-Buffering:
no) are slow by design: they get no floor and no
total deadline, only stream_idle_timeout_s between two reads (set on the connection once
the head is in). The session has no total timeout either (aiohttp's default of 300 s would
cut every stream at five minutes).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edge.access_log import add_origin_time
from edge.config import Limits
from edge.digests import DigestCheck, Expected, expected_digests
from edge.directives import response_cache_control
from edge.errors import OriginError
from edge.framing import MalformedResponse, ResponseFraming
from edge.metrics import EdgeMetrics
from edge.rules import is_stream, relayed_at_once

log = logging.getLogger("edge.origin")

READ_CHUNK_BYTES = 64 * 1024
_FIELD_NAMES = {"content": "Content-Digest", "repr": "Repr-Digest"}
MAX_ORIGIN_CONNECTIONS = 256
# Idle origin connections are closed by us before a typical origin closes them (Node: 5 s),
# which narrows the race where a request is written to a connection being closed.
ORIGIN_KEEPALIVE_S = 4.0
# Headers aiohttp's client would add by itself: a proxy forwards the client's, or none.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
# What a failing origin raises through aiohttp (InvalidURL and friends are ValueErrors).
_FAILURES = (aiohttp.ClientError, OSError, TimeoutError, ValueError)


@dataclass(frozen=True, slots=True)
class OriginResponse:
    """An origin response whose head has arrived; the body is read from ``chunks``."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    request_time: float
    response_time: float
    _response: aiohttp.ClientResponse
    _metrics: EdgeMetrics
    method: str = "GET"
    url: str = ""  # the origin URL fetched, for log lines
    streamed: bool = False  # slow by design, never stored (rules.is_stream)
    at_once: bool = False  # relayed as it arrives, nothing held back (rules.relayed_at_once)
    # The body's floor: at least _min_bytes_per_s per _window_s of waiting (inf: none).
    _min_bytes_per_s: float = 0.0
    _window_s: float = math.inf

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a broken or slow body raises OriginError, and so does
        one that fails its digest fields (RFC 9530, edge/digests.py), before its last
        chunk: a body with a digest to check is held back by one chunk (not a stream's,
        relayed at once), released only once the digest matched."""
        expected = expected_digests(self.method, self.status, self.headers)
        if not expected:
            async for chunk in self._chunks():
                yield chunk
            return
        check = DigestCheck(expected)
        held = b""
        # A stream relayed at once with a declared length would be complete (RFC 9112 §6.3)
        # before the check: its last byte waits for the check.
        length = self.headers.get("Content-Length", "").strip()
        left = int(length) if self.at_once and length.isdigit() else -1
        async for chunk in self._chunks():
            check.update(chunk)
            if self.at_once:
                if held:
                    yield held  # more than declared: the framing ends it anyway
                    held = b""
                left -= len(chunk)
                if left == 0:
                    chunk, held = chunk[:-1], chunk[-1:]
                if chunk:
                    yield chunk
                continue
            if held:
                yield held
            held = chunk
        mismatches = check.mismatches()
        if mismatches:
            raise _digest_mismatch(self._metrics, self.url, mismatches)
        self._metrics.digests_verified.inc()
        if held:
            yield held

    async def _chunks(self) -> AsyncIterator[bytes]:
        floor, window = self._min_bytes_per_s, self._window_s
        got, waited = 0, 0.0
        clock = time.monotonic
        resumed = clock()
        try:
            async for chunk in self._response.content.iter_chunked(READ_CHUNK_BYTES):
                waited += clock() - resumed  # time in the read: the origin's, not the client's
                got += len(chunk)
                if waited >= window:
                    if got < floor * waited:
                        raise _too_slow(self._metrics, got, waited, floor)
                    got, waited = 0, 0.0
                yield chunk
                resumed = clock()
        except _FAILURES as exc:
            raise _origin_error(exc, self._metrics) from exc


class _OriginProtocol(ResponseHandler):
    """aiohttp's client protocol, fed no further than the end of each response.

    Bytes past the end (a body longer than its Content-Length) are dropped and the
    connection is closed instead of pooled: RFC 9112 §6.3, see edge/framing.py. A head
    the framing refuses (bare LF, oversized) fails the response before aiohttp parses it.
    """

    _framing: ResponseFraming | None = None

    def set_response_params(self, **params: Any) -> None:
        # Called once per request, before its response is read.
        self._framing = ResponseFraming(head_only=bool(params.get("skip_payload")))
        super().set_response_params(**params)

    def data_received(self, data: bytes) -> None:
        framing = self._framing
        if framing is None or not data:  # b"": aiohttp resuming a paused payload
            super().data_received(data)
            return
        ended_before = framing.ended
        try:
            kept, dropped = framing.feed(data)
        except MalformedResponse as exc:  # never parsed, so never stored: 502 invalid
            if self.transport is not None:
                self.transport.close()
            self.set_exception(exc)
            return
        if kept:
            super().data_received(kept)
        if dropped:
            self.force_close()  # never pooled: where the next response starts is unknown
            if ended_before:
                self.close()  # idle in the pool, or read to the end: nothing left to lose


def _origin_protocol(loop: asyncio.AbstractEventLoop) -> ResponseHandler:
    return _OriginProtocol(loop=loop)


class OriginClient:
    """Fetches from one origin base URL; start() before use, close() at shutdown.

    ``tls`` is the client context for an https:// origin. A client replaced by a reload is
    retired: it closes once its last fetch is done, so no request in flight is cut."""

    def __init__(
        self,
        base_url: str,
        limits: Limits,
        metrics: EdgeMetrics,
        clock: Callable[[], float],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._tls = tls
        self._active = 0
        self._retired = False
        self._closing: asyncio.Task[None] | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=limits.origin_connect_timeout_s,
            sock_read=limits.origin_read_timeout_s,
        )
        self._head_timeout_s = limits.origin_head_timeout_s
        self._stream_idle_timeout_s = limits.stream_idle_timeout_s
        self._min_bytes_per_s = float(limits.origin_min_bytes_per_s)
        # A floor of 0 is no floor: a window that never closes.
        self._window_s = (
            limits.origin_min_rate_window_s if limits.origin_min_bytes_per_s else math.inf
        )
        self._metrics = metrics
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    @property
    def tls(self) -> ssl.SSLContext | bool:
        """What verifies this origin's certificate: a context with its CAs, or the default."""
        return self._tls if self._tls is not None else True

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=MAX_ORIGIN_CONNECTIONS,
            keepalive_timeout=ORIGIN_KEEPALIVE_S,
            ssl=self.tls,
        )
        # aiohttp has no public hook for its protocol class; _factory makes each connection.
        connector._factory = functools.partial(_origin_protocol, asyncio.get_running_loop())
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            connector=connector,
            auto_decompress=False,  # bytes pass through as the origin encoded them
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NO_AUTO_HEADERS,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def closed(self) -> bool:
        return self._session is not None and self._session.closed

    def retire(self) -> None:
        """Close once no request or fetch holds this client (a reload replaced it)."""
        self._retired = True
        self._close_if_idle()

    def hold(self) -> None:
        """One more user (a request in progress, a fetch): a retired client waits for it."""
        self._active += 1

    def release(self) -> None:
        self._active -= 1
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self._retired and self._active == 0 and self._closing is None:
            self._closing = asyncio.get_running_loop().create_task(self.close())

    @asynccontextmanager
    async def fetch(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None = None,
    ) -> AsyncIterator[OriginResponse]:
        """Send one request; yields once the response head is in (body still unread).
        A ``body`` that is an async iterable streams to the origin as it is produced."""
        assert self._session is not None, "OriginClient.start() not called"
        if self._session.closed:  # retired and closed under a late background refresh
            raise OriginError("connect", "origin client replaced by a reload")
        self.hold()
        try:
            async with self._fetch(method, target, headers, body) as response:
                yield response
        finally:
            self.release()

    @asynccontextmanager
    async def _fetch(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: bytes | AsyncIterable[bytes] | None,
    ) -> AsyncIterator[OriginResponse]:
        assert self._session is not None
        url = URL(self.base_url + target, encoded=True)
        request_time = self._clock()
        # One deadline from connecting to the last byte of the head: the per-read timeout
        # alone lets an origin trickle its head for ever.
        head = asyncio.timeout(self._head_timeout_s)
        try:
            async with head:
                # aiohttp retries an idempotent request once on a dropped connection and
                # never a POST (RFC 9110 §9.2.2); the edge adds no retries of its own.
                response = await self._session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
        except _FAILURES as exc:
            if head.expired():
                message = f"response head not complete within {self._head_timeout_s:g} s"
                raise _timed_out(self._metrics, "head", message) from exc
            raise _origin_error(exc, self._metrics) from exc
        response_time = self._clock()
        self._metrics.origin_duration.observe(response_time - request_time)
        add_origin_time(response_time - request_time)
        streamed = is_stream(response.status, response.headers)
        at_once = streamed or relayed_at_once(
            response.status, response.headers, response_cache_control(response.headers)
        )
        if streamed:
            self._idle_between_reads(response)
        try:
            yield OriginResponse(
                status=response.status,
                reason=response.reason or "",
                headers=response.headers,
                request_time=request_time,
                response_time=response_time,
                _response=response,
                _metrics=self._metrics,
                method=method,
                url=str(url),
                _min_bytes_per_s=self._min_bytes_per_s,
                _window_s=math.inf if streamed else self._window_s,
                streamed=streamed,
                at_once=at_once,
            )
        finally:
            response.release()

    def _idle_between_reads(self, response: aiohttp.ClientResponse) -> None:
        """A stream's body reads wait up to stream_idle_timeout_s each, not the read timeout."""
        protocol = None if response.connection is None else response.connection.protocol
        if protocol is not None:  # None: the body is in already, no read left to wait on
            protocol.read_timeout = self._stream_idle_timeout_s
            protocol.start_timeout()  # re-armed now with the stream's idle limit


def _timed_out(metrics: EdgeMetrics, limit: str, message: str) -> OriginError:
    metrics.origin_timeouts.labels(limit).inc()
    return OriginError("timeout", message)


def _too_slow(metrics: EdgeMetrics, got: int, waited: float, floor: float) -> OriginError:
    rate = f"{got / waited:.0f} bytes/s over {waited:.1f} s"
    return _timed_out(metrics, "rate", f"body at {rate}, under the floor of {floor:g} bytes/s")


def _digest_mismatch(
    metrics: EdgeMetrics, url: str, mismatches: tuple[Expected, ...]
) -> OriginError:
    """A body that is not what its digest fields say: counted, logged with its URL."""
    fields = sorted({e.field for e in mismatches})
    for field in fields:
        metrics.digest_mismatches.labels(field).inc()
    names = ",".join(f"{_FIELD_NAMES[e.field]}:{e.algorithm}" for e in mismatches)
    log.warning("event=digest_mismatch url=%r digests=%s", url, names)
    return OriginError("digest", f"body does not match {names}")


def _origin_error(exc: Exception, metrics: EdgeMetrics) -> OriginError:
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        limit = "connect" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "read"
        return _timed_out(metrics, limit, str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return OriginError("connect", str(exc))
    return OriginError("invalid", str(exc) or type(exc).__name__)
