"""Fleet state: what the router believes about every edge node, as immutable snapshots.

Theory of operation. Two independent signals say whether a node can take clients:

* Active probes (the router pulls `GET {control_url}/healthz`). They drive a hysteresis
  state `probe_health`: unknown → up after ONE success (probing starts at boot, so nodes
  become usable within one probe round, ~1 s); `fall` consecutive failures → down;
  from down, `rise` consecutive successes → up.
* Load reports (the edge pushes `LoadReport` about once a second). A node that has
  reported before and whose reports stop for `report_expiry_s` is down ("report_expired")
  until a fresh report arrives. A node that never reported is judged by probes alone.
  Reports arrive with a per-edge sequence number: one not above the last seen is stale
  (a duplicate, or overtaken by a newer one) and ignored, except that a sequence number
  of at most RESTART_SEQ_MAX below the last seen means the edge process restarted (edges
  count from 1), so it is accepted and becomes the new baseline. (A report reordered in
  the network during an edge's first few seconds looks the same; accepting it costs one
  out-of-date load figure, a second at most.) And once the last accepted report is older
  than report_expiry_s, any report is accepted whatever its seq: the node is down for
  want of news, so anything fresher is better. Without that, an edge that restarted
  while its first RESTART_SEQ_MAX reports were lost would stay down until its new seq
  passed the old one (hours for a long-lived edge), although probes say it is up.

The state shown to operators and used for selection is derived from both, in this order:
drained by the API (or a weight override of 0) → draining; probe down or report
expired → down; edge reports "draining" → draining; no probe success and no fresh report
yet → unknown; utilisation at or above policy.saturation_threshold → saturated (up, but
takes no new clients); otherwise up ("degraded" edges stay up, with reason edge_degraded).

Every change that matters to selection publishes a new FleetSnapshot (version + 1) that
holds, per address family and region, the eligible nodes with their spare capacity, so
the DNS path does no filtering. The module is pure: `now` is always passed in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

from cdn.report import LoadReport
from georouter.config import Node, RouterConfig

NodeState = Literal["unknown", "up", "down", "draining", "saturated"]
NODE_STATES: tuple[NodeState, ...] = ("unknown", "up", "down", "draining", "saturated")
ProbeHealth = Literal["unknown", "up", "down"]
ReportResult = Literal["accepted", "stale", "unknown_node"]
Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)

RESTART_SEQ_MAX = 4  # a report seq this small, below the last seen, means the edge restarted
# Channel flap damping: a node whose channel closes again within FLAP_WINDOW_S of the last
# close stays out FLAP_HOLD_S, doubling with each further close up to FLAP_HOLD_MAX_S.
FLAP_WINDOW_S = 10.0
FLAP_HOLD_S = 1.0
FLAP_HOLD_MAX_S = 10.0


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """Everything the router knows about one node; replaced, never mutated."""

    node: Node
    state: NodeState = "unknown"
    reason: str = "no_data"
    probe_health: ProbeHealth = "unknown"
    probe_streak: int = 0  # > 0: consecutive successes, < 0: consecutive failures
    last_probe_ok: bool | None = None
    last_probe_at: float | None = None
    report: LoadReport | None = None
    report_at: float | None = None
    report_expired: bool = False
    api_drained: bool = False
    weight: float = 1.0  # the operator's override: capacity_rps as the selector sees it x this
    channel_closed_at: float | None = None  # its channel closed without a drain; out until reopened
    report_on_channel: bool = False  # the latest accepted report came over a channel
    channel_last_close: float | None = None
    channel_closes: int = 0  # closes in a row, each within FLAP_WINDOW_S of the one before
    channel_hold_until: float = 0.0  # a flapping node stays out at least until then
    purge_hold: bool = False  # came back owing purges: out until a report acks them

    @property
    def utilization(self) -> float:
        return self.report.utilization if self.report is not None else 0.0

    @property
    def degraded(self) -> bool:
        return self.report is not None and self.report.status == "degraded"

    def report_age(self, now: float) -> float | None:
        return None if self.report_at is None else now - self.report_at


@dataclass(frozen=True, slots=True)
class Candidate:
    """An eligible node as the selector sees it."""

    node: Node
    capacity_rps: float
    load_rps: float  # utilisation * configured capacity, from the latest report (0 if none)
    headroom_rps: float  # load it can still take before the saturation threshold
    reported_at: float | None  # when the latest accepted report arrived


@dataclass(frozen=True, slots=True)
class Pool:
    """One region's nodes that have an address of one family."""

    eligible: tuple[Candidate, ...]  # up and below the saturation threshold
    saturated: tuple[Candidate, ...]  # up but at or above it
    draining: bool  # a draining node was left out
    configured: tuple[Node, ...]  # every configured node
    fail_open: tuple[Node, ...]  # the configured nodes the operator has not drained
    down: tuple[Node, ...] = ()  # configured nodes in state down (the region is degraded)


@dataclass(frozen=True, slots=True)
class FleetSnapshot:
    version: int
    pools: Mapping[Family, Mapping[str, Pool]]  # family → region → pool

    def pool(self, region: str, family: Family) -> Pool:
        return self.pools[family][region]


