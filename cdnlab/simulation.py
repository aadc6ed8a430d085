"""Seeded herding simulation: how evenly do selectors spread load when reports are stale?

Model (deterministic for a given seed):
* One region with nodes of different capacities (default 1000, 2000, 3000, 4000 rps).
* A steady stream of DNS answers (`queries_per_s`). Each answer is cached by a resolver for
  `ttl_s` and brings `rps_per_answer` requests per second to the FIRST node it names for
  that whole time; so a node's load is rps_per_answer x the answers naming it in the last TTL,
  plus an optional constant `background_rps` per node (clients this router did not send:
  other routers' answers, long-cached answers, direct traffic).
* Every `report_interval_s` each node measures its mean load over that interval and the
  report reaches the router `report_delay_s` later (so the router acts on load that is
  between report_delay_s and report_delay_s + interval old).
* The router is the real Fleet feeding one of the selectors below.
* After `warmup_s`, once a second we sample max(node utilisation) / mean utilisation (mean =
  total load / total capacity); the result keeps the peak and the average of that ratio.

Selectors compared: "ours" (georouter.selector.Selector), "least_loaded" (always the node
with the lowest reported utilisation), "round_robin", "static_weights" (random by capacity).
Run `python -m cdnlab.simulation` for a table.
"""

from __future__ import annotations

import itertools
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from pathlib import Path
from typing import Protocol

from cdn.config import HostPort
from cdn.report import LoadReport
from georouter.config import HealthSettings, Node, Policy, Region, RouterConfig, RouterSettings
from georouter.fleet import Candidate, Family, Fleet, FleetSnapshot
from georouter.selector import Decision, Selector

REGION = "sim"


@dataclass(frozen=True, slots=True)
class SimParams:
    capacities: tuple[float, ...] = (1000.0, 2000.0, 3000.0, 4000.0)
    queries_per_s: float = 200.0
    rps_per_answer: float = 1.25  # with the defaults: 5000 rps, half the total capacity
    background_rps: tuple[float, ...] = ()  # per node, in capacities' order; () = none
    ttl_s: int = 20
    report_interval_s: float = 1.0
    report_delay_s: float = 1.0
    step_s: float = 0.1
    duration_s: float = 300.0
    warmup_s: float = 60.0
    saturation_threshold: float = 0.85
    seed: int = 1


@dataclass(frozen=True, slots=True)
class SimResult:
    selector: str
    peak_ratio: float  # max over samples of max(utilisation) / mean utilisation
    mean_ratio: float  # average of that ratio over the samples
    peak_utilization: float  # highest single-node utilisation seen after warm-up


class Picker(Protocol):
    def update(self, snapshot: FleetSnapshot) -> None: ...
    def pick(self, region: str, family: Family, service: str = "") -> Decision: ...


class _Baseline:
    """Shared shell of the naive selectors: they see the same snapshots as ours."""

    def __init__(self, config: RouterConfig, rng: random.Random) -> None:
        self.rng = rng
        self.snapshot: FleetSnapshot | None = None

    def update(self, snapshot: FleetSnapshot) -> None:
        self.snapshot = snapshot

    def pick(self, region: str, family: Family, service: str = "") -> Decision:
        assert self.snapshot is not None
        eligible = self.snapshot.pool(region, family).eligible
        if not eligible:  # every node saturated: keep answering from the whole region
            eligible = self.snapshot.pool(region, family).saturated
        return Decision(region, (self.choose(eligible).node,), "geo")

    def choose(self, eligible: tuple[Candidate, ...]) -> Candidate:
        raise NotImplementedError


class LeastLoaded(_Baseline):
    def choose(self, eligible: tuple[Candidate, ...]) -> Candidate:
        return min(eligible, key=lambda c: c.load_rps / c.capacity_rps)


class RoundRobin(_Baseline):
    def __init__(self, config: RouterConfig, rng: random.Random) -> None:
        super().__init__(config, rng)
        self.turn = itertools.count()

    def choose(self, eligible: tuple[Candidate, ...]) -> Candidate:
        return eligible[next(self.turn) % len(eligible)]


class StaticWeights(_Baseline):
    def choose(self, eligible: tuple[Candidate, ...]) -> Candidate:
        return self.rng.choices(eligible, weights=[c.capacity_rps for c in eligible])[0]


def _ours(config: RouterConfig, rng: random.Random) -> Picker:
    return Selector(config.policy, config.regions, rng)


SELECTORS: dict[str, Callable[[RouterConfig, random.Random], Picker]] = {
    "ours": _ours,
    "least_loaded": LeastLoaded,
    "round_robin": RoundRobin,
    "static_weights": StaticWeights,
}


def sim_config(params: SimParams) -> RouterConfig:
    nodes = tuple(
        Node(f"node-{i}", REGION, cap, f"http://{host}:9080", IPv4Address(host))
        for i, cap in enumerate(params.capacities)
        for host in [f"127.0.0.{10 + i}"]
    )
    policy = Policy(
        default_region=REGION,
        answer_ttl=params.ttl_s,
        answers_per_response=1,
        saturation_threshold=params.saturation_threshold,
    )
    # Reports never expire here: the delay under study may exceed the default expiry.
    health = HealthSettings(report_expiry_s=1e9)
    return make_config((Region(REGION, 0.0, 0.0),), nodes, policy, health)


