"""Pushes this edge's load report to every router: every REPORT_INTERVAL_S, and at once
when woken (a status change such as draining).

Each round builds one `cdn.report.LoadReport` with the next sequence number (1 for
the first report of the process, so a router can tell a restart) and posts it to every
router whose back-off has expired. A router that is down or refuses costs one log line
per outage, a capped exponential back-off, and an `edge_reports{result="failed"}` count;
the edge keeps serving regardless. Reports go over each router's report channel
(edge.channel: one long-lived WebSocket whose close tells the router at once that this
process is gone) and by POST while that channel cannot be opened. A router's reply may
carry purges the edge missed: they go to `on_purges` before anything else happens, their
ids ride as acks on the next report, and that report goes out at once when any of them
was new.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from cdn.errors import ReportError
from cdn.purge import Purge
from cdn.report import REPORT_PATH, LoadReport, ReportReply
from edge.channel import ReportChannel
from edge.load import LoadSnapshot
from edge.metrics import EdgeMetrics

REPORT_TIMEOUT_S = 0.5
MAX_BACKOFF_S = 10.0

log = logging.getLogger("edge.reporter")


@dataclass(slots=True)
class _RouterState:
    url: str
    channel: ReportChannel | None = None
    failures: int = 0
    retry_at: float = 0.0


class Reporter:
    """Sends load reports; run() until cancelled, wake() for an immediate round."""

    def __init__(
        self,
        name: str,
        routers: tuple[str, ...],
        token: str,
        capacity_rps: float,
        snapshot: Callable[[], LoadSnapshot],
        metrics: EdgeMetrics,
        interval_s: float,
        clock: Callable[[], float],
        on_purges: Callable[[Iterable[Purge]], bool] | None = None,
        take_acks: Callable[[], tuple[str, ...]] | None = None,
        on_reply: Callable[[], None] | None = None,
        annotate: Callable[[LoadReport], LoadReport] | None = None,
    ) -> None:
        self._annotate = annotate  # adds the hot set and pre-warm progress (edge/prewarmer.py)
        self.name = name
        self._on_purges = on_purges
        self._on_reply = on_reply  # after a reply's purges are applied (the disk level waits)
        self._take_acks = take_acks
        self.token = token
        self.capacity_rps = capacity_rps
        self.interval_s = interval_s
        self._snapshot = snapshot
        self._metrics = metrics
        self._clock = clock
        self._routers = [_RouterState(url) for url in routers]
        for router in self._routers:
            router.channel = ReportChannel(
                url=router.url, token=token, on_reply=self._replies_from(router), clock=clock
            )
        self._wake = asyncio.Event()
        self._seq = 0

    def wake(self) -> None:
        """Report now (to every router, back-off or not) instead of at the next tick."""
        self._wake.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=REPORT_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                while True:
                    forced = self._wake.is_set()
                    self._wake.clear()
                    await self.report_once(session, forced=forced)
                    # asyncio.timeout, not wait_for: on 3.11 wait_for loses a cancel that
                    # arrives as the event is set, and the task would never stop.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.interval_s):
                            await self._wake.wait()
            finally:
                channels = (r.channel for r in self._routers if r.channel is not None)
                await asyncio.gather(*(c.close() for c in channels))

    async def report_once(self, session: aiohttp.ClientSession, *, forced: bool) -> None:
        """Post one report to every router that is due (all of them when forced)."""
        now = self._clock()
        due = [r for r in self._routers if forced or r.retry_at <= now]
        if not due:
            return
        body = self._next_report().to_json()
        await asyncio.gather(*(self._post(session, router, body) for router in due))

    def _next_report(self) -> LoadReport:
        self._seq += 1
        snap = self._snapshot()
        report = LoadReport(
            node=self.name,
            seq=self._seq,
            status=snap.status,
            inflight=max(0, snap.inflight),
            rps=snap.rps,
            capacity_rps=self.capacity_rps,
            utilization=snap.utilization,
            cache_hit_ratio=snap.cache_hit_ratio,
            acks=self._take_acks() if self._take_acks is not None else (),
            tunnels=snap.tunnels,
        )
        return report if self._annotate is None else self._annotate(report)

    async def _post(
        self, session: aiohttp.ClientSession, router: _RouterState, body: bytes
    ) -> None:
        if router.channel is not None and await router.channel.send(session, body):
            self._succeeded(router)  # the reply comes back on the channel
            return
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        try:
            async with session.post(router.url + REPORT_PATH, data=body, headers=headers) as resp:
                reply = await resp.read()
                error = None if resp.status < 300 else f"status {resp.status}"
            if error is None:
                self._apply_reply(router, reply)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = type(exc).__name__
        if error is None:
            self._succeeded(router)
        else:
            self._failed(router, error)

    def _replies_from(self, router: _RouterState) -> Callable[[bytes], None]:
        return lambda body: self._apply_reply(router, body)

    def _apply_reply(self, router: _RouterState, body: bytes) -> None:
        if self._on_purges is None:
            return
        try:
            reply = ReportReply.from_json(body)
        except ReportError as exc:
            log.warning("event=report_reply_rejected router=%s error=%r", router.url, str(exc))
            return
        if reply.purges and self._on_purges(reply.purges):
            self.wake()  # acknowledge at once: every router stops re-sending them
        if self._on_reply is not None:
            self._on_reply()

    def _succeeded(self, router: _RouterState) -> None:
        self._metrics.reports.labels(router.url, "ok").inc()
        if router.failures:
            log.info("event=report_recovered router=%s failures=%d", router.url, router.failures)
        router.failures = 0
        router.retry_at = 0.0

    def _failed(self, router: _RouterState, error: str) -> None:
        self._metrics.reports.labels(router.url, "failed").inc()
        if not router.failures:
            log.warning("event=report_failed router=%s error=%r", router.url, error)
        router.failures += 1
        backoff = min(MAX_BACKOFF_S, self.interval_s * 2 ** (router.failures - 1))
        router.retry_at = self._clock() + backoff