@dataclass(frozen=True, slots=True)
class Transition:
    """A node's derived (state, reason) changed; `old == new` means only the reason did."""

    node: str
    region: str
    old: NodeState
    new: NodeState
    reason: str


Publish = Callable[[FleetSnapshot], None]
Observe = Callable[[Transition], None]


def _ignore(_: Transition) -> None:
    return None


class Fleet:
    """The node state machines of one router; publishes a snapshot after every change."""

    def __init__(self, config: RouterConfig, publish: Publish, observe: Observe = _ignore) -> None:
        self._publish = publish
        self._observe = observe
        self._config = config
        self._statuses: dict[str, NodeStatus] = {n.name: NodeStatus(n) for n in config.nodes}
        self._version = 0
        self.snapshot = self._rebuild()
        publish(self.snapshot)

    @property
    def statuses(self) -> Mapping[str, NodeStatus]:
        return self._statuses

    @property
    def config(self) -> RouterConfig:
        return self._config

    def apply_report(
        self, report: LoadReport, now: float, *, channel: bool = False, owes_purges: bool = False
    ) -> ReportResult:
        """Apply one report. `owes_purges`: the node has not applied every purge yet (the
        reply to this report carries them). A node that is not serving when it reports so
        (back from a cut link, a restart, a router's restart) stays out of answers until a
        report acks them: it may still hold objects purged while it was away."""
        status = self._statuses.get(report.node)
        if status is None:
            return "unknown_node"
        if not self._acceptable(status, report.seq, now):
            return "stale"
        serving = status.state in ("up", "saturated")
        fresh = replace(
            status,
            report=report,
            report_at=now,
            report_expired=False,
            report_on_channel=channel,
            purge_hold=owes_purges and not serving,
        )
        self._set(_reopened(fresh, now), publish=True)
        return "accepted"

    def close_channel(self, name: str, now: float) -> bool:
        """The node's report channel closed without a drain: its process is gone (the
        kernel closed its sockets), so it leaves the answers now. It comes back after a
        fresh report on a reopened channel and a good probe, both after this moment, and
        not before a flap hold that doubles with each close in quick succession."""
        status = self._statuses.get(name)
        if status is None:
            return False
        last = status.channel_last_close
        flapping = last is not None and now - last <= FLAP_WINDOW_S
        closes = status.channel_closes + 1 if flapping else 1
        hold = 0.0 if closes == 1 else min(FLAP_HOLD_MAX_S, FLAP_HOLD_S * 2 ** (closes - 2))
        closed = replace(
            status,
            channel_closed_at=now,
            channel_last_close=now,
            report_on_channel=False,
            channel_closes=closes,
            channel_hold_until=now + hold,
        )
        self._set(closed, publish=False)
        return True

    def _acceptable(self, status: NodeStatus, seq: int, now: float) -> bool:
        if status.report is None or status.report_at is None:
            return True
        expired = now - status.report_at > self._config.health.report_expiry_s
        return expired or _is_newer(seq, status.report.seq)

    def apply_probe(self, name: str, ok: bool, now: float, url: str | None = None) -> None:
        """Count one probe result; `url` is the one probed, if known: when a reload moved
        the node to another control_url while the probe was in flight, it is ignored."""
        status = self._statuses.get(name)
        if status is None:  # removed by a reload while the probe was in flight
            return
        if url is not None and url != status.node.health_url:
            return
        streak = max(status.probe_streak, 0) + 1 if ok else min(status.probe_streak, 0) - 1
        health = _probe_health(status.probe_health, streak, self._config)
        updated = replace(
            status, probe_streak=streak, probe_health=health, last_probe_ok=ok, last_probe_at=now
        )
        self._set(_reopened(updated, now), publish=False)

    def tick(self, now: float) -> None:
        """Expire the reports of nodes that stopped reporting."""
        expiry = self._config.health.report_expiry_s
        for status in list(self._statuses.values()):
            age = status.report_age(now)
            if age is not None and age > expiry and not status.report_expired:
                self._set(replace(status, report_expired=True), publish=False)

    def drain(self, name: str) -> bool:
        return self._set_drained(name, True)

    def undrain(self, name: str) -> bool:
        return self._set_drained(name, False)

    def set_weight(self, name: str, weight: float) -> bool:
        status = self._statuses.get(name)
        if status is None:
            return False
        self._set(replace(status, weight=weight), publish=True)
        return True

    def apply_overrides(self, drained: frozenset[str], weights: Mapping[str, float]) -> None:
        """Adopt the operators' drains and weights (shared state) in one snapshot."""
        for status in list(self._statuses.values()):
            name = status.node.name
            weight = weights.get(name, 1.0)
            if (status.api_drained, status.weight) != (name in drained, weight):
                self._store(replace(status, api_drained=name in drained, weight=weight))
        self._publish_new()

    def reconfigure(self, config: RouterConfig) -> None:
        """Adopt a reloaded config and publish one snapshot; nodes that still exist with
        the same control URL keep their state, the others start unknown (an operator's
        drain is kept by name either way)."""
        old = self._statuses
        self._config = config
        self._statuses = {n.name: _carry_over(old.get(n.name), n) for n in config.nodes}
        for status in list(self._statuses.values()):
            self._store(status)
        self._publish_new()  # once: every snapshot is pickled to each DNS worker

    def _set_drained(self, name: str, drained: bool) -> bool:
        status = self._statuses.get(name)
        if status is None:
            return False
        self._set(replace(status, api_drained=drained), publish=False)
        return True

    def _set(self, status: NodeStatus, publish: bool) -> None:
        if self._store(status) or publish:
            self._publish_new()

    def _store(self, status: NodeStatus) -> bool:
        """Derive and store the node's state; True if the state (not just reason) changed."""
        state, reason = _derive(status, self._config.policy.saturation_threshold)
        name = status.node.name
        before = self._statuses.get(name)
        self._statuses[name] = replace(status, state=state, reason=reason)
        if before is None or (before.state, before.reason) != (state, reason):
            old = before.state if before is not None else "unknown"
            self._observe(Transition(name, status.node.region, old, state, reason))
        return before is not None and before.state != state

    def _publish_new(self) -> None:
        self.snapshot = self._rebuild()
        self._publish(self.snapshot)

    def _rebuild(self) -> FleetSnapshot:
        self._version += 1
        threshold = self._config.policy.saturation_threshold
        pools = {
            family: {
                region.name: _pool(self._members(region.name, family), threshold)
                for region in self._config.regions
            }
            for family in FAMILIES
        }
        return FleetSnapshot(self._version, pools)

    def _members(self, region: str, family: Family) -> list[NodeStatus]:
        # Shields never serve clients: not in a pool, so never answered nor counted in
        # a region's capacity.
        return [
            s
            for s in self._statuses.values()
            if s.node.region == region and s.node.role == "edge" and has_family(s.node, family)
        ]


