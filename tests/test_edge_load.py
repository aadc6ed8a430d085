"""Load accounting (pure, clock passed in) and request coalescing primitives."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdn.report import MAX_UTILIZATION
from edge.coalesce import Coalescer
from edge.load import DEGRADED_HOLD_S, WINDOW_S, LoadTracker

T0 = 1_000_000.0


def served(tracker: LoadTracker, now: float, result: str, n: int = 1) -> None:
    for _ in range(n):
        tracker.begin(now)
        tracker.end(now, result)  # type: ignore[arg-type]


def test_rps_over_the_sliding_window() -> None:
    tracker = LoadTracker(capacity_rps=100.0, started=T0 - 60)
    for second in range(5):
        served(tracker, T0 + second, "hit", n=50)
    snap = tracker.snapshot(T0 + 4.5)
    assert snap.rps == 50.0
    assert snap.utilization == 0.5
    # Five seconds later the window holds none of those requests.
    assert tracker.snapshot(T0 + 4 + WINDOW_S).rps == 0.0


def test_an_overloaded_edge_reports_the_highest_utilization_a_router_takes() -> None:
    tracker = LoadTracker(capacity_rps=0.01, started=T0 - 60)
    for second in range(5):
        served(tracker, T0 + second, "hit", n=50)
    snap = tracker.snapshot(T0 + 4.5)
    assert snap.utilization == MAX_UTILIZATION  # 5000 unclamped: the router refuses that


def test_young_process_averages_over_its_age() -> None:
    tracker = LoadTracker(capacity_rps=10.0, started=T0)
    served(tracker, T0 + 0.5, "miss", n=20)
    assert tracker.snapshot(T0 + 2.0).rps == 10.0


def test_inflight_counts_unfinished_requests() -> None:
    tracker = LoadTracker(capacity_rps=10.0, started=T0)
    tracker.begin(T0)
    tracker.begin(T0)
    tracker.end(T0, "pass")
    assert tracker.snapshot(T0).inflight == 1


def test_hit_ratio_counts_only_cacheable_requests() -> None:
    tracker = LoadTracker(capacity_rps=10.0, started=T0)
    served(tracker, T0, "hit", n=6)
    served(tracker, T0, "stale", n=1)
    served(tracker, T0, "revalidated", n=1)
    served(tracker, T0, "miss", n=2)
    served(tracker, T0, "pass", n=50)  # POSTs never could have been hits
    assert tracker.snapshot(T0 + 1).cache_hit_ratio == 0.8


def test_status_degraded_after_origin_failure_then_up_again() -> None:
    tracker = LoadTracker(capacity_rps=10.0, started=T0)
    assert tracker.status(T0) == "up"
    assert tracker.origin_failed(T0) is True  # a change: report at once
    assert tracker.origin_failed(T0 + 1) is False
    assert tracker.snapshot(T0 + 2).status == "degraded"
    assert tracker.status(T0 + 1 + DEGRADED_HOLD_S) == "up"


def test_draining_is_final_and_beats_degraded() -> None:
    tracker = LoadTracker(capacity_rps=10.0, started=T0)
    tracker.origin_failed(T0)
    assert tracker.drain() is True
    assert tracker.drain() is False
    assert tracker.status(T0 + 1000) == "draining"
    assert tracker.origin_failed(T0 + 1000) is False


@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=30), st.sampled_from(["hit", "miss", "pass"])),
        max_size=200,
    )
)
def test_snapshot_figures_stay_in_range(events: list[tuple[float, str]]) -> None:
    tracker = LoadTracker(capacity_rps=7.0, started=T0)
    for offset, result in sorted(events):
        served(tracker, T0 + offset, result)
    snap = tracker.snapshot(T0 + 31)
    assert snap.inflight == 0
    assert snap.rps >= 0 and snap.utilization == pytest.approx(snap.rps / 7.0, abs=1e-3)
    assert 0.0 <= snap.cache_hit_ratio <= 1.0
    assert snap.rps * WINDOW_S <= len(events) + 1e-6


async def test_coalescer_one_leader_per_key() -> None:
    coalescer = Coalescer()
    flight = coalescer.lead("k")
    assert flight is not None
    assert coalescer.lead("k") is None
    assert coalescer.lead("other") is not None
    waiter = asyncio.create_task(coalescer.follow(flight, 5.0))
    await asyncio.sleep(0)
    coalescer.finish(flight, stored=True)
    assert await waiter is True
    assert coalescer.current("k") is None
    assert coalescer.lead("k") is not None


async def test_coalescer_wait_is_bounded() -> None:
    coalescer = Coalescer()
    flight = coalescer.lead("k")
    assert flight is not None
    assert await coalescer.follow(flight, 0.01) is False
    assert coalescer.current("k") is flight  # the leader still owns the key


async def test_coalescer_reports_unstored_flights() -> None:
    coalescer = Coalescer()
    flight = coalescer.lead("k")
    assert flight is not None
    waiter = asyncio.create_task(coalescer.follow(flight, 5.0))
    await asyncio.sleep(0)
    coalescer.finish(flight, stored=False)
    assert await waiter is False
