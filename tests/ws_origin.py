"""A real aiohttp WebSocket origin on loopback for the tunnel tests, and what it saw.

/echo echoes every data message and obeys a few text commands; its own pings and the
pongs it gets are reported back as text, so a test sees both directions of the control
frames. /flood sends binary messages as fast as the tunnel takes them. /refuse answers
the upgrade with 403 and a body.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from tests.origin_app import _ServedApp

FLOOD_MESSAGE_BYTES = 64 * 1024


@dataclass
class Seen:
    handshakes: int = 0
    headers: list[dict[str, str]] = field(default_factory=list)
    offered: list[str] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)
    pings: list[bytes] = field(default_factory=list)
    flood_sent: int = 0


class WebSocketOrigin(_ServedApp):
    """The origin; ``seen`` records handshakes, close codes and control frames."""

    def __init__(self, flood_bytes: int = 512 * 1024 * 1024) -> None:
        super().__init__()
        self.seen = Seen()
        self.flood_bytes = flood_bytes

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/echo", self._echo)
        app.router.add_get("/flood", self._flood)
        app.router.add_get("/refuse", self._refuse)
        return app

    def _accept(self, request: web.Request) -> web.WebSocketResponse:
        self.seen.handshakes += 1
        self.seen.headers.append(dict(request.headers))
        self.seen.offered.append(request.headers.get("Sec-WebSocket-Protocol", ""))
        # No limit of its own (the edge's is under test), no automatic pongs.
        return web.WebSocketResponse(protocols=("chat.v1",), autoping=False, max_msg_size=0)

    async def _echo(self, request: web.Request) -> web.WebSocketResponse:
        ws = self._accept(request)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                self.seen.pings.append(msg.data)
                await ws.pong(msg.data)
            elif msg.type is WSMsgType.PONG:
                await ws.send_str(f"pong:{msg.data.decode()}")
            elif msg.type is WSMsgType.TEXT:
                await self._command(ws, request, msg.data)
        self.seen.close_codes.append(ws.close_code)
        return ws

    async def _command(self, ws: web.WebSocketResponse, request: web.Request, text: str) -> None:
        verb, _, arg = text.partition(":")
        if verb == "close":
            code, _, reason = arg.partition(":")
            await ws.close(code=int(code), message=reason.encode())
        elif verb == "ping":
            await ws.ping(arg.encode())
        elif verb == "abort":
            assert request.transport is not None
            request.transport.abort()  # no Close frame: the client must see 1011, not 1006
        else:
            await ws.send_str(text)

    async def _flood(self, request: web.Request) -> web.WebSocketResponse:
        ws = self._accept(request)
        await ws.prepare(request)
        chunk = b"\x00" * FLOOD_MESSAGE_BYTES
        while self.seen.flood_sent < self.flood_bytes and not ws.closed:
            await ws.send_bytes(chunk)  # awaited: the origin slows when the edge does
            self.seen.flood_sent += len(chunk)
        return ws

    async def _refuse(self, request: web.Request) -> web.Response:
        self.seen.handshakes += 1
        return web.Response(status=403, text="no chat for you", headers={"X-Why": "banned"})
