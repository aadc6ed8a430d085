"""Load accounting for one edge: what its reports and /healthz say. Pure: `now` is passed in.

Theory of operation: every client request is counted in a one-second bucket when it
starts (rps) and, when it ends, as a cache hit or a cacheable miss (hit ratio); requests
whose answer could never come from the cache (pass-through methods, no-store requests)
count for rps only. The figures are sums over the last WINDOW_S seconds of buckets, so a
report reflects the recent past without the noise of a single second. Status is
`draining` once drain() is called (for good), else `degraded` while the origin failed
in the last DEGRADED_HOLD_S seconds (the edge is answering from stale copies or with
errors), else `up`.

Open WebSocket tunnels are load too: each holds two sockets and memory for as long as a
chat lasts, and a request count never sees them. Utilization is the tighter of the two
resources, max(rps / capacity_rps, tunnels / max_tunnels): an edge whose tunnel slots are
full refuses new upgrades, so it reports itself full and routers send new clients elsewhere.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from cdn.report import MAX_UTILIZATION, EdgeStatus

BUCKET_S = 1.0
WINDOW_S = 5.0
DEGRADED_HOLD_S = 10.0
_BUCKETS = int(WINDOW_S / BUCKET_S)

CacheResult = Literal["hit", "stale", "revalidated", "miss", "pass", "error"]
_HITS = frozenset({"hit", "stale", "revalidated"})
_CACHEABLE = _HITS | {"miss"}


@dataclass(frozen=True, slots=True)
class LoadSnapshot:
    status: EdgeStatus
    inflight: int
    rps: float
    utilization: float
    cache_hit_ratio: float
    tunnels: int = 0

    def as_dict(self) -> dict[str, object]:
        return {
            "status": self.status,
            "inflight": self.inflight,
            "rps": self.rps,
            "utilization": self.utilization,
            "cache_hit_ratio": self.cache_hit_ratio,
            "tunnels": self.tunnels,
        }


@dataclass(slots=True)
class _Bucket:
    index: int
    requests: int = 0
    cacheable: int = 0
    hits: int = 0


class LoadTracker:
    """In-flight count, windowed rps and hit ratio, and status, for one edge process."""

    def __init__(self, capacity_rps: float, started: float, max_tunnels: int = 0) -> None:
        self.capacity_rps = capacity_rps
        self.max_tunnels = max_tunnels
        self.inflight = 0
        self._started = started
        self._buckets: deque[_Bucket] = deque(maxlen=_BUCKETS)
        self._draining = False
        self._origin_failed_at: float | None = None

    def begin(self, now: float) -> None:
        """A client request arrived."""
        self.inflight += 1
        self._bucket(now).requests += 1

    def end(self, now: float, result: CacheResult) -> None:
        """A client request was answered (or abandoned) with this cache result."""
        self.inflight -= 1
        if result in _CACHEABLE:
            bucket = self._bucket(now)
            bucket.cacheable += 1
            bucket.hits += result in _HITS

    def origin_failed(self, now: float) -> bool:
        """Record an origin failure; True if that changed the status (report at once)."""
        before = self.status(now)
        self._origin_failed_at = now
        return self.status(now) != before

    def drain(self) -> bool:
        """Enter draining for good; True if the edge was not draining already."""
        changed = not self._draining
        self._draining = True
        return changed

    def status(self, now: float) -> EdgeStatus:
        if self._draining:
            return "draining"
        failed = self._origin_failed_at
        if failed is not None and now - failed < DEGRADED_HOLD_S:
            return "degraded"
        return "up"

    def snapshot(self, now: float, tunnels: int = 0) -> LoadSnapshot:
        recent = [b for b in self._buckets if b.index > self._index(now) - _BUCKETS]
        # A young process has seen less than a full window: average over what it has seen.
        span = min(WINDOW_S, max(BUCKET_S, now - self._started))
        rps = sum(b.requests for b in recent) / span
        cacheable = sum(b.cacheable for b in recent)
        hits = sum(b.hits for b in recent)
        return LoadSnapshot(
            status=self.status(now),
            inflight=self.inflight,
            rps=round(rps, 3),
            # Clamped to what a router accepts: an overloaded edge reports itself saturated
            # rather than a report the router refuses (and so the edge as down).
            utilization=min(
                round(max(rps / self.capacity_rps, self._tunnel_share(tunnels)), 4),
                MAX_UTILIZATION,
            ),
            cache_hit_ratio=round(hits / cacheable, 4) if cacheable else 0.0,
            tunnels=tunnels,
        )

    def _tunnel_share(self, tunnels: int) -> float:
        if self.max_tunnels:
            return tunnels / self.max_tunnels
        return 1.0 if tunnels else 0.0  # no slots at all: any tunnel fills the edge

    def _index(self, now: float) -> int:
        return int(now // BUCKET_S)

    def _bucket(self, now: float) -> _Bucket:
        index = self._index(now)
        if not self._buckets or self._buckets[-1].index < index:
            self._buckets.append(_Bucket(index))
        # A clock that steps back a little still lands in the newest bucket.
        return self._buckets[-1]
