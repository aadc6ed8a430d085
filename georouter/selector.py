"""Choose the edge nodes named in an answer: spread by spare capacity, never herd.

Model. A load report is always a little old, so a node that looks least loaded would
collect every answer handed out until the next report shows the flood (herding). We
therefore draw nodes at random, weighted by their spare capacity, and subtract from that
spare capacity the load the answers given since the node's latest report will bring:

* An answer is cached by the resolver for the answer TTL, and its clients send their
  requests to the first address in it. So each answer stands for about
  r = reported_rps / live_answers requests per second, where live_answers counts the
  answers naming the node first, decaying exponentially with time constant TTL (answers
  still in resolver caches). r is learnt per node from its own reports; it needs no knob,
  and when several routers share the fleet each one's r grows in step with them.
* weight = max(headroom_rps - answers_since_report * r, capacity_rps * MIN_WEIGHT_SHARE)
  where headroom_rps = capacity * saturation_threshold - reported load. The floor keeps
  every unsaturated node drawable when the estimate overshoots.

Up to policy.answers_per_response distinct nodes are drawn without replacement, best
(first drawn) first, all from one region. Order of preference:

1. the client's own region, if it has an eligible node of the asked family;
2. if the own region has no node with an address of that family at all (configured) but
   has eligible nodes of the other family, an empty answer (NODATA, reason "geo"): an
   IPv4-only region answers AAAA with nothing rather than another continent's nodes,
   which Happy Eyeballs (RFC 8305) would then prefer over the near IPv4 ones;
3. the failover regions that have an eligible node, filled like water: the nearest one
   whose remaining headroom (the same model as within a region: reported headroom less
   the load of the answers given since) is not used up takes the spilled clients, the
   next-nearest once it is full, and only when all are full are they drawn in
   proportion to their weights; so clients go no further than capacity demands and a
   nearly full neighbour is not flooded ("spillover" if the own region's nodes are up
   but saturated, "failover" if they are down or draining);
4. when every node that is up is saturated, the saturated nodes of the nearest such
   region (still "spillover");
5. nothing is up anywhere: policy.all_down "fail-open" answers with the configured nodes
   of the own (else nearest) region, operator-drained ones left out unless nothing else
   is configured ("fail_open"), "servfail" with no nodes ("fail_closed").

Steps 2 and 3 read tables derived once per snapshot (`_Route`), so a query that leaves
its region does no filtering either.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from georouter.config import Node, Policy, Region
from georouter.fleet import Candidate, Family, FleetSnapshot, Pool

DecisionReason = Literal["geo", "drained", "spillover", "failover", "fail_open", "fail_closed"]

MIN_WEIGHT_SHARE = 0.01  # weight floor, as a share of capacity


@dataclass(frozen=True, slots=True)
class Decision:
    region: str  # the region whose nodes answer (the client's own unless spilled or failed over)
    nodes: tuple[
        Node, ...
    ]  # best first; each has an address of the asked family; () only if fail_closed
    reason: DecisionReason


@dataclass(frozen=True, slots=True)
class _Route:
    """Where one region's queries of one family go when the region has no eligible node."""

    nodata: bool  # no node of this family configured, but eligible ones of the other
    spill: tuple[tuple[str, tuple[Candidate, ...]], ...]  # failover regions with eligible nodes


EMPTY_SNAPSHOT = FleetSnapshot(0, {4: {}, 6: {}})


