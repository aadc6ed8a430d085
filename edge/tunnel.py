"""WebSocket tunnels (RFC 6455): an upgrade relayed to the origin, then messages pumped both ways.

Theory of operation, per upgrade request (the rules are pure, in edge/websocket.py):

    refused        -> 403 (the site has WebSockets off) or 503 (draining, or max_tunnels open)
    bad handshake  -> 400, or 426 naming version 13 (RFC 6455 §4.2.2, §4.4)
    origin         -> the same upgrade (the client's subprotocol offers, cookies, auth; no
                      Sec-WebSocket-Key of its own) under the origin head deadline
        not 101    -> its answer relayed as HTTP (status, fields, a body of at most 64 KiB)
        failed     -> 502/504, as for any origin fetch
        101        -> 101 to the client with the subprotocol the origin chose, then pump

The pump relays message by message, each send awaited: a reader that does not read stops
the pump that writes to it, which stops reading from the other side, whose TCP window
closes; the edge holds at most one message per direction plus socket buffers (aiohttp
pauses reading past 128 KiB queued). Messages larger than max_message_bytes end the tunnel
with 1009. Neither leg answers pings by itself (autoping off), so the peers' pings and
pongs pass through; text stays bytes (validated by the endpoints, not re-encoded here).

A tunnel ends when either side closes (its code and reason go to the other, mapped by
`wire_code` where the code may not be sent), when a leg is silent for idle_timeout_s (the
edge pings a leg quiet for ping_interval_s; the pong counts as hearing from it), or when
the edge stops (`close_all`: 1001, so clients reconnect, through DNS, to another edge).
Tunnels never touch the cache or the origin body-rate floor: they have their own session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiohttp
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, WSMsgType, web
from aiohttp.http_websocket import WebSocketError
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from edge.cache_status import cache_status
from edge.config import Limits, WebSocketSettings
from edge.errors import OriginError
from edge.metrics import EdgeMetrics
from edge.relay import client_headers, origin_headers, send
from edge.rules import strip_hop_by_hop
from edge.websocket import (
    ABNORMAL,
    GOING_AWAY,
    NO_STATUS,
    REFUSAL_STATUS,
    Ending,
    close_label,
    handshake_problem,
    keepalive,
    offered_protocols,
    refusal,
    soonest,
    wire_code,
    wire_reason,
)

CLOSE_TIMEOUT_S = 5.0  # for the peer's Close reply; then the connection is dropped
MAX_REFUSAL_BODY_BYTES = 64 * 1024  # an origin's non-101 answer, relayed whole
KEEPALIVE_PAYLOAD = b"edge-keepalive"  # our pings; their pongs are not passed on
# Handshake fields each leg makes for itself (RFC 6455 §4.1); the rest go to the origin.
_HANDSHAKE_FIELDS = ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
                     "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept")  # fmt: skip
_EDGE_REASONS = {1009: "message too big"}
Side = Literal["client", "origin"]

log = logging.getLogger("edge.tunnel")


class OriginRefused(Exception):
    """The origin answered the upgrade with something other than 101."""

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], body: bytes):
        super().__init__(status)
        self.status, self.reason, self.headers, self.body = status, reason, headers, body


async def _keep_refusal(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
    """Client middleware: a non-101 answer is read (bounded) and raised, so that it can be
    relayed; aiohttp's ws_connect would drop its body."""
    response = await handler(request)
    if response.status == 101:
        return response
    body = bytearray()
    try:
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > MAX_REFUSAL_BODY_BYTES:
                raise OriginError("invalid", "refusal of the upgrade over 64 KiB")
    finally:
        response.release()
    raise OriginRefused(response.status, response.reason or "", response.headers, bytes(body))


@dataclass(slots=True)
class _Leg:
    side: Side
    ws: Any  # web.WebSocketResponse or aiohttp.ClientWebSocketResponse (same surface)
    heard: float
    pinged: float = 0.0


