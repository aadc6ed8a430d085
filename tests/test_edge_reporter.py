"""Load reports: cadence, sequence numbers, immediate reports, router outages."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator

import pytest

from edge.load import LoadSnapshot
from edge.metrics import EdgeMetrics
from edge.reporter import Reporter
from tests.origin_app import FakeRouter, poll

SNAP = LoadSnapshot(status="up", inflight=3, rps=12.5, utilization=0.125, cache_hit_ratio=0.5)


@pytest.fixture
async def router() -> AsyncIterator[FakeRouter]:
    fake = FakeRouter()
    await fake.start()
    yield fake
    await fake.stop()


def reporter(routers: tuple[str, ...], metrics: EdgeMetrics, interval_s: float = 1.0) -> Reporter:
    return Reporter("edge-test-1", routers, "t0ken", 100.0, lambda: SNAP, metrics, interval_s,
                    time.monotonic)  # fmt: skip


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def sample(metrics: EdgeMetrics, router: str, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "edge_reports_total", {"router": router, "result": result}
    )
    return value or 0.0


async def test_reports_every_interval_with_increasing_seq(router: FakeRouter) -> None:
    metrics = EdgeMetrics()
    task = asyncio.create_task(reporter((router.url,), metrics).run())
    arrivals: list[float] = []
    try:
        for n in (1, 2, 3):
            await poll(lambda n=n: len(router.reports) >= n, timeout_s=5)  # type: ignore[misc]
            arrivals.append(time.monotonic())
    finally:
        task.cancel()
    assert [r.seq for r in router.reports[:3]] == [1, 2, 3]
    first = router.reports[0]
    assert (first.node, first.status, first.inflight, first.rps) == ("edge-test-1", "up", 3, 12.5)
    assert first.capacity_rps == 100.0 and first.cache_hit_ratio == 0.5
    # About one per second: never a burst.
    assert arrivals[2] - arrivals[0] >= 1.5
    assert sample(metrics, router.url, "ok") >= 3


async def test_wake_reports_at_once(router: FakeRouter) -> None:
    rep = reporter((router.url,), EdgeMetrics(), interval_s=60.0)
    task = asyncio.create_task(rep.run())
    try:
        await poll(lambda: len(router.reports) == 1)
        rep.wake()
        await poll(lambda: len(router.reports) == 2, timeout_s=2)
    finally:
        task.cancel()
    assert router.reports[1].seq == 2


async def test_router_down_logs_once_and_backs_off(caplog: pytest.LogCaptureFixture) -> None:
    dead = closed_port_url()
    metrics = EdgeMetrics()
    caplog.set_level(logging.INFO, logger="edge.reporter")
    task = asyncio.create_task(reporter((dead,), metrics, interval_s=0.05).run())
    try:
        await poll(lambda: sample(metrics, dead, "failed") >= 4, timeout_s=5)
    finally:
        task.cancel()
    failures = [r for r in caplog.records if "event=report_failed" in r.getMessage()]
    assert len(failures) == 1 and dead in failures[0].getMessage()


async def test_refusing_router_recovers_and_other_routers_unaffected(
    router: FakeRouter, caplog: pytest.LogCaptureFixture
) -> None:
    other = FakeRouter()
    await other.start()
    caplog.set_level(logging.INFO, logger="edge.reporter")
    router.refuse = True
    metrics = EdgeMetrics()
    task = asyncio.create_task(reporter((router.url, other.url), metrics, interval_s=0.05).run())
    try:
        await poll(lambda: sample(metrics, router.url, "failed") >= 2)
        assert len(other.reports) >= 2  # the healthy router still gets every round
        router.refuse = False
        await poll(lambda: len(router.reports) >= 1)
    finally:
        task.cancel()
        await other.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("event=report_failed" in m for m in messages) == 1
    assert sum("event=report_recovered" in m for m in messages) == 1
    seqs = [r.seq for r in other.reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_wrong_token_counts_as_failure(router: FakeRouter) -> None:
    router.token = "other"
    metrics = EdgeMetrics()
    task = asyncio.create_task(reporter((router.url,), metrics, interval_s=0.05).run())
    try:
        await poll(lambda: router.unauthorized >= 1 and sample(metrics, router.url, "failed") >= 1)
    finally:
        task.cancel()
    assert router.reports == []