def make_config(
    regions: tuple[Region, ...],
    nodes: tuple[Node, ...],
    policy: Policy,
    health: HealthSettings | None = None,
) -> RouterConfig:
    """A RouterConfig without zones, for tests of the control plane alone."""
    health = health or HealthSettings()
    settings = RouterSettings((HostPort("127.0.0.1", 0),), HostPort("127.0.0.1", 0), "test-token")
    by_name = {r.name: r for r in regions}
    return RouterConfig(
        Path("test.toml"), settings, policy, health, (), regions, nodes, regions_by_name=by_name
    )


@dataclass(slots=True)
class _NodeLoad:
    """Answers naming one node, per simulation step, over the last TTL."""

    slots: list[int]
    background: float = 0.0
    active: int = 0
    window_load: float = 0.0  # load summed over the steps of the current report interval
    seq: int = 0


@dataclass(slots=True)
class _Run:
    params: SimParams
    fleet: Fleet
    picker: Picker
    loads: list[_NodeLoad]
    index: dict[str, int]  # node name → position in loads
    in_flight: deque[tuple[float, LoadReport]] = field(default_factory=deque)
    ratios: list[float] = field(default_factory=list)
    peak_utilization: float = 0.0


def simulate(selector: str, params: SimParams = SimParams()) -> SimResult:
    """Run one selector through the model above and summarise how even the load stayed."""
    config = sim_config(params)
    picker = SELECTORS[selector](config, random.Random(params.seed))
    fleet = Fleet(config, picker.update)
    for node in config.nodes:
        fleet.apply_probe(node.name, True, 0.0)
    ring = round(params.ttl_s / params.step_s)
    background = params.background_rps or (0.0,) * len(config.nodes)
    loads = [_NodeLoad([0] * ring, extra) for extra in background]
    run = _Run(params, fleet, picker, loads, {n.name: i for i, n in enumerate(config.nodes)})
    steps_per_report = round(params.report_interval_s / params.step_s)
    steps_per_sample = round(1.0 / params.step_s)
    owed = 0.0
    for step in range(round(params.duration_s / params.step_s)):
        now = step * params.step_s
        _deliver(run, now)
        owed += params.queries_per_s * params.step_s
        answers, owed = int(owed), owed - int(owed)
        _answer(run, step % ring, answers)
        _measure(run)
        if (step + 1) % steps_per_report == 0:
            _report(run, config, now, steps_per_report)
        if now >= params.warmup_s and step % steps_per_sample == 0:
            _sample(run, config)
    ratios = run.ratios
    return SimResult(selector, max(ratios), sum(ratios) / len(ratios), run.peak_utilization)


def _deliver(run: _Run, now: float) -> None:
    while run.in_flight and run.in_flight[0][0] <= now + 1e-9:
        run.fleet.apply_report(run.in_flight.popleft()[1], now)


def _answer(run: _Run, slot: int, answers: int) -> None:
    for load in run.loads:  # answers given one TTL ago leave the resolvers' caches
        load.active -= load.slots[slot]
        load.slots[slot] = 0
    for _ in range(answers):
        load = run.loads[run.index[run.picker.pick(REGION, 4).nodes[0].name]]
        load.slots[slot] += 1
        load.active += 1


def _measure(run: _Run) -> None:
    for load in run.loads:
        load.window_load += load.active * run.params.rps_per_answer + load.background


def _report(run: _Run, config: RouterConfig, now: float, steps: int) -> None:
    for node, load in zip(config.nodes, run.loads, strict=True):
        load.seq += 1
        rps = load.window_load / steps
        load.window_load = 0.0
        report = LoadReport(
            node.name, load.seq, "up", 0, rps, node.capacity_rps, rps / node.capacity_rps, 0.0
        )
        run.in_flight.append((now + run.params.report_delay_s, report))


def _sample(run: _Run, config: RouterConfig) -> None:
    rps = [load.active * run.params.rps_per_answer + load.background for load in run.loads]
    capacities = [node.capacity_rps for node in config.nodes]
    utilizations = [r / c for r, c in zip(rps, capacities, strict=True)]
    mean = sum(rps) / sum(capacities)
    run.ratios.append(max(utilizations) / mean)
    run.peak_utilization = max(run.peak_utilization, *utilizations)


SCENARIOS = {
    "steady": SimParams(),
    # 1500 rps that this router did not send lands on the 3000-rps node.
    "background": SimParams(background_rps=(0.0, 0.0, 1500.0, 0.0)),
}


def main() -> None:
    header = ("scenario", "selector", "delay s", "peak max/mean", "avg max/mean", "peak util")
    print("{:<12}{:<16}{:>8}{:>15}{:>14}{:>11}".format(*header))
    for scenario, base in SCENARIOS.items():
        for delay in (0.5, 1.0, 3.0):
            for name in SELECTORS:
                r = simulate(name, replace(base, report_delay_s=delay))
                print(
                    f"{scenario:<12}{name:<16}{delay:>8.1f}{r.peak_ratio:>15.3f}"
                    f"{r.mean_ratio:>14.3f}{r.peak_utilization:>11.3f}"
                )


if __name__ == "__main__":
    main()