class Selector:
    """The DNS path's Picker: reads the latest FleetSnapshot, counts the answers it gives."""

    def __init__(self, policy: Policy, regions: Iterable[Region], rng: random.Random) -> None:
        self._rng = rng
        self._snapshot = EMPTY_SNAPSHOT
        self._since: dict[str, int] = {}  # answers naming the node first since its report
        self._live: dict[str, float] = {}  # decaying count of answers still cached
        self._reported_at: dict[str, float] = {}
        self._routes: dict[Family, dict[str, _Route]] = {}
        self.reconfigure(policy, regions)

    def reconfigure(self, policy: Policy, regions: Iterable[Region]) -> None:
        self._count = policy.answers_per_response
        self._ttl = float(policy.answer_ttl)
        self._fail_open = policy.all_down == "fail-open"
        self._failover: Mapping[str, tuple[str, ...]] = {r.name: r.failover for r in regions}
        self._routes = _routes(self._snapshot, self._failover)

    @property
    def snapshot(self) -> FleetSnapshot:
        return self._snapshot

    def answers_since_report(self, name: str) -> int:
        return self._since.get(name, 0)

    def update(self, snapshot: FleetSnapshot) -> None:
        """Adopt a new snapshot; a node with a newer report starts a new answer count."""
        for regions in snapshot.pools.values():
            for pool in regions.values():
                for candidate in pool.eligible + pool.saturated:
                    self._note_report(candidate)
        self._snapshot = snapshot
        self._routes = _routes(snapshot, self._failover)

    def pick(self, region: str, family: Family) -> Decision:
        pools = self._snapshot.pools[family]
        own = pools.get(region)
        if own is not None and own.eligible:
            return Decision(region, self._draw(own.eligible), "drained" if own.draining else "geo")
        route = self._routes[family].get(region)
        if route is not None and route.nodata:
            return Decision(region, (), "geo")
        if route is not None and route.spill:
            name, candidates = self._draw_region(route.spill)
            reason: DecisionReason = (
                "spillover" if own is not None and own.saturated else "failover"
            )
            return Decision(name, self._draw(candidates), reason)
        return self._last_resort(region, pools)

    def _last_resort(self, region: str, pools: Mapping[str, Pool]) -> Decision:
        order = (region, *self._failover.get(region, ()))
        for name in order:
            pool = pools.get(name)
            if pool is not None and pool.saturated:
                return Decision(name, self._draw(pool.saturated), "spillover")
        present = [(name, pools[name]) for name in order if name in pools]
        if not any(pool.configured for _, pool in present):
            # No node has an address of this family at all: an empty (NODATA) answer.
            return Decision(region, (), "geo")
        if not self._fail_open:
            return Decision(region, (), "fail_closed")
        # Nodes the operator drained only if nothing else is configured.
        choices = [(n, p.fail_open) for n, p in present] + [(n, p.configured) for n, p in present]
        name, nodes = next((name, nodes) for name, nodes in choices if nodes)
        return Decision(name, nodes[: self._count], "fail_open")

    def _draw_region(
        self, regions: tuple[tuple[str, tuple[Candidate, ...]], ...]
    ) -> tuple[str, tuple[Candidate, ...]]:
        """Water-filling: the nearest failover region with capacity left takes the spill.

        A region is full once the answers already sent to it use up its headroom; the
        next-nearest then takes over, so clients travel no further than capacity demands.
        Only when every candidate region is full are they drawn by their (floor) weights.
        """
        for entry in regions:
            if any(self._remaining(c) > c.capacity_rps * MIN_WEIGHT_SHARE for c in entry[1]):
                return entry
        weights = [sum(self._weight(c) for c in candidates) for _, candidates in regions]
        return regions[_index(weights, self._rng.random() * sum(weights))]

    def _draw(self, candidates: tuple[Candidate, ...]) -> tuple[Node, ...]:
        if len(candidates) == 1:
            return self._answer((candidates[0].node,))
        weights = [self._weight(c) for c in candidates]
        if len(candidates) == 2:  # the common region size: one weighted coin flip
            a, b = candidates
            if self._rng.random() * (weights[0] + weights[1]) >= weights[0]:
                a, b = b, a
            return self._answer((a.node, b.node) if self._count > 1 else (a.node,))
        total = sum(weights)
        chosen: list[Node] = []
        for _ in range(min(self._count, len(candidates))):
            index = _index(weights, self._rng.random() * total)
            chosen.append(candidates[index].node)
            total -= weights[index]
            weights[index] = 0.0
        return self._answer(tuple(chosen))

    def _remaining(self, c: Candidate) -> float:
        """Spare capacity (rps) left once the answers given since its report bring load."""
        name = c.node.name
        since = self._since.get(name, 0)
        live = self._live.get(name, 0.0)
        expected = c.load_rps * since / live if since and live > 0.0 else 0.0
        return c.headroom_rps - expected

    def _weight(self, c: Candidate) -> float:
        return max(self._remaining(c), c.capacity_rps * MIN_WEIGHT_SHARE, 1e-9)

    def _answer(self, nodes: tuple[Node, ...]) -> tuple[Node, ...]:
        # Clients use the first address; it is the one whose load this answer brings.
        first = nodes[0].name
        self._since[first] = self._since.get(first, 0) + 1
        return nodes

    def _note_report(self, c: Candidate) -> None:
        name = c.node.name
        previous = self._reported_at.get(name)
        if c.reported_at is None or c.reported_at == previous:
            return
        elapsed = c.reported_at - previous if previous is not None else 0.0
        decay = math.exp(-max(elapsed, 0.0) / self._ttl) if self._ttl > 0 else 0.0
        self._live[name] = self._live.get(name, 0.0) * decay + self._since.pop(name, 0)
        self._reported_at[name] = c.reported_at


def _routes(
    snapshot: FleetSnapshot, failover: Mapping[str, tuple[str, ...]]
) -> dict[Family, dict[str, _Route]]:
    routes: dict[Family, dict[str, _Route]] = {}
    for family, pools in snapshot.pools.items():
        other = snapshot.pools.get(6 if family == 4 else 4, {})
        routes[family] = {
            region: _Route(
                nodata=not pool.configured and bool(region in other and other[region].eligible),
                spill=tuple(
                    (name, pools[name].eligible)
                    for name in failover.get(region, ())
                    if name in pools and pools[name].eligible
                ),
            )
            for region, pool in pools.items()
        }
    return routes


def _index(weights: list[float], point: float) -> int:
    """The index whose cumulative weight interval holds point (never a zero weight)."""
    last = 0
    acc = 0.0
    for i, weight in enumerate(weights):
        if weight > 0.0:
            acc += weight
            last = i
            if point < acc:
                return i
    return last  # rounding left point at the very top
