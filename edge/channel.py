"""One router's report channel: a long-lived WebSocket that carries this edge's reports.

While it is open the router knows the edge process is alive; the moment the process dies
the kernel closes the socket and the router takes the node out of its answers (instead of
waiting for probes to fail). A reader task answers the router's pings and hands every
reply (a ReportReply, purges included) to `on_reply`. When the channel cannot be opened
(an older router without CHANNEL_PATH, a refusal, a network fault) or it closes, reports
go by POST as before. A router that cannot be reached (not started yet) is tried again
after CHANNEL_RETRY_S, like the POST; a refused handshake or a lost channel backs off
exponentially (capped), so a flapping link or router costs at most one handshake per
back-off period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp

from cdn.report import CHANNEL_PATH, MAX_REPLY_BYTES

CHANNEL_OPEN_TIMEOUT_S = 0.5  # the handshake; the open channel itself has no deadline
CHANNEL_CLOSE_TIMEOUT_S = 0.5  # waiting for the router's Close frame on our own close
CHANNEL_RETRY_S = 1.0  # first back-off after a failed open or a lost channel
CHANNEL_MAX_RETRY_S = 30.0

log = logging.getLogger("edge.reporter")


class ReportChannel:
    """Send reports over a channel to one router; `send` says False when POST must do."""

    def __init__(
        self,
        url: str,
        token: str,
        on_reply: Callable[[bytes], None],
        clock: Callable[[], float],
    ) -> None:
        self.url = url
        self._headers = {"Authorization": f"Bearer {token}"}
        self._on_reply = on_reply
        self._clock = clock
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self.failures = 0  # failed opens and losses since the last accepted reply
        self.retry_at = 0.0

    @property
    def is_open(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def send(self, session: aiohttp.ClientSession, body: bytes) -> bool:
        """Send one report over the channel, opening it first if it is due."""
        ws = self._ws if self.is_open else await self._open_if_due(session)
        if ws is None:
            return False
        try:
            await ws.send_str(body.decode())
        except (aiohttp.ClientError, ConnectionError) as exc:
            self._lost(type(exc).__name__)
            return False
        return True

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(aiohttp.ClientError, ConnectionError, TimeoutError):
                await self._ws.close()
        self._ws = self._reader = None

    async def _open_if_due(
        self, session: aiohttp.ClientSession
    ) -> aiohttp.ClientWebSocketResponse | None:
        if self._clock() < self.retry_at:
            return None
        try:
            ws = await session.ws_connect(
                self.url + CHANNEL_PATH,
                headers=self._headers,
                timeout=aiohttp.ClientWSTimeout(ws_close=CHANNEL_CLOSE_TIMEOUT_S),
                max_msg_size=MAX_REPLY_BYTES,
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as exc:  # refused: an older router, a 401
            self._failed("channel_open_failed", f"status {exc.status}")
            return None
        except (aiohttp.ClientError, TimeoutError) as exc:  # not reachable (yet): try again
            self._failed("channel_open_failed", type(exc).__name__, grow=False)  # next second
            return None
        self._ws = ws
        self._reader = asyncio.create_task(self._read(ws))
        log.info("event=channel_open router=%s", self.url)
        return ws

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.failures = 0  # the router accepted us: a later loss starts afresh
                self._on_reply(msg.data.encode())
        if self._ws is ws:
            self._lost(f"close {ws.close_code}")

    def _lost(self, why: str) -> None:
        self._ws = None
        self._failed("channel_lost", why)

    def _failed(self, event: str, why: str, *, grow: bool = True) -> None:
        if not self.failures:
            log.warning("event=%s router=%s error=%r", event, self.url, why)
        self.failures = self.failures + 1 if grow or not self.failures else self.failures
        backoff = min(CHANNEL_MAX_RETRY_S, CHANNEL_RETRY_S * 2 ** (self.failures - 1))
        self.retry_at = self._clock() + backoff
