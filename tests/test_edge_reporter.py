"""Load reports: cadence, sequence numbers, immediate reports, router outages."""

from __future__ import annotations

import logging
import time

import pytest

from cdnlab.loopback import free_port
from edge.load import LoadSnapshot
from edge.metrics import EdgeMetrics
from edge.reporter import Reporter
from tests.origin_app import FakeRouter, background, metric, poll

pytest_plugins = ("tests.edge_fixtures",)
SNAP = LoadSnapshot(status="up", inflight=3, rps=12.5, utilization=0.125, cache_hit_ratio=0.5)


def reporter(routers: tuple[str, ...], metrics: EdgeMetrics, interval_s: float = 1.0) -> Reporter:
    return Reporter("edge-test-1", routers, "t0ken", 100.0, lambda: SNAP, metrics, interval_s,
                    time.monotonic)  # fmt: skip


def sample(metrics: EdgeMetrics, router: str, result: str) -> float:
    return metric(metrics, "edge_reports_total", {"router": router, "result": result})


async def test_reports_every_interval_with_increasing_seq(router: FakeRouter) -> None:
    metrics = EdgeMetrics()
    arrivals: list[float] = []
    async with background(reporter((router.url,), metrics).run()):
        for n in (1, 2, 3):
            await poll(lambda n=n: len(router.reports) >= n, timeout_s=5)  # type: ignore[misc]
            arrivals.append(time.monotonic())
    assert [r.seq for r in router.reports[:3]] == [1, 2, 3]
    first = router.reports[0]
    assert (first.node, first.status, first.inflight, first.rps) == ("edge-test-1", "up", 3, 12.5)
    assert first.capacity_rps == 100.0 and first.cache_hit_ratio == 0.5
    # About one per second: never a burst.
    assert arrivals[2] - arrivals[0] >= 1.5
    assert sample(metrics, router.url, "ok") >= 3


async def test_wake_reports_at_once(router: FakeRouter) -> None:
    rep = reporter((router.url,), EdgeMetrics(), interval_s=60.0)
    async with background(rep.run()):
        await poll(lambda: len(router.reports) == 1)
        rep.wake()
        await poll(lambda: len(router.reports) == 2, timeout_s=2)
    assert router.reports[1].seq == 2


async def test_router_down_logs_once_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    dead = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    metrics = EdgeMetrics()
    caplog.set_level(logging.INFO, logger="edge.reporter")
    async with background(reporter((dead,), metrics, interval_s=0.05).run()):
        await poll(lambda: sample(metrics, dead, "failed") >= 4, timeout_s=5)
    failures = [r for r in caplog.records if "event=report_failed" in r.getMessage()]
    assert len(failures) == 1 and dead in failures[0].getMessage()


async def test_refusing_router_recovers_and_other_routers_unaffected(
    router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge.reporter")
    router.refuse = True
    metrics = EdgeMetrics()
    async with (
        FakeRouter() as other,
        background(reporter((router.url, other.url), metrics, interval_s=0.05).run()),
    ):
        await poll(lambda: sample(metrics, router.url, "failed") >= 2)
        assert len(other.reports) >= 2  # the healthy router still gets every round
        router.refuse = False
        await poll(lambda: len(router.reports) >= 1)
    messages = [r.getMessage() for r in caplog.records]
    assert sum("event=report_failed" in m for m in messages) == 1
    assert sum("event=report_recovered" in m for m in messages) == 1
    seqs = [r.seq for r in other.reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_wrong_token_counts_as_failure(router: FakeRouter) -> None:
    router.token = "other"
    metrics = EdgeMetrics()
    async with background(reporter((router.url,), metrics, interval_s=0.05).run()):
        await poll(lambda: router.unauthorized >= 1 and sample(metrics, router.url, "failed") >= 1)
    assert router.reports == []
