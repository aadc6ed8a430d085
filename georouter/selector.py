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
its region does no filtering either.  Step 1 with one or two eligible nodes (the common
region) is a `Route`, also derived once per snapshot: the candidates, their counts and
every decision the draw can give, so `draw` is two weights, one random number and an
index, and the responder can keep the answer for each outcome.

Per-service policies. A geo-routed name may have its own pool (`[[zones.services]]`
`nodes` or `regions`), TTLs, all-down policy and `max_spill_regions` (how many of the
failover regions, nearest first, its clients may be sent to). Each snapshot is cut into
one `_Plan` per such service: its pools hold only its nodes, and a client region with
none of them is served as if from the nearest region (in its failover order) that has
some. Names without a policy of their own share the default plan (the snapshot itself).

Health-derived TTL (cf. gdnsd's DYNA max/min TTL). The TTL of an answer is decided per
(reason, region state), once per snapshot: "geo" and "drained" answers get the service's
`ttl`, unless the region is degraded (a node of its pool is down), and every other answer
(spillover, failover, fail_open) gets the short `degraded_ttl` (never above `ttl`), so
resolvers ask again soon and clients come home soon after their region recovers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from georouter.config import ANSWER_TTL_S, Node, Policy, Region, ServicePolicy
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
    ttl: int = ANSWER_TTL_S  # of the address records: short unless a healthy own-region answer


@dataclass(frozen=True, slots=True)
class _Route:
    """Where one region's queries of one family go when the region has no eligible node."""

    nodata: bool  # no node of this family configured, but eligible ones of the other
    spill: tuple[tuple[str, tuple[Candidate, ...]], ...]  # failover regions with eligible nodes


@dataclass(frozen=True, slots=True)
class _Plan:
    """One service's view of one snapshot, derived once: pools, routes, TTLs."""

    pools: Mapping[Family, Mapping[str, Pool]]  # family → region → the service's nodes
    routes: Mapping[Family, Mapping[str, _Route]]
    home: Mapping[str, str]  # client region → region serving it, when not itself
    failover: Mapping[str, tuple[str, ...]]  # cut to max_spill_regions
    geo_ttl: Mapping[Family, Mapping[str, int]]  # a geo answer's TTL per region
    short_ttl: int  # every answer away from home, and a degraded region's
    fail_open: bool


@dataclass(slots=True, eq=False)
class _Load:
    """One node's answer counts: the model's answers since its report and live answers."""

    since: int = 0  # answers naming the node first since its latest report
    live: float = 0.0  # decaying count of answers still in resolver caches
    reported_at: float | None = None  # that report's time


@dataclass(frozen=True, slots=True, eq=False)
class Route:
    """A client region's own-region answer under one snapshot, derived once: its one or two
    eligible candidates, their counts and weight floors, and every decision a draw can give
    (`Selector.draw` returns its index), so a caller can prepare what each one answers."""

    generation: int  # the Selector.generation it was derived under
    candidates: tuple[Candidate, ...]
    loads: tuple[_Load, ...]  # the candidates' counts (shared with the selector)
    floors: tuple[float, ...]  # each candidate's weight floor
    decisions: tuple[Decision, ...]  # by draw outcome: candidate i first


EMPTY_SNAPSHOT = FleetSnapshot(0, {4: {}, 6: {}})
DEFAULT_SERVICE = ""  # the plan of names without a policy of their own


class Selector:
    """The DNS path's Picker: reads the latest FleetSnapshot, counts the answers it gives."""

    def __init__(
        self,
        policy: Policy,
        regions: Iterable[Region],
        rng: random.Random,
        services: Iterable[ServicePolicy] = (),
    ) -> None:
        self._rng = rng
        self._snapshot = EMPTY_SNAPSHOT
        self._loads: dict[str, _Load] = {}  # per node: the answer counts of the model
        self._plans: dict[str, _Plan] = {}
        self._routes: dict[tuple[str, str, Family], Route | None] = {}
        self.generation = 0  # bumped whenever a derived Route may no longer hold
        self.reconfigure(policy, regions, services)

    def reconfigure(
        self, policy: Policy, regions: Iterable[Region], services: Iterable[ServicePolicy] = ()
    ) -> None:
        self._policy = policy
        self._count = policy.answers_per_response
        self._ttl = float(policy.answer_ttl)
        self._failover: Mapping[str, tuple[str, ...]] = {r.name: r.failover for r in regions}
        # Only names with a policy of their own get a plan; the rest share the default.
        self._services = {s.name: s for s in services if s != ServicePolicy(s.name)}
        self._replan()

    def _replan(self) -> None:
        plans = {DEFAULT_SERVICE: self._plan(ServicePolicy(DEFAULT_SERVICE))}
        plans.update((name, self._plan(s)) for name, s in self._services.items())
        self._plans = plans
        self._routes = {}
        self.generation += 1

    def _plan(self, service: ServicePolicy) -> _Plan:
        return plan(self._snapshot, self._failover, self._policy, service)

    @property
    def snapshot(self) -> FleetSnapshot:
        return self._snapshot

    def answers_since_report(self, name: str) -> int:
        load = self._loads.get(name)
        return load.since if load is not None else 0

    def update(self, snapshot: FleetSnapshot) -> None:
        """Adopt a new snapshot; a node with a newer report starts a new answer count."""
        for regions in snapshot.pools.values():
            for pool in regions.values():
                for candidate in pool.eligible + pool.saturated:
                    self._note_report(candidate)
        self._snapshot = snapshot
        self._replan()

    def pick(self, region: str, family: Family, service: str = DEFAULT_SERVICE) -> Decision:
        """The nodes for a client of `region` asking for `service` (an absolute name)."""
        ready = self.route(region, family, service)
        if ready is not None:
            return ready.decisions[self.draw(ready)]
        plan = self._plans.get(service) or self._plans[DEFAULT_SERVICE]
        region = plan.home.get(region, region)
        pools = plan.pools[family]
        own = pools.get(region)
        if own is not None and own.eligible:
            reason: DecisionReason = "drained" if own.draining else "geo"
            return Decision(region, self._draw(own.eligible), reason, plan.geo_ttl[family][region])
        route = plan.routes[family].get(region)
        if route is not None and route.nodata:
            return Decision(region, (), "geo", plan.short_ttl)
        if route is not None and route.spill:
            name, candidates = self._draw_region(route.spill)
            reason = "spillover" if own is not None and own.saturated else "failover"
            return Decision(name, self._draw(candidates), reason, plan.short_ttl)
        return self._last_resort(region, pools, plan)

    def route(self, region: str, family: Family, service: str = DEFAULT_SERVICE) -> Route | None:
        """What `pick` would draw from, derived once per snapshot: a Route when the client's
        (home) region has one or two eligible nodes of the family (the common case), else
        None (ask `pick`). Valid while `generation` stays `route.generation`."""
        key = (service, region, family)
        try:
            return self._routes[key]
        except KeyError:
            pass
        plan = self._plans.get(service) or self._plans[DEFAULT_SERVICE]
        home = plan.home.get(region, region)
        own = plan.pools[family].get(home)
        route = None
        if own is not None and 0 < len(own.eligible) <= 2:
            reason: DecisionReason = "drained" if own.draining else "geo"
            route = self._route(home, own.eligible, reason, plan.geo_ttl[family][home])
        self._routes[key] = route
        return route

    def _route(
        self, region: str, candidates: tuple[Candidate, ...], reason: DecisionReason, ttl: int
    ) -> Route:
        nodes = [c.node for c in candidates]
        orders = [nodes, nodes[::-1]] if len(nodes) == 2 else [nodes]
        return Route(
            generation=self.generation,
            candidates=candidates,
            loads=tuple(self._load(c.node.name) for c in candidates),
            floors=tuple(max(c.capacity_rps * MIN_WEIGHT_SHARE, 1e-9) for c in candidates),
            decisions=tuple(
                Decision(region, tuple(order[: self._count]), reason, ttl) for order in orders
            ),
        )

    def draw(self, route: Route) -> int:
        """One weighted draw over a Route's candidates, counted as `pick` counts it: the
        index of its decision (the same draw, and the same random number, as `_draw`)."""
        loads = route.loads
        if len(loads) == 1:
            loads[0].since += 1
            return 0
        a, b = route.candidates
        la, lb = loads
        fa, fb = route.floors
        ea = a.load_rps * la.since / la.live if la.since and la.live > 0.0 else 0.0
        eb = b.load_rps * lb.since / lb.live if lb.since and lb.live > 0.0 else 0.0
        wa = max(a.headroom_rps - ea, fa)
        wb = max(b.headroom_rps - eb, fb)
        if self._rng.random() * (wa + wb) >= wa:
            lb.since += 1
            return 1
        la.since += 1
        return 0

    def _load(self, name: str) -> _Load:
        load = self._loads.get(name)
        if load is None:
            load = self._loads[name] = _Load()
        return load

    def _last_resort(self, region: str, pools: Mapping[str, Pool], plan: _Plan) -> Decision:
        order = (region, *plan.failover.get(region, ()))
        ttl = plan.short_ttl
        for name in order:
            pool = pools.get(name)
            if pool is not None and pool.saturated:
                return Decision(name, self._draw(pool.saturated), "spillover", ttl)
        present = [(name, pools[name]) for name in order if name in pools]
        if not any(pool.configured for _, pool in present):
            # No node has an address of this family at all: an empty (NODATA) answer.
            return Decision(region, (), "geo", ttl)
        if not plan.fail_open:
            return Decision(region, (), "fail_closed", ttl)
        # Nodes the operator drained only if nothing else is configured.
        choices = [(n, p.fail_open) for n, p in present] + [(n, p.configured) for n, p in present]
        name, nodes = next((name, nodes) for name, nodes in choices if nodes)
        return Decision(name, nodes[: self._count], "fail_open", ttl)

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
        load = self._loads.get(c.node.name)
        since, live = (load.since, load.live) if load is not None else (0, 0.0)
        expected = c.load_rps * since / live if since and live > 0.0 else 0.0
        return c.headroom_rps - expected

    def _weight(self, c: Candidate) -> float:
        return max(self._remaining(c), c.capacity_rps * MIN_WEIGHT_SHARE, 1e-9)

    def _answer(self, nodes: tuple[Node, ...]) -> tuple[Node, ...]:
        # Clients use the first address; it is the one whose load this answer brings.
        self._load(nodes[0].name).since += 1
        return nodes

    def _note_report(self, c: Candidate) -> None:
        load = self._load(c.node.name)
        previous = load.reported_at
        if c.reported_at is None or c.reported_at == previous:
            return
        elapsed = c.reported_at - previous if previous is not None else 0.0
        decay = math.exp(-max(elapsed, 0.0) / self._ttl) if self._ttl > 0 else 0.0
        load.live = load.live * decay + load.since
        load.since = 0
        load.reported_at = c.reported_at


def plan(
    snapshot: FleetSnapshot,
    failover: Mapping[str, tuple[str, ...]],
    policy: Policy,
    service: ServicePolicy,
) -> _Plan:
    """Cut `snapshot` to `service`'s pool and derive what its queries read."""
    pools = snapshot.pools
    home: dict[str, str] = {}
    if service.nodes:
        pools = {
            family: {region: _only(pool, service.nodes) for region, pool in regions.items()}
            for family, regions in pools.items()
        }
        has = {r for regions in pools.values() for r, pool in regions.items() if pool.configured}
        home = {
            region: next((r for r in order if r in has), region)
            for region, order in failover.items()
            if region not in has
        }
    if service.max_spill_regions is not None:
        failover = {r: order[: service.max_spill_regions] for r, order in failover.items()}
    ttl = policy.answer_ttl if service.ttl is None else service.ttl
    short = policy.degraded_ttl if service.degraded_ttl is None else service.degraded_ttl
    short = min(short, ttl)
    all_down = policy.all_down if service.all_down is None else service.all_down
    return _Plan(
        pools=pools,
        routes=_routes(pools, failover),
        home=home,
        failover=failover,
        geo_ttl={
            family: {region: short if pool.down else ttl for region, pool in regions.items()}
            for family, regions in pools.items()
        },
        short_ttl=short,
        fail_open=all_down == "fail-open",
    )


def _only(pool: Pool, names: frozenset[str]) -> Pool:
    """The part of `pool` made of the named nodes."""
    eligible = tuple(c for c in pool.eligible if c.node.name in names)
    saturated = tuple(c for c in pool.saturated if c.node.name in names)
    configured = tuple(n for n in pool.configured if n.name in names)
    down = tuple(n for n in pool.down if n.name in names)
    # Draining, or unknown at boot: a configured node neither drawn, saturated nor down.
    accounted = len(eligible) + len(saturated) + len(down)
    return Pool(
        eligible=eligible,
        saturated=saturated,
        draining=pool.draining and accounted < len(configured),
        configured=configured,
        fail_open=tuple(n for n in pool.fail_open if n.name in names),
        down=down,
    )


def _routes(
    all_pools: Mapping[Family, Mapping[str, Pool]], failover: Mapping[str, tuple[str, ...]]
) -> dict[Family, dict[str, _Route]]:
    routes: dict[Family, dict[str, _Route]] = {}
    for family, pools in all_pools.items():
        other = all_pools.get(6 if family == 4 else 4, {})
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
