"""Report channels: one long-lived WebSocket per edge at CHANNEL_PATH, for instant failover.

Theory of operation. An edge sends its load reports over the channel (one text message
each, the same JSON as POST /api/v1/report; the ReportReply comes back as a text message).
The first accepted report binds the channel to its node. When the channel closes, the
reason decides what it means:

* the node's last report said "draining"   → drain: a graceful exit, the fleet already knows
* the kernel closed the socket (a crash)     → lost: the node leaves the answers at once
* no pong within heartbeat_s / 2 (a frozen
  process or a host that vanished)            → heartbeat_timeout: leaves the answers too
* a newer channel from the same node         → replaced; a rejected report → rejected;
  closed before any report → unbound; the router stopping → router_shutdown (no effect)

The fleet keeps a node that lost its channel out until a fresh report arrives on a new
channel and a probe succeeds after the close (Fleet.close_channel).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import WSMsgType, web

from cdn.report import MAX_REPORT_BYTES, LoadReport
from georouter.fleet import Fleet
from georouter.metrics import RouterMetrics

MAX_CHANNELS_PER_NODE = 2  # open channels per configured node (a replaced one lingers briefly)
CLOSE_REASONS = (
    "drain",
    "lost",
    "heartbeat_timeout",
    "replaced",
    "rejected",
    "unbound",
    "router_shutdown",
    "over_limit",  # refused before the upgrade: MAX_CHANNELS_PER_NODE x nodes already open
)
LOSSES = frozenset({"lost", "heartbeat_timeout"})  # closes that take the node out
MAX_MESSAGE_BYTES = 2 * MAX_REPORT_BYTES  # headroom: the report codec names the defect
WS_POLICY_VIOLATION = 1008  # RFC 6455 §7.4.1
WS_UNSUPPORTED_DATA = 1003

log = logging.getLogger("georouter.fleet")


@dataclass(frozen=True, slots=True)
class Receipt:
    """What the router made of one report: an HTTP-like status and the JSON to send back."""

    status: int
    body: bytes
    report: LoadReport | None = None  # decoded, of a known node


# (body, over a channel, the channel's Authorization header) → receipt
Accept = Callable[[bytes, bool, str | None], Receipt]
Refuse = Callable[[web.Request], web.Response | None]  # the refusal, or None: admitted
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True, eq=False)  # by identity: kept in a set
class _Channel:
    ws: web.WebSocketResponse
    authorization: str | None = None  # checked against every report's node
    node: str | None = None
    draining: bool = False
    rejected: bool = False


class Channels:
    """The open channels of one router, at most one current channel per node."""

    def __init__(
        self,
        fleet: Callable[[], Fleet],
        metrics: RouterMetrics,
        heartbeat_s: Callable[[], float],
        max_open: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fleet = fleet
        self._metrics = metrics
        self._heartbeat_s = heartbeat_s
        self._max_open = max_open
        self._clock = clock
        self._current: dict[str, _Channel] = {}
        self._open: set[_Channel] = set()
        self._closing = False
        self._tasks: set[asyncio.Task[bool]] = set()

    def handler(self, accept: Accept, refusal: Refuse) -> Handler:
        async def channel(request: web.Request) -> web.StreamResponse:
            refused = refusal(request)  # before the upgrade: a plain 401, like a report
            if refused is not None:
                return refused
            if len(self._open) >= self._max_open():
                self._metrics.channel_closes.labels("over_limit").inc()
                return web.json_response({"error": "too many report channels"}, status=503)
            ws = web.WebSocketResponse(
                heartbeat=self._heartbeat_s(), max_msg_size=MAX_MESSAGE_BYTES
            )
            await ws.prepare(request)
            await self._serve(_Channel(ws, request.headers.get("Authorization")), accept)
            return ws

        return channel

    async def close_all(self) -> None:
        """The router is stopping: close every channel with 1001 (no node leaves)."""
        self._closing = True
        await asyncio.gather(*(c.ws.close() for c in list(self._open)), return_exceptions=True)

    async def _serve(self, c: _Channel, accept: Accept) -> None:
        self._open.add(c)
        self._metrics.channels_open.inc()
        try:
            async for msg in c.ws:
                if msg.type == WSMsgType.ERROR:  # e.g. no pong in time: ws.exception() says
                    break
                if not await self._receive(c, msg.type, msg.data, accept):
                    break
        finally:
            self._open.discard(c)
            self._metrics.channels_open.dec()
            self._closed(c)

    async def _receive(self, c: _Channel, kind: WSMsgType, data: object, accept: Accept) -> bool:
        if kind != WSMsgType.TEXT or not isinstance(data, str):
            c.rejected = True
            await c.ws.close(code=WS_UNSUPPORTED_DATA, message=b"text reports only")
            return False
        receipt = accept(data.encode(), True, c.authorization)
        report = receipt.report
        if receipt.status != 200 or report is None or c.node not in (None, report.node):
            c.rejected = True
            if receipt.status != 200:
                await c.ws.send_str(receipt.body.decode())
            await c.ws.close(code=WS_POLICY_VIOLATION, message=b"report rejected")
            return False
        if c.node is None:
            self._bind(c, report.node)
        c.draining = report.status == "draining"
        await c.ws.send_str(receipt.body.decode())
        return True

    def _bind(self, c: _Channel, node: str) -> None:
        c.node = node
        old = self._current.get(node)
        self._current[node] = c
        if old is not None:  # its close will count as replaced
            task = asyncio.create_task(old.ws.close())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _closed(self, c: _Channel) -> None:
        reason = self._reason(c)
        self._metrics.channel_closes.labels(reason).inc()
        if c.node is not None and self._current.get(c.node) is c:
            del self._current[c.node]
        if reason in LOSSES and c.node is not None:
            self._fleet().close_channel(c.node, self._clock())
        log.info("event=channel_closed node=%s reason=%s", c.node or "-", reason)

    def _reason(self, c: _Channel) -> str:
        if self._closing:
            return "router_shutdown"
        if c.rejected:
            return "rejected"
        if c.node is None:
            return "unbound"
        if self._current.get(c.node) is not c:
            return "replaced"
        if c.draining:
            return "drain"
        if isinstance(c.ws.exception(), TimeoutError):
            return "heartbeat_timeout"
        return "lost"
