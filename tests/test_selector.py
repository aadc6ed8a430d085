"""Selector: in-region preference, spill and failover order, fail-open/closed, no herding."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdn.report import LoadReport
from cdnlab.simulation import SCENARIOS, SimParams, make_config, simulate
from georouter.config import AllDownPolicy, Node, Policy, Region, RouterConfig
from georouter.fleet import Fleet
from georouter.selector import Selector

REGIONS = (
    Region("na", 39.8, -98.6, failover=("eu", "ap")),
    Region("eu", 50.1, 8.7, failover=("na", "ap")),
    Region("ap", 1.35, 103.8, failover=("eu", "na")),
)


def _node(name: str, region: str, host: int, capacity: float, v6: bool = True) -> Node:
    ipv6 = IPv6Address(f"::ffff:127.0.0.{host}") if v6 else None
    url = f"http://127.0.0.{host}:9080"
    return Node(name, region, capacity, url, IPv4Address(f"127.0.0.{host}"), ipv6)


NODES = (
    _node("na-1", "na", 11, 2000),
    _node("na-2", "na", 12, 1000, v6=False),
    _node("na-3", "na", 17, 500),
    _node("eu-1", "eu", 13, 2000),
    _node("eu-2", "eu", 14, 1000),
    _node("ap-1", "ap", 15, 2000),
    _node("ap-2", "ap", 16, 1000),
)


def _v4_only(nodes: tuple[Node, ...], region: str) -> tuple[Node, ...]:
    return tuple(replace(n, ipv6=None) if n.region == region else n for n in nodes)


def config(all_down: AllDownPolicy = "fail-open", answers: int = 2) -> RouterConfig:
    return make_config(
        REGIONS, NODES, Policy("na", answers_per_response=answers, all_down=all_down)
    )


def setup(cfg: RouterConfig | None = None, seed: int = 7) -> tuple[Fleet, Selector]:
    cfg = cfg or config()
    selector = Selector(cfg.policy, cfg.regions, random.Random(seed))
    return Fleet(cfg, selector.update), selector


def up(fleet: Fleet, *names: str) -> None:
    for name in names or [n.name for n in NODES]:
        fleet.apply_probe(name, True, 0.0)


def load(fleet: Fleet, name: str, utilization: float, seq: int = 1, now: float = 0.0) -> None:
    fleet.apply_report(LoadReport(name, seq, "up", 0, 0.0, 0.0, utilization, 0.0), now)


def test_geo_answers_from_own_region_best_first() -> None:
    fleet, selector = setup()
    up(fleet)
    decision = selector.pick("eu", 4)
    assert decision.region == "eu" and decision.reason == "geo"
    assert {n.name for n in decision.nodes} == {"eu-1", "eu-2"}


def test_answer_count_is_policy_answers_per_response() -> None:
    fleet, selector = setup(config(answers=1))
    up(fleet)
    assert len(selector.pick("na", 4).nodes) == 1


def test_first_answer_spreads_by_spare_capacity() -> None:
    fleet, selector = setup()
    up(fleet)
    load(fleet, "eu-1", 0.25)  # 2000 rps: headroom 2000 * 0.85 - 500 = 1200
    load(fleet, "eu-2", 0.25)  # 1000 rps: headroom 600
    first = Counter(selector.pick("eu", 4).nodes[0].name for _ in range(3000))
    # Answers since the report shrink both weights alike, so the 2:1 ratio holds.
    assert first["eu-1"] / first["eu-2"] == pytest.approx(2.0, rel=0.15)


def test_answers_since_report_count_against_a_node() -> None:
    fleet, selector = setup()
    up(fleet)
    # Equal headroom: eu-1 2000 * 0.85 - 1100 = 600, eu-2 1000 * 0.85 - 250 = 600.
    load(fleet, "eu-1", 0.55, seq=1, now=0.0)
    load(fleet, "eu-2", 0.25, seq=1, now=0.0)
    fleet.drain("eu-2")
    for _ in range(100):
        selector.pick("eu", 4)
    # 100 answers explain eu-1's 1100 rps: 11 rps each, learnt from this report.
    load(fleet, "eu-1", 0.55, seq=2, now=1.0)
    for _ in range(50):  # 550 rps on their way to eu-1 that no report shows yet
        selector.pick("eu", 4)
    assert selector.answers_since_report("eu-1") == 50
    fleet.undrain("eu-2")
    first = Counter(selector.pick("eu", 4).nodes[0].name for _ in range(200))
    assert first["eu-2"] > 0.8 * 200  # without the model: an even split


def test_family_6_skips_nodes_without_ipv6() -> None:
    fleet, selector = setup()
    up(fleet)
    for _ in range(50):
        decision = selector.pick("na", 6)
        assert all(n.ipv6 is not None for n in decision.nodes)
        assert "na-2" not in {n.name for n in decision.nodes}


def test_drained_reason_when_a_draining_node_is_skipped() -> None:
    fleet, selector = setup()
    up(fleet)
    fleet.drain("eu-2")
    decision = selector.pick("eu", 4)
    assert (decision.reason, [n.name for n in decision.nodes]) == ("drained", ["eu-1"])


def test_spillover_when_own_region_is_saturated() -> None:
    fleet, selector = setup()
    up(fleet)
    load(fleet, "eu-1", 0.9)
    load(fleet, "eu-2", 0.85)
    decision = selector.pick("eu", 4)
    assert decision.region in ("na", "ap") and decision.reason == "spillover"


def test_failover_when_own_region_is_down() -> None:
    fleet, selector = setup()
    up(fleet, "ap-1", "na-1")
    decisions = [selector.pick("eu", 4) for _ in range(20)]
    assert {d.reason for d in decisions} == {"failover"}
    assert {d.nodes for d in decisions} == {(NODES[0],)}  # na-1: eu's next-nearest region


def test_spillover_skips_a_full_neighbour() -> None:
    # The issue: "spill to the next-nearest regions (in proportion to their headroom)".
    fleet, selector = setup(config(answers=1))
    up(fleet, "eu-1", "eu-2", "na-1", "ap-1")
    load(fleet, "eu-1", 0.9)
    load(fleet, "eu-2", 0.9)
    load(fleet, "na-1", 0.845)  # 2000 * 0.85 - 1690 = 10 rps of headroom (floor: 20)
    load(fleet, "ap-1", 0.05)  # 2000 * 0.85 - 100 = 1600
    regions = Counter(selector.pick("eu", 4).region for _ in range(1000))
    assert set(regions) <= {"na", "ap"}
    # na's 10 rps of headroom is under the 20 rps floor (1 % of capacity): na is full.
    assert regions["ap"] > 0.95 * 1000


def test_spill_fills_the_nearest_region_first_then_the_next() -> None:
    # Water-filling: eu's failover order is na, ap. na takes every spilled client while its
    # headroom lasts; once the answers sent there use it up, ap takes the rest.
    fleet, selector = setup(config(answers=1))
    up(fleet, "na-1", "ap-1")  # eu is down
    load(fleet, "na-1", 0.35, seq=1, now=0.0)  # 2000 * 0.85 - 700 = 1000 rps of headroom
    load(fleet, "ap-1", 0.35, seq=1, now=0.0)
    assert Counter(selector.pick("eu", 4).region for _ in range(100)) == {"na": 100}
    load(fleet, "na-1", 0.35, seq=2, now=1.0)  # those 100 answers explain 700 rps: 7 each
    regions = Counter(selector.pick("eu", 4).region for _ in range(200))
    # (1000 - 20 floor) / 7 rps per answer: na is full after 140 more answers.
    assert regions == {"na": 140, "ap": 60}


def test_spillover_counts_answers_already_spilled() -> None:
    fleet, selector = setup(config(answers=1))
    up(fleet, "eu-1", "na-1", "ap-1")
    load(fleet, "eu-1", 0.9)
    load(fleet, "na-1", 0.35, seq=1, now=0.0)  # 1000 rps headroom each
    load(fleet, "ap-1", 0.35, seq=1, now=0.0)
    for _ in range(100):  # 100 answers explain ap-1's 700 rps: 7 rps each
        fleet.drain("na-1")
        selector.pick("eu", 4)
        fleet.undrain("na-1")
    load(fleet, "ap-1", 0.35, seq=2, now=1.0)
    fleet.drain("na-1")
    for _ in range(130):  # 910 rps on their way to ap-1: its weight falls to the floor
        selector.pick("eu", 4)
    fleet.undrain("na-1")
    regions = Counter(selector.pick("eu", 4).region for _ in range(100))
    assert regions["na"] > 80


# (region's nodes: family 4 up, family 6 configured) → AAAA answer (region, reason, empty?)
AAAA_TABLE = [
    ("eu v4 up, no v6 configured", {"eu": (True, False)}, ("eu", "geo", True)),
    ("eu v4 up, v6 configured", {"eu": (True, True)}, ("eu", "geo", False)),
    ("eu down, no v6 configured", {"eu": (False, False)}, ("na", "failover", False)),
    ("eu down, v6 configured", {"eu": (False, True)}, ("na", "failover", False)),
]


@pytest.mark.parametrize(("what", "eu", "expected"), AAAA_TABLE, ids=[t[0] for t in AAAA_TABLE])
def test_aaaa_for_an_ipv4_only_region_is_nodata_not_failover_rfc8305(
    what: str, eu: dict[str, tuple[bool, bool]], expected: tuple[str, str, bool]
) -> None:
    is_up, has_v6 = eu["eu"]
    nodes = tuple(n for n in NODES if n.region != "ap")
    cfg = make_config(
        REGIONS[:2], nodes if has_v6 else _v4_only(nodes, "eu"), Policy("na", all_down="servfail")
    )
    fleet, selector = setup(cfg)
    up(fleet, "na-1", *(("eu-1", "eu-2") if is_up else ()))
    decision = selector.pick("eu", 6)
    assert (decision.region, decision.reason, not decision.nodes) == expected
    assert selector.pick("eu", 4).region == ("eu" if is_up else "na")


def test_ipv6_only_region_answers_a_with_nodata_and_aaaa_with_its_nodes() -> None:
    v6_only = tuple(
        replace(n, ipv4=None, ipv6=IPv6Address(f"::1:{i}")) if n.region == "ap" else n
        for i, n in enumerate(NODES)
    )
    fleet, selector = setup(make_config(REGIONS, v6_only, Policy("na")))
    up(fleet)
    assert (selector.pick("ap", 4).nodes, selector.pick("ap", 4).reason) == ((), "geo")
    assert {n.name for n in selector.pick("ap", 6).nodes} == {"ap-1", "ap-2"}


def test_everything_saturated_keeps_serving_saturated_nodes_not_dead_ones() -> None:
    fleet, selector = setup()
    up(fleet, "eu-1", "ap-1")
    load(fleet, "eu-1", 0.95)
    load(fleet, "ap-1", 0.95)
    decision = selector.pick("na", 4)
    assert (decision.region, decision.reason, [n.name for n in decision.nodes]) == (
        "eu",
        "spillover",
        ["eu-1"],
    )


def test_all_down_fail_open_answers_configured_nodes() -> None:
    _, selector = setup()
    decision = selector.pick("eu", 4)
    assert decision.reason == "fail_open"
    assert [n.name for n in decision.nodes] == ["eu-1", "eu-2"]


def test_fail_open_leaves_out_operator_drained_nodes() -> None:
    fleet, selector = setup()
    fleet.drain("eu-1")
    decision = selector.pick("eu", 4)
    assert (decision.reason, [n.name for n in decision.nodes]) == ("fail_open", ["eu-2"])
    fleet.drain("eu-2")  # the nearest region with an undrained node, not drained ones
    decision = selector.pick("eu", 4)
    assert (decision.region, decision.reason) == ("na", "fail_open")
    for name in NAMES:
        fleet.drain(name)
    decision = selector.pick("eu", 4)  # everything drained: the own region's nodes
    assert [n.name for n in decision.nodes] == ["eu-1", "eu-2"]


def test_all_down_servfail_policy_fails_closed() -> None:
    _, selector = setup(config(all_down="servfail"))
    decision = selector.pick("eu", 4)
    assert (decision.reason, decision.nodes) == ("fail_closed", ())


def test_family_without_any_addresses_is_an_empty_answer_not_a_failure() -> None:
    nodes = tuple(n for n in NODES if n.region == "eu")
    cfg = make_config(
        REGIONS,
        tuple(Node(n.name, n.region, n.capacity_rps, n.control_url, n.ipv4) for n in nodes),
        Policy("na", all_down="servfail"),
    )
    fleet, selector = setup(cfg)
    up(fleet, "eu-1", "eu-2")
    decision = selector.pick("eu", 6)
    assert (decision.nodes, decision.reason) == ((), "geo")


def test_reconfigure_changes_answer_count() -> None:
    fleet, selector = setup()
    up(fleet)
    cfg = config(answers=1)
    selector.reconfigure(cfg.policy, cfg.regions)
    assert len(selector.pick("eu", 4).nodes) == 1


NAMES = [n.name for n in NODES]
STATES = st.sampled_from(["unknown", "up", "down", "draining", "saturated"])


def _apply(fleet: Fleet, name: str, state: str) -> None:
    if state in ("up", "saturated"):
        fleet.apply_probe(name, True, 0.0)
        load(fleet, name, 0.95 if state == "saturated" else 0.3)
    elif state == "down":
        fleet.apply_probe(name, False, 0.0)
        fleet.apply_probe(name, False, 1.0)
    elif state == "draining":
        fleet.apply_probe(name, True, 0.0)
        fleet.drain(name)


@settings(max_examples=400, deadline=None)
@given(
    states=st.fixed_dictionaries({n: STATES for n in NAMES}),
    region=st.sampled_from(["na", "eu", "ap"]),
    family=st.sampled_from([4, 6]),
    answers=st.integers(1, 4),
    seed=st.integers(0, 2**32),
    ap_v6=st.booleans(),
)
def test_selection_properties(
    states: dict[str, str], region: str, family: int, answers: int, seed: int, ap_v6: bool
) -> None:
    nodes = NODES if ap_v6 else _v4_only(NODES, "ap")
    cfg = make_config(REGIONS, nodes, Policy("na", answers_per_response=answers))
    fleet, selector = setup(cfg, seed)
    for name, state in states.items():
        _apply(fleet, name, state)
    decision = selector.pick(region, family)  # type: ignore[arg-type]
    names = [n.name for n in decision.nodes]
    by_name = {n.name: n for n in nodes}
    has = {n: (by_name[n].ipv4 if family == 4 else by_name[n].ipv6) is not None for n in NAMES}
    eligible = {n for n in NAMES if states[n] == "up" and has[n]}
    own_configured = any(has[n] for n in NAMES if by_name[n].region == region)
    own_up = any(states[n] == "up" for n in NAMES if by_name[n].region == region)
    if not own_configured and own_up:  # RFC 8305: no far AAAA for a near IPv4-only region
        assert (decision.region, decision.nodes, decision.reason) == (region, (), "geo")
        return
    assert len(names) == len(set(names)), "no duplicates"
    assert 1 <= len(names) <= answers
    assert all(has[n] for n in names), "every node has the asked family"
    assert {by_name[n].region for n in names} == {decision.region}
    if eligible:
        assert all(states[n] == "up" for n in names), "never a down/draining/saturated node"
        own = {n for n in eligible if by_name[n].region == region}
        if own:
            assert decision.region == region, "in-region preference"
            assert len(names) == min(answers, len(own))
        else:
            assert decision.region != region, "spill to a region with an eligible node"
            assert decision.reason in ("spillover", "failover")
    elif any(states[n] == "saturated" and has[n] for n in NAMES):
        assert decision.reason == "spillover"
        assert all(states[n] == "saturated" for n in names)
    else:
        order = (region, *next(r.failover for r in REGIONS if r.name == region))
        drained = {n for n in NAMES if states[n] == "draining"}
        configured = [r for r in order if any(has[n] and by_name[n].region == r for n in NAMES)]
        undrained = [
            r
            for r in configured
            if any(has[n] and by_name[n].region == r and n not in drained for n in NAMES)
        ]
        assert decision.reason == "fail_open"
        assert decision.region == (undrained or configured)[0], "the nearest configured region"
        assert not undrained or not drained & set(names), "drained nodes only as a last resort"


def test_herding_simulation_ours_stays_balanced_and_least_loaded_herds() -> None:
    # cdnlab/simulation.py: 4 nodes (1000..4000 rps), reports measured over 1 s and 1 s late,
    # 200 answers/s each bringing 1.25 rps for the 20 s TTL, 5 simulated minutes.
    params = SimParams(report_delay_s=1.0)
    ours = simulate("ours", params)
    naive = simulate("least_loaded", params)
    assert ours.peak_ratio <= 1.2
    assert naive.peak_ratio > 1.2
    assert ours.peak_utilization < params.saturation_threshold


def test_simulation_ours_adapts_to_load_it_did_not_send() -> None:
    # 1500 rps of background load on the 3000-rps node: capacity weights ignore it.
    params = SCENARIOS["background"]
    assert simulate("ours", params).peak_ratio <= 1.2
    assert simulate("static_weights", params).peak_ratio > 1.2


def test_region_without_nodes_is_served_by_its_nearest_region() -> None:
    # A region declared before its edges are deployed: clients there get the first region
    # of its failover order, and when nothing is up, that region's nodes (fail-open).
    sa = Region("sa", -23.5, -46.6, failover=("na", "eu", "ap"))
    cfg = make_config((*REGIONS, sa), NODES, Policy("na", answers_per_response=1))
    selector = Selector(cfg.policy, cfg.regions, random.Random(7))
    fleet = Fleet(cfg, selector.update)
    down = selector.pick("sa", 4)
    assert (down.region, down.reason) == ("na", "fail_open") and down.nodes
    up(fleet)
    decisions = {(d.region, d.reason) for d in (selector.pick("sa", 4) for _ in range(20))}
    assert decisions == {("na", "failover")}


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rounds=st.lists(
        st.tuples(st.floats(0.0, 0.84), st.floats(0.0, 0.84), st.integers(0, 40)),
        min_size=1,
        max_size=4,
    ),
    answers=st.sampled_from([1, 2]),
)
def test_a_routed_draw_is_the_general_draw(
    seed: int, rounds: list[tuple[float, float, int]], answers: int
) -> None:
    # Reports and picks interleaved, so the counts since each report and the live
    # (decaying) counts vary; at every pick the routed draw must choose what `_draw`
    # chooses from the same random state and counts, and count it the same way.
    fleet, selector = setup(config(answers=answers), seed)
    up(fleet)
    for seq, (eu1, eu2, picks) in enumerate(rounds, start=1):
        load(fleet, "eu-1", eu1, seq, float(seq))
        load(fleet, "eu-2", eu2, seq, float(seq))
        for _ in range(picks + 1):
            route = selector.route("eu", 4)
            assert route is not None and route.generation == selector.generation
            state = selector._rng.getstate()
            before = {n: selector.answers_since_report(n) for n in ("eu-1", "eu-2")}
            decision = selector.pick("eu", 4)
            after = {n: selector.answers_since_report(n) for n in ("eu-1", "eu-2")}
            selector._rng.setstate(state)
            for name, count in before.items():
                selector._loads[name].since = count
            assert decision.nodes == selector._draw(route.candidates)
            assert after == {n: selector.answers_since_report(n) for n in ("eu-1", "eu-2")}
            assert (decision.region, decision.reason, decision.ttl) == ("eu", "geo", 20)
            assert len(decision.nodes) == answers


def test_a_route_lasts_one_snapshot_and_covers_small_own_pools_only() -> None:
    fleet, selector = setup()
    up(fleet)
    route = selector.route("eu", 4)
    assert route is not None and selector.route("eu", 4) is route  # derived once
    assert [n.name for n in route.decisions[1].nodes] == ["eu-2", "eu-1"]
    assert selector.route("na", 4) is None  # three eligible nodes: `pick` draws
    assert selector.route("na", 6) is not None  # na-2 has no IPv6 address
    generation = selector.generation
    fleet.apply_probe("eu-1", False, 1.0)
    fleet.apply_probe("eu-1", False, 2.0)
    assert selector.generation > generation  # a new snapshot: routes derived again
    fresh = selector.route("eu", 4)
    assert fresh is not None and [d.nodes for d in fresh.decisions] == [(NODES[4],)]
    assert fresh.decisions[0].ttl == 5  # degraded region: the short TTL
    fleet.apply_probe("eu-2", False, 1.0)
    fleet.apply_probe("eu-2", False, 2.0)
    assert selector.route("eu", 4) is None  # no eligible node left: failover is `pick`'s
    assert selector.pick("eu", 4).reason == "failover"
