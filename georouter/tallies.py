"""The DNS hot path's counts: plain dict and list increments, no locks, no Prometheus.

The responder, the GeoIP placer and the DNS shells count here (one thread owns a set);
georouter/metrics.py turns them into Prometheus samples only when /metrics is scraped, and
DNS workers send theirs to the main process (georouter/workers.py), which folds them in.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import TypeVar

QUERY_DURATION_BUCKETS = (
    25e-6,
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2.5e-3,
    5e-3,
    10e-3,
    25e-3,
    100e-3,
)
ECS_SCOPE_BUCKETS = (0, 8, 12, 16, 20, 24, 32, 40, 48, 56, 64, 128)
TRANSPORTS = ("udp", "tcp")
_Key = TypeVar("_Key")


@dataclass(slots=True)
class BucketTally:
    """An exact Prometheus histogram as plain counts: one list increment per observation."""

    bounds: tuple[float, ...]  # upper bounds, ascending; +Inf is implied
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (Prometheus `le`).
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add(self, other: BucketTally) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total


def _durations() -> dict[str, BucketTally]:
    return {transport: BucketTally(QUERY_DURATION_BUCKETS) for transport in TRANSPORTS}


def _scopes() -> BucketTally:
    return BucketTally(ECS_SCOPE_BUCKETS)


@dataclass(slots=True)
class HotPathTallies:
    """Counts kept by the DNS path without locks or label lookups (one thread owns them)."""

    # Counted once or more per answered query, so plain dicts (a Counter's `[key] += 1` costs
    # about twice a dict's `d[key] = d.get(key, 0) + 1`); an absent key is a count of 0.
    queries: dict[tuple[str, str, str], int] = field(
        default_factory=dict
    )  # transport, qtype, rcode
    answers: dict[tuple[str, str], int] = field(default_factory=dict)  # region, node
    decisions: dict[tuple[str, str], int] = field(default_factory=dict)  # service, reason
    dropped: Tally[str] = field(default_factory=Tally)  # reason
    geoip_lookups: int = 0
    geoip_cache_hits: int = 0
    geoip_corrupt_records: int = 0
    durations: dict[str, BucketTally] = field(default_factory=_durations)  # by transport
    ecs_scopes: BucketTally = field(default_factory=_scopes)
    rrl: Tally[tuple[str, str, str]] = field(default_factory=Tally)  # action, reason, ecs
    cookies: Tally[str] = field(default_factory=Tally)  # outcome
    query_log: Tally[str] = field(default_factory=Tally)  # written, dropped (lines)

    def add(self, other: HotPathTallies) -> None:
        """Fold in another process's counts (a DNS worker's)."""
        _fold(self.queries, other.queries)
        _fold(self.answers, other.answers)
        _fold(self.decisions, other.decisions)
        self.dropped.update(other.dropped)
        self.geoip_lookups += other.geoip_lookups
        self.geoip_cache_hits += other.geoip_cache_hits
        self.geoip_corrupt_records += other.geoip_corrupt_records
        for transport, tally in other.durations.items():
            self.durations[transport].add(tally)
        self.ecs_scopes.add(other.ecs_scopes)
        self.rrl.update(other.rrl)
        self.cookies.update(other.cookies)
        self.query_log.update(other.query_log)


def _fold(mine: dict[_Key, int], theirs: dict[_Key, int]) -> None:
    for key, n in theirs.items():
        mine[key] = mine.get(key, 0) + n