class Tunnels:
    """Every tunnel of one edge: admission, the open count, drain. start() before use."""

    def __init__(
        self,
        name: str,
        settings: WebSocketSettings,
        limits: Limits,
        metrics: EdgeMetrics,
    ) -> None:
        self.name = name
        self.settings = settings
        self.open = 0  # tunnels up or being set up: what max_tunnels caps
        self._limits = limits
        self._metrics = metrics
        self._tunnels: set[_Tunnel] = set()
        self._draining = False
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._limits.origin_connect_timeout_s,
            sock_read=self._limits.origin_read_timeout_s,  # for the 101; none once open
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=aiohttp.TCPConnector(limit=0),  # max_tunnels is the cap
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent",),
            middlewares=(_keep_refusal,),
        )

    def drain(self) -> None:
        """Refuse new upgrades from now on (503); open tunnels carry on."""
        self._draining = True

    async def close_all(self, reason: str = "edge going away") -> None:
        """Refuse new upgrades and close every tunnel with 1001, both legs, then return."""
        self._draining = True
        tunnels = list(self._tunnels)
        if tunnels:
            log.info("event=websocket_close_all tunnels=%d code=%d", len(tunnels), GOING_AWAY)
        for tunnel in tunnels:
            tunnel.end(Ending("edge", GOING_AWAY, reason))
        await asyncio.gather(*(t.finished.wait() for t in tunnels))

    async def close(self) -> None:
        await self.close_all()
        if self._session is not None:
            await self._session.close()

    async def handle(
        self, request: web.Request, origin: str, *, enabled: bool = True, ssl: Any = True
    ) -> web.StreamResponse:
        """Answer one upgrade request by tunnelling it to ``origin`` (a base URL)."""
        why = refusal(
            enabled=enabled,
            draining=self._draining,
            open_tunnels=self.open,
            max_tunnels=self.settings.max_tunnels,
        )
        if why is not None:
            return await self._refuse(request, why, REFUSAL_STATUS[why], f"websocket-{why}")
        problem = handshake_problem((request.version.major, request.version.minor), request.headers)
        if problem is not None:
            extra = {"Sec-WebSocket-Version": "13"} if problem.status == 426 else {}
            return await self._refuse(request, "handshake", problem.status, problem.detail, extra)
        self._opened(+1)
        try:
            return await self._open(request, origin, ssl)
        finally:
            self._opened(-1)

    def _opened(self, delta: int) -> None:
        self.open += delta
        self._metrics.tunnels.inc(delta)

    async def _open(self, request: web.Request, origin: str, ssl: Any) -> web.StreamResponse:
        try:
            upstream = await self._connect(request, origin, ssl)
        except OriginRefused as refused:
            return await self._relay_refusal(request, refused)
        except OriginError as exc:
            log.info("event=websocket_origin_error kind=%s error=%r", exc.kind, exc.message)
            detail = f"origin-{exc.kind}"
            return await self._refuse(request, "origin_error", exc.status, detail)
        try:
            client = web.WebSocketResponse(
                timeout=CLOSE_TIMEOUT_S,
                autoclose=False,
                autoping=False,
                protocols=(upstream.protocol,) if upstream.protocol else (),
                compress=False,
                max_msg_size=self.settings.max_message_bytes + 1,  # aiohttp's limit excludes it
                decode_text=False,
            )
            client.headers.extend(_from_101(upstream))
            client.headers.add("Via", self._via(request))
            await client.prepare(request)
        except BaseException:
            await upstream.close(code=GOING_AWAY)
            raise
        self._metrics.upgrades.labels("accepted").inc()
        return await self._run(client, upstream)

    async def _connect(
        self, request: web.Request, origin: str, ssl: Any
    ) -> aiohttp.ClientWebSocketResponse[Literal[False]]:
        assert self._session is not None, "Tunnels.start() not called"
        headers = origin_headers(request, self.name, fill=False)
        for field in _HANDSHAKE_FIELDS:
            headers.popall(field, None)
        url = URL(origin.rstrip("/") + request.raw_path, encoded=True)
        head_s = self._limits.origin_head_timeout_s
        try:
            async with asyncio.timeout(head_s):
                return await self._session.ws_connect(
                    url,
                    protocols=offered_protocols(request.headers),
                    headers=headers,
                    autoclose=False,
                    autoping=False,
                    compress=0,
                    max_msg_size=self.settings.max_message_bytes + 1,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_TIMEOUT_S),
                    decode_text=False,
                    ssl=ssl,
                )
        except (OriginRefused, OriginError):
            raise
        except TimeoutError as exc:
            raise OriginError("timeout", f"no 101 within {head_s:g} s") from exc
        except aiohttp.ClientConnectorError as exc:
            raise OriginError("connect", str(exc)) from exc
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise OriginError("invalid", str(exc) or type(exc).__name__) from exc

    async def _run(self, client: web.WebSocketResponse[bool], upstream: Any) -> web.StreamResponse:
        now = asyncio.get_running_loop().time()
        tunnel = _Tunnel(_Leg("client", client, now), _Leg("origin", upstream, now), self)
        self._tunnels.add(tunnel)
        try:
            if self._draining:  # the edge began to stop while this one was being set up
                tunnel.end(Ending("edge", GOING_AWAY, "edge going away"))
            ending = await tunnel.run()
        finally:
            self._tunnels.discard(tunnel)
            tunnel.finished.set()
        self._metrics.ws_closes.labels(close_label(ending.code), ending.by).inc()
        log.debug("event=websocket_closed by=%s code=%d", ending.by, ending.code)
        return client

    async def _relay_refusal(
        self, request: web.Request, refused: OriginRefused
    ) -> web.StreamResponse:
        self._metrics.upgrades.labels("origin_status").inc()
        headers = strip_hop_by_hop(refused.headers)
        for field in ("Content-Length", *_HANDSHAKE_FIELDS):
            headers.popall(field, None)
        member = cache_status(self.name, "fwd", fwd="bypass", fwd_status=refused.status)
        out = client_headers(headers, self._via(request), member)
        return await send(request, refused.status, out, refused.body, refused.reason)

    async def _refuse(
        self,
        request: web.Request,
        result: str,
        status: int,
        detail: str,
        extra: dict[str, str] | None = None,
    ) -> web.StreamResponse:
        self._metrics.upgrades.labels(result).inc()
        plain = CIMultiDict({"Content-Type": "text/plain", "Cache-Control": "no-store"})
        if status == 503:
            plain["Retry-After"] = "1"  # another edge, through DNS, or this one shortly
        plain.update(extra or {})
        member = cache_status(self.name, "fwd", fwd="bypass", detail=detail)
        headers = client_headers(plain, self._via(request), member)
        return await send(request, status, headers, f"{status} {detail}\n".encode())

    def _via(self, request: web.Request) -> str:
        return f"{request.version.major}.{request.version.minor} {self.name}"