def _reopened(s: NodeStatus, now: float) -> NodeStatus:
    """Clear a channel close once a report came over a new channel and a probe succeeded,
    both after the close, and the flap hold has passed."""
    closed = s.channel_closed_at
    if closed is None or now < s.channel_hold_until or not s.report_on_channel:
        return s
    if s.report_at is None or s.report_at <= closed:
        return s
    if not s.last_probe_ok or s.last_probe_at is None or s.last_probe_at <= closed:
        return s
    return replace(s, channel_closed_at=None)


def has_family(node: Node, family: Family) -> bool:
    return (node.ipv4 if family == 4 else node.ipv6) is not None


def _is_newer(seq: int, last: int) -> bool:
    return seq > last or (seq < last and seq <= RESTART_SEQ_MAX)


def _probe_health(health: ProbeHealth, streak: int, config: RouterConfig) -> ProbeHealth:
    if streak > 0 and (health == "unknown" or streak >= config.health.rise):
        return "up"
    if streak < 0 and -streak >= config.health.fall:
        return "down"
    return health


def _derive(s: NodeStatus, threshold: float) -> tuple[NodeState, str]:
    if s.api_drained:
        return "draining", "api_drain"
    if s.weight == 0:
        return "draining", "weight_zero"
    if s.probe_health == "down":
        return "down", "probe_failures"
    if s.report_expired:
        return "down", "report_expired"
    if s.channel_closed_at is not None:
        return "down", "channel_closed"
    if s.purge_hold:
        return "down", "purges_owed"
    if s.report is not None and s.report.status == "draining":
        return "draining", "edge_draining"
    if s.probe_health == "unknown" and s.report is None:
        return "unknown", "no_data"
    if s.utilization >= threshold:
        return "saturated", "utilization"
    return "up", "edge_degraded" if s.degraded else "healthy"


def _carry_over(old: NodeStatus | None, node: Node) -> NodeStatus:
    if old is None:
        return NodeStatus(node)
    if old.node.control_url != node.control_url:
        # Another process, perhaps another machine: its health is unknown. The drain is
        # the operator's intent about the node's name and stays.
        return NodeStatus(node, api_drained=old.api_drained, weight=old.weight)
    return replace(old, node=node)


def _candidate(s: NodeStatus, threshold: float) -> Candidate:
    load = s.utilization * s.node.capacity_rps  # what the node reports carrying
    capacity = s.node.capacity_rps * s.weight
    return Candidate(s.node, capacity, load, max(capacity * threshold - load, 0.0), s.report_at)


def _pool(members: list[NodeStatus], threshold: float) -> Pool:
    eligible = tuple(_candidate(s, threshold) for s in members if s.state == "up")
    saturated = tuple(_candidate(s, threshold) for s in members if s.state == "saturated")
    draining = any(s.state == "draining" for s in members)
    configured = tuple(s.node for s in members)
    undrained = tuple(s.node for s in members if not s.api_drained and s.weight > 0)
    down = tuple(s.node for s in members if s.state == "down")
    return Pool(eligible, saturated, draining, configured, undrained, down)
