"""The edge's origin client: one aiohttp session, bounded waits, failures mapped to OriginError.

Every way an origin can fail us ends as one of three kinds (the edge_origin_errors label,
and through OriginError.status what the client gets): `connect` (refused, unreachable:
502), `timeout` (no connection or no bytes within the limit: 504), `invalid` (a malformed
status line or header, broken chunking, a body shorter than its Content-Length, a
connection dropped mid-response: 502). The proxy never sees an aiohttp exception.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edge.errors import OriginError
from edge.framing import MalformedResponse, ResponseFraming
from edge.metrics import EdgeMetrics

READ_CHUNK_BYTES = 64 * 1024
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

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; a broken or slow body raises OriginError."""
        try:
            async for chunk in self._response.content.iter_chunked(READ_CHUNK_BYTES):
                yield chunk
        except _FAILURES as exc:
            raise _origin_error(exc) from exc


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
    """Fetches from one origin base URL; start() before use, close() at shutdown."""

    def __init__(
        self,
        base_url: str,
        connect_timeout_s: float,
        read_timeout_s: float,
        metrics: EdgeMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._metrics = metrics
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=MAX_ORIGIN_CONNECTIONS, keepalive_timeout=ORIGIN_KEEPALIVE_S
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

    @asynccontextmanager
    async def fetch(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str] | CIMultiDict[str],
        body: bytes | None = None,
    ) -> AsyncIterator[OriginResponse]:
        """Send one request; yields once the response head is in (body still unread)."""
        assert self._session is not None, "OriginClient.start() not called"
        url = URL(self.base_url + target, encoded=True)
        request_time = self._clock()
        try:
            # aiohttp retries an idempotent request once on a dropped connection and
            # never a POST (RFC 9110 §9.2.2); the edge adds no retries of its own.
            response = await self._session.request(
                method, url, headers=headers, data=body, allow_redirects=False
            )
        except _FAILURES as exc:
            raise _origin_error(exc) from exc
        response_time = self._clock()
        self._metrics.origin_duration.observe(response_time - request_time)
        try:
            yield OriginResponse(
                status=response.status,
                reason=response.reason or "",
                headers=response.headers,
                request_time=request_time,
                response_time=response_time,
                _response=response,
            )
        finally:
            response.release()


def _origin_error(exc: Exception) -> OriginError:
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return OriginError("timeout", str(exc) or type(exc).__name__)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return OriginError("connect", str(exc))
    return OriginError("invalid", str(exc) or type(exc).__name__)