def _from_101(upstream: Any) -> CIMultiDict[str]:
    """End-to-end fields of the origin's 101 (Set-Cookie, say) for the client's 101."""
    # aiohttp keeps the handshake response on the WebSocket; it has no public accessor.
    fields = strip_hop_by_hop(upstream._response.headers)
    for field in ("Content-Length", "Date", "Server", *_HANDSHAKE_FIELDS):
        fields.popall(field, None)
    return fields


class _Tunnel:
    """One open tunnel: two pumps and a keeper; the first to end it decides how."""

    def __init__(self, client: _Leg, origin: _Leg, owner: Tunnels) -> None:
        self.client, self.origin = client, origin
        self.finished = asyncio.Event()
        self._settings = owner.settings
        self._metrics = owner._metrics
        self._loop = asyncio.get_running_loop()
        self._ended: asyncio.Future[Ending] = self._loop.create_future()
        self._pings: set[asyncio.Task[None]] = set()

    def end(self, ending: Ending) -> None:
        """End the tunnel from outside (drain)."""
        if not self._ended.done():
            self._ended.set_result(ending)

    async def run(self) -> Ending:
        tasks = [
            asyncio.create_task(self._pump(self.client, self.origin, "client_to_origin")),
            asyncio.create_task(self._pump(self.origin, self.client, "origin_to_client")),
            asyncio.create_task(self._keep()),
        ]
        try:
            await asyncio.wait([*tasks, self._ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*tasks, *self._pings):
                task.cancel()
            await asyncio.gather(*tasks, *self._pings, return_exceptions=True)
        ending = _first_ending(tasks) or (self._ended.result() if self._ended.done() else None)
        if ending is None:  # a pump failed in a way it does not expect: say so, then close
            ending = Ending("edge", ABNORMAL)
        await self._close(ending)
        return ending

    async def _pump(self, src: _Leg, dst: _Leg, direction: str) -> Ending:
        """Relay src's messages to dst until src closes; each send is awaited (back-pressure)."""
        messages = self._metrics.ws_messages.labels(direction)
        payload_bytes = self._metrics.ws_bytes.labels(direction)
        clock, receive, out = self._loop.time, src.ws.receive, dst.ws
        while True:
            msg = await receive()
            src.heard = clock()
            kind = msg.type
            try:
                if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
                    await out.send_frame(msg.data, kind)
                    messages.inc()
                    payload_bytes.inc(len(msg.data))
                elif kind is WSMsgType.PING:
                    await out.ping(msg.data)
                elif kind is WSMsgType.PONG:
                    if msg.data != KEEPALIVE_PAYLOAD:
                        await out.pong(msg.data)
                else:
                    return _ending(src.side, msg)
            except (ConnectionError, aiohttp.ClientError, RuntimeError):
                return Ending(dst.side, ABNORMAL)  # dst went away under the send

    async def _keep(self) -> Ending:
        """Ping quiet legs; end the tunnel when a leg stays silent past idle_timeout_s."""
        s = self._settings
        legs = (self.client, self.origin)
        while True:
            now = self._loop.time()
            checks = [
                keepalive(
                    now,
                    heard=leg.heard,
                    pinged=leg.pinged,
                    idle_timeout_s=s.idle_timeout_s,
                    ping_interval_s=s.ping_interval_s,
                )
                for leg in legs
            ]
            if any(check.idle for check in checks):
                return Ending("edge", GOING_AWAY, "idle timeout")
            for leg, check in zip(legs, checks, strict=True):
                if check.ping:
                    leg.pinged = now
                    self._ping(leg)
            await asyncio.sleep(soonest(checks) - now)

    def _ping(self, leg: _Leg) -> None:
        # A task: a leg whose reader is slow must not hold up the keeper on its way out.
        task = asyncio.create_task(leg.ws.ping(KEEPALIVE_PAYLOAD))
        self._metrics.ws_pings.inc()
        self._pings.add(task)
        task.add_done_callback(_forget(self._pings))

    async def _close(self, ending: Ending) -> None:
        """Close each leg still open with the code heard (mapped for the wire) and reason."""
        code, reason = wire_code(ending.code), wire_reason(ending.reason)
        await asyncio.gather(*(_close_leg(leg, code, reason) for leg in (self.client, self.origin)))


def _first_ending(tasks: list[asyncio.Task[Ending]]) -> Ending | None:
    for task in tasks:
        if task.done() and not task.cancelled():
            if task.exception() is None:
                return task.result()
            log.warning("event=websocket_pump_failed error=%r", task.exception())
    return None


def _ending(side: Side, msg: aiohttp.WSMessage | Any) -> Ending:
    """How a pump's source ended: a Close frame, a limit the edge enforced, or a drop."""
    if msg.type is WSMsgType.CLOSE:
        return Ending(side, int(msg.data) or NO_STATUS, msg.extra or "")
    if msg.type is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
        # aiohttp has closed this leg with the code already (1009 too big, 1002 protocol).
        code = int(msg.data.code)
        return Ending("edge", code, _EDGE_REASONS.get(code, "protocol error"))
    return Ending(side, ABNORMAL)  # the connection dropped without a Close frame


async def _close_leg(leg: _Leg, code: int, reason: bytes) -> None:
    if leg.ws.closed:
        return
    with contextlib.suppress(Exception):
        await leg.ws.close(code=code, message=reason)


def _forget(tasks: set[asyncio.Task[None]]) -> Callable[[asyncio.Task[None]], None]:
    def done(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a failed ping is the pump's business

    return done
