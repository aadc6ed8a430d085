"""The edge's report channel (edge/channel.py): reports over one WebSocket per router,
replies applied from it, POST as the fallback, and rate-limited reopening."""

from __future__ import annotations

import time
from collections.abc import Iterable

from aiohttp import WSMsgType, web

from cdn.purge import Purge
from cdn.report import CHANNEL_PATH, LoadReport, ReportReply
from edge.channel import CHANNEL_RETRY_S
from edge.metrics import EdgeMetrics
from edge.reporter import Reporter
from tests.origin_app import FakeRouter, background, poll
from tests.test_edge_reporter import SNAP


class ChannelRouter(FakeRouter):
    """A FakeRouter that also offers CHANNEL_PATH; `slam` closes each channel at once."""

    def __init__(self, slam: bool = False) -> None:
        super().__init__()
        self.slam = slam
        self.handshakes: list[float] = []
        self.channel_reports: list[LoadReport] = []

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get(CHANNEL_PATH, self._channel)
        return app

    async def _channel(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.Response(status=401)
        self.handshakes.append(time.monotonic())
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if self.slam:
            await ws.close()
            return ws
        async for msg in ws:
            assert msg.type == WSMsgType.TEXT
            report = LoadReport.from_json(msg.data.encode())
            self.channel_reports.append(report)
            self.owed = [p for p in self.owed if p.id not in report.acks]
            await ws.send_str(ReportReply("accepted", tuple(self.owed)).to_json().decode())
        return ws


def reporter(
    url: str, interval_s: float, applied: list[Purge] | None = None, *, eager: bool = False
) -> Reporter:
    """A reporter that, like the edge, asks for an early report only for new purges
    (``eager``: for every reply that carries any, which wakes it without pause)."""

    def on_purges(purges: Iterable[Purge]) -> bool:
        new = [p for p in purges if applied is None or p not in applied]
        if applied is not None:
            applied.extend(new)
        return eager or bool(new)

    return Reporter("edge-test-1", (url,), "t0ken", 100.0, lambda: SNAP, EdgeMetrics(),
                    interval_s, time.monotonic, on_purges=on_purges)  # fmt: skip


async def test_reports_ride_the_channel_and_replies_come_back_on_it() -> None:
    applied: list[Purge] = []
    purge = Purge.from_dict({"id": "p-1", "url": "http://cdn.example.com/a"}, need_id=True)
    async with ChannelRouter() as router, background(reporter(router.url, 0.05, applied).run()):
        router.owed = [purge]
        await poll(lambda: len(router.channel_reports) >= 5)
        await poll(lambda: purge in applied)
    assert router.reports == []  # nothing by POST while the channel is open
    assert len(router.handshakes) == 1  # one long-lived connection
    seqs = [r.seq for r in router.channel_reports]
    assert seqs == sorted(seqs) and seqs[0] == 1


async def test_a_reporter_woken_without_pause_still_stops_when_cancelled() -> None:
    # The router re-sends an unacknowledged purge and every reply wakes the reporter: the
    # cancel on the way out must not be lost (asyncio.wait_for on 3.11 could drop it).
    purge = Purge.from_dict({"id": "p-2", "url": "http://cdn.example.com/b"}, need_id=True)
    async with ChannelRouter() as router:
        router.owed = [purge]
        for _ in range(20):
            async with background(reporter(router.url, 60.0, eager=True).run()):
                await poll(lambda: len(router.channel_reports) >= 3)
            router.channel_reports.clear()


async def test_a_router_that_drops_channels_gets_posts_and_rate_limited_reopens() -> None:
    async with (
        ChannelRouter(slam=True) as router,
        background(reporter(router.url, 0.02).run()),
    ):
        await poll(lambda: len(router.reports) >= 40, timeout_s=10)  # POST carries on
        window = time.monotonic() - router.handshakes[0]
    # Back-off 1 s, 2 s, 4 s ...: at most 1 + log2(window) reopen attempts, not one per report.
    assert window >= 0.7
    assert len(router.handshakes) <= 2 + window / CHANNEL_RETRY_S
    assert len(router.handshakes) < len(router.reports) / 10


async def test_router_without_the_channel_gets_reports_by_post() -> None:
    async with FakeRouter() as router, background(reporter(router.url, 0.02).run()):
        await poll(lambda: len(router.reports) >= 5)
