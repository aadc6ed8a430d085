"""The content port's connection guard: caps on open connections and deadlines on heads
and body reads, which aiohttp does not have (slowloris defence).

aiohttp's RequestHandler reads a request head for as long as the client cares to feed it
and keeps an idle connection for its keep-alive timeout; a client that sends one byte every
few seconds, or half a head and nothing more, holds a socket and a task for ever. The
guard is a RequestHandler subclass, per connection:

    accepted       -> over max_connections (total or from this address)?  503, closed
    awaiting head  -> armed at accept and at the first byte after a response; a complete
                      head disarms it; firing answers 408 and closes (HAProxy
                      `timeout http-request`)
    reading body   -> armed when a head leaves its body unread and at each read; disarmed
                      while aiohttp pauses reading (the handler is behind, not the client);
                      firing closes the connection (the request fails)
    idle           -> aiohttp's keep-alive timeout (set from armour.keepalive_timeout_s)

A plain fresh hit is answered here, before aiohttp sees its head (edge/fast_hit.py): while
aiohttp is idle, heads are gathered and answered in order; the first the fast path does
not take goes to aiohttp with everything after it, and the fast path waits until aiohttp
has answered it (and only if that was one bodiless request on a kept-alive connection:
then aiohttp's parser holds nothing and its handler waits for the next head).

The client address is the socket's peer, never a header: a cap must hold against anyone.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from edge.armour import ArmourSettings
from edge.fast_hit import FastHits, could_be_plain, parse_plain_get
from edge.metrics import EdgeMetrics

# Written before closing a refused or timed-out connection: short, final, no body.
_REFUSED = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
_HEAD_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
# A head the fast path gathers may be this long; a longer one is aiohttp's (its limits
# answer 400/431).
MAX_FAST_HEAD_BYTES = 8192
# A request aiohttp answers on behalf of the fast path leaves its parser clean only if it
# had no body and did not switch protocols.
_BODY_OR_UPGRADE = re.compile(rb"\r\n(?:content-length|transfer-encoding|upgrade)[ \t]*:", re.I)


class ConnectionTable:
    """Open connections, in total and per client address; admit() before release()."""

    def __init__(self, total: int, per_client: int) -> None:
        self.total = total
        self.per_client = per_client
        self.open = 0
        self._by_client: collections.Counter[str] = collections.Counter()

    def admit(self, client: str) -> str | None:
        """None when admitted (and counted), else why not: "total" or "per_client"."""
        if self.open >= self.total:
            return "total"
        if self._by_client[client] >= self.per_client:
            return "per_client"
        self.open += 1
        self._by_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open -= 1
        left = self._by_client[client] - 1
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]


class Guard:
    """What every guarded connection of one edge shares."""

    def __init__(self, settings: ArmourSettings, metrics: EdgeMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.connections = ConnectionTable(
            settings.max_connections, settings.max_connections_per_client
        )
        self.fast: FastHits | None = None  # plain fresh hits answered before aiohttp


class GuardedHandler(RequestHandler):
    """aiohttp's RequestHandler with the guard's caps and deadlines (see the module doc)."""

    def __init__(self, manager: web.Server, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._client: str | None = None  # set once admitted
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True
        self._body: Any = None  # the StreamReader of a body still being received
        self._fast = guard.fast is not None  # heads go to the fast path first
        self._gathered = b""  # the start of a head the fast path waits to complete
        self._resumable = False  # aiohttp answers one bodiless request for the fast path
        self._ssl_object: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        refused = self._guard.connections.admit(client)
        if refused is not None:
            self._guard.metrics.connections_refused.labels(refused).inc()
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(_REFUSED)
            transport.close()
            return
        self._client = client
        self._ssl_object = transport.get_extra_info("ssl_object")
        self._guard.metrics.connections_open.inc()
        super().connection_made(transport)
        self._arm(self._guard.settings.head_timeout_s, self._head_expired)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._client is not None:
            self._guard.connections.release(self._client)
            self._guard.metrics.connections_open.dec()
            self._client = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        resumable = False
        if self._fast:
            data, resumable = self._answer_fast(data)
            if not data:
                return
        if self._awaiting_head and self._timer is None:
            self._arm(self._guard.settings.head_timeout_s, self._head_expired)
        parsed = len(self._messages)
        super().data_received(data)
        self._resumable = resumable
        if len(self._messages) > parsed:  # a complete head (or the parser's 400)
            self._awaiting_head = False
            self._disarm()
            message, payload = self._messages[-1]
            upgrade = getattr(message, "upgrade", False)  # a tunnel's bytes are no body
            self._body = None if upgrade or payload.is_eof() else payload
        if self._body is not None:
            if self._upgraded or self._payload_parser is not None:
                self._body = None  # a tunnel now: its own idle timeout governs (edge/tunnel.py)
                self._disarm()
            elif self._body.is_eof():
                self._body = None
                self._disarm()
            elif not self._reading_paused:
                self._arm(self._guard.settings.body_read_timeout_s, self._body_expired)

    def _answer_fast(self, data: bytes) -> tuple[bytes, bool]:
        """Answer the plain hits at the front of the gathered bytes; the rest is aiohttp's,
        and whether the fast path may resume once aiohttp has answered it."""
        fast, pending = self._guard.fast, self._gathered + data
        self._gathered = b""
        assert fast is not None
        answered = False
        while True:
            end = pending.find(b"\r\n\r\n")
            if end < 0:
                if len(pending) > MAX_FAST_HEAD_BYTES or not could_be_plain(pending):
                    break  # aiohttp answers what cannot become a plain GET, at once
                self._gathered = pending
                if answered or self._timer is None:  # a head started: its deadline runs
                    self._awaiting_head = True
                    self._arm(self._guard.settings.head_timeout_s, self._head_expired)
                return b"", False
            if self._close or self._force_close or self._paused or self.transport is None:
                break  # closing, or the client is not reading: aiohttp waits for it
            if end > MAX_FAST_HEAD_BYTES:
                break
            request = parse_plain_get(pending[:end], fast.limits)
            answer = (
                None
                if request is None
                else fast.answer(request, self._ssl_object, self._client or "-")
            )
            if answer is None:
                break
            self.transport.writelines(answer)  # one send (scatter/gather on Python 3.12+)
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
            self._disarm()
            answered = True
            pending = pending[end + 4 :]
            if not pending:
                self._awaiting_head = True
                return b"", False
        self._fast = False
        one_head = end >= 0 and end + 4 == len(pending) and pending.startswith((b"GET ", b"HEAD "))
        return pending, one_head and _BODY_OR_UPGRADE.search(pending) is None

    def pause_reading(self) -> None:
        super().pause_reading()
        if self._body is not None:
            self._disarm()  # the handler is behind; the client is not to blame

    def resume_reading(self, resume_parser: bool = True) -> None:
        super().resume_reading(resume_parser)
        if self._body is not None and not self._body.is_eof():
            self._arm(self._guard.settings.body_read_timeout_s, self._body_expired)

    async def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> tuple[StreamResponse, bool]:
        answer = await super().finish_response(request, resp, start_time)
        if self._resumable and not self._messages and resp.keep_alive and not self._upgraded:
            self._fast = True  # aiohttp's parser holds nothing: heads are ours again
        self._resumable = False
        # The next head's deadline starts at its first byte (idle is keep-alive's business);
        # a pipelined head already parsed needs none.
        self._body = None
        self._disarm()
        self._awaiting_head = not self._messages
        return answer

    def _arm(self, delay_s: float, expired: Any) -> None:
        self._disarm()
        self._timer = self._loop.call_later(delay_s, expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_expired(self) -> None:
        self._timer = None
        if not self._awaiting_head or self.transport is None:
            return
        self._guard.metrics.client_timeouts.labels("head").inc()
        self.transport.write(_HEAD_TIMEOUT)
        self.force_close()

    def _body_expired(self) -> None:
        self._timer = None
        if self._body is None or self._body.is_eof() or self.transport is None:
            return
        if self._upgraded or self._payload_parser is not None:
            return
        self._guard.metrics.client_timeouts.labels("body").inc()
        self.force_close()


class GuardedServer(web.Server):
    """aiohttp's Server whose connections are GuardedHandlers."""

    def __init__(self, *args: Any, guard: Guard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = guard

    def __call__(self) -> RequestHandler:
        return GuardedHandler(self, guard=self._guard, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer (the TCP and the TLS sites share it)."""

    def __init__(self, app: web.Application, *, guard: Guard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._guard = guard

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return GuardedServer(
            plain.request_handler,
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=plain._loop,
            guard=self._guard,
            **plain._kwargs,
        )
