"""The demo origin's live parts: a chat room over WebSocket and a notifications stream (SSE).

- `GET /chat` (WebSocket, RFC 6455): every text message a member sends, `{"author", "text"}`
  as JSON, is broadcast to everyone in the room (the sender included), so two browsers on
  two edges talk through the CDN.
- `GET /echo` (WebSocket): every message comes back unchanged (tests, `websocat`).
- `GET /api/notifications` (text/event-stream): one `comment` event per comment posted, to
  every open stream; a comment line every few seconds keeps idle streams open.
- Every answer carries `Access-Control-Allow-Origin: *`: the feed page on `cdn.` reads the
  API on `api.` (a cross-origin fetch, the Fetch standard's CORS protocol); OPTIONS
  preflights are answered here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

MAX_CHAT_TEXT = 500  # characters
MAX_AUTHOR = 64  # characters
MAX_CHAT_MEMBERS = 1000  # beyond this a new member gets 503
MAX_SUBSCRIBERS = 1000  # open notification streams; beyond this 503
SUBSCRIBER_QUEUE = 64  # events buffered per slow stream; it misses the ones beyond
HEARTBEAT_S = 15.0  # an SSE comment line this often keeps proxies from idling it out
NO_STORE = "no-store"
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "600",
}


class Room:
    """The members of the chat room and the open notification streams."""

    def __init__(self) -> None:
        self.members: set[web.WebSocketResponse] = set()
        self.subscribers: set[asyncio.Queue[str]] = set()

    async def broadcast(self, text: str) -> None:
        for ws in list(self.members):
            if not ws.closed:
                await ws.send_str(text)

    def notify(self, event: str, payload: dict[str, Any]) -> None:
        """Queue an SSE event for every stream; a full queue drops it (a slow reader)."""
        frame = f"event: {event}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
        for queue in self.subscribers:
            if queue.qsize() < SUBSCRIBER_QUEUE:
                queue.put_nowait(frame)


ROOM = web.AppKey("room", Room)


def chat_message(raw: str) -> str | None:
    """The message to broadcast for a member's text frame, or None if it is not valid."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    text, author = body.get("text"), body.get("author", "anonymous")
    if not isinstance(text, str) or not 0 < len(text) <= MAX_CHAT_TEXT:
        return None
    if not isinstance(author, str) or not 0 < len(author) <= MAX_AUTHOR:
        return None
    return json.dumps({"author": author, "text": text}, separators=(",", ":"))


async def chat(request: web.Request) -> web.StreamResponse:
    room = request.app[ROOM]
    if len(room.members) >= MAX_CHAT_MEMBERS:
        raise web.HTTPServiceUnavailable(text="chat room full")
    ws = web.WebSocketResponse(max_msg_size=4 * MAX_CHAT_TEXT)
    await ws.prepare(request)
    room.members.add(ws)
    try:
        async for msg in ws:
            if msg.type == WSMsgType.TEXT and (out := chat_message(msg.data)) is not None:
                await room.broadcast(out)
    finally:
        room.members.discard(ws)
    return ws


async def echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def notifications(request: web.Request) -> web.StreamResponse:
    room = request.app[ROOM]
    if len(room.subscribers) >= MAX_SUBSCRIBERS:
        raise web.HTTPServiceUnavailable(text="too many streams")
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": NO_STORE, **CORS_HEADERS}
    )
    await response.prepare(request)
    queue: asyncio.Queue[str] = asyncio.Queue()
    room.subscribers.add(queue)
    try:
        await response.write(b"retry: 2000\n: connected\n\n")
        while True:
            try:
                frame = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except TimeoutError:
                frame = ": heartbeat\n\n"
            await response.write(frame.encode())
    except ConnectionResetError:
        pass  # the client went away
    finally:
        room.subscribers.discard(queue)
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights; add Access-Control-Allow-Origin to every other answer."""
    if request.method == "OPTIONS":
        return web.Response(status=204, headers={**CORS_HEADERS, "Cache-Control": NO_STORE})
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(CORS_HEADERS)
        raise
    if not response.prepared:
        response.headers.update(CORS_HEADERS)
    return response


def add_live_routes(app: web.Application) -> None:
    """Chat, echo and notifications on `app` (before its catch-all static route)."""
    app[ROOM] = Room()
    app.router.add_get("/chat", chat)
    app.router.add_get("/echo", echo)
    app.router.add_get("/api/notifications", notifications)
