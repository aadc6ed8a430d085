"""Fleet state machine: probes with hysteresis, report expiry, draining, saturation, seq."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace
from ipaddress import IPv4Address, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdn.report import EdgeStatus, LoadReport
from cdnlab.simulation import make_config
from georouter.config import HealthSettings, Node, Policy, Region
from georouter.fleet import Fleet, FleetSnapshot, Transition

EU1 = Node(
    "edge-eu-1",
    "eu",
    2000.0,
    "http://127.0.0.13:9080",
    IPv4Address("127.0.0.13"),
    IPv6Address("::1"),
)
EU2 = Node("edge-eu-2", "eu", 1000.0, "http://127.0.0.14:9080", IPv4Address("127.0.0.14"))
NA1 = Node("edge-na-1", "na", 2000.0, "http://127.0.0.11:9080", IPv4Address("127.0.0.11"))
REGIONS = (Region("eu", 50.1, 8.7, failover=("na",)), Region("na", 39.8, -98.6, failover=("eu",)))
CONFIG = make_config(REGIONS, (EU1, EU2, NA1), Policy("na"), HealthSettings(fall=2, rise=2))


def report(
    node: str = "edge-eu-1", seq: int = 1, status: EdgeStatus = "up", utilization: float = 0.2
) -> LoadReport:
    return LoadReport(node, seq, status, 3, 400.0, 2000.0, utilization, 0.9)


class Recorder:
    def __init__(self) -> None:
        self.snapshots: list[FleetSnapshot] = []
        self.transitions: list[Transition] = []

    def fleet(self) -> Fleet:
        return Fleet(CONFIG, self.snapshots.append, self.transitions.append)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


def eligible(fleet: Fleet, region: str = "eu", family: int = 4) -> set[str]:
    return {c.node.name for c in fleet.snapshot.pools[family][region].eligible}  # type: ignore[index]


def test_nodes_start_unknown_and_ineligible(rec: Recorder) -> None:
    fleet = rec.fleet()
    assert {s.state for s in fleet.statuses.values()} == {"unknown"}
    assert eligible(fleet) == set()
    assert rec.snapshots == [fleet.snapshot]


def test_one_probe_success_brings_an_unknown_node_up(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.1)
    assert fleet.statuses["edge-eu-1"].state == "up"
    assert eligible(fleet) == {"edge-eu-1"}


# (probe results after the node is up, expected state after each)
FALL_RISE_TABLE = [
    ([False], ["up"]),
    ([False, False], ["up", "down"]),
    ([False, True, False], ["up", "up", "up"]),  # failures must be consecutive
    ([False, False, True], ["up", "down", "down"]),
    ([False, False, True, True], ["up", "down", "down", "up"]),
    ([False, False, True, False, True, True], ["up", "down", "down", "down", "down", "up"]),
]


@pytest.mark.parametrize(("probes", "states"), FALL_RISE_TABLE)
def test_probe_fall_and_rise_hysteresis(
    rec: Recorder, probes: list[bool], states: list[str]
) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    seen = []
    for i, ok in enumerate(probes):
        fleet.apply_probe("edge-eu-1", ok, 1.0 + i)
        seen.append(fleet.statuses["edge-eu-1"].state)
    assert seen == states


def test_fall_failures_from_unknown_mark_down(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", False, 0.0)
    assert fleet.statuses["edge-eu-1"].state == "unknown"
    fleet.apply_probe("edge-eu-1", False, 1.0)
    status = fleet.statuses["edge-eu-1"]
    assert (status.state, status.reason) == ("down", "probe_failures")


def test_a_report_alone_makes_a_node_usable(rec: Recorder) -> None:
    fleet = rec.fleet()
    assert fleet.apply_report(report(), 0.0) == "accepted"
    assert fleet.statuses["edge-eu-1"].state == "up"


def test_reports_do_not_override_probe_failures(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", False, 0.0)
    fleet.apply_probe("edge-eu-1", False, 1.0)
    fleet.apply_report(report(), 1.5)
    assert fleet.statuses["edge-eu-1"].state == "down"


def test_report_expiry_marks_down_and_a_fresh_report_recovers(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    fleet.apply_report(report(seq=1), 0.0)
    fleet.tick(2.5)  # expiry is 2.5 s: not yet
    assert fleet.statuses["edge-eu-1"].state == "up"
    fleet.tick(2.6)
    status = fleet.statuses["edge-eu-1"]
    assert (status.state, status.reason) == ("down", "report_expired")
    assert eligible(fleet) == set()
    fleet.apply_report(report(seq=2), 3.0)
    assert fleet.statuses["edge-eu-1"].state == "up"


def test_a_node_that_never_reported_does_not_expire(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-2", True, 0.0)
    fleet.tick(1000.0)
    assert fleet.statuses["edge-eu-2"].state == "up"


def test_edge_draining_report_takes_effect_at_once(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    fleet.apply_probe("edge-eu-2", True, 0.0)
    fleet.apply_report(report(seq=1, status="draining"), 0.5)
    status = fleet.statuses["edge-eu-1"]
    assert (status.state, status.reason) == ("draining", "edge_draining")
    pool = fleet.snapshot.pool("eu", 4)
    assert [c.node.name for c in pool.eligible] == ["edge-eu-2"]
    assert pool.draining


def test_api_drain_and_undrain(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    assert fleet.drain("edge-eu-1")
    assert fleet.statuses["edge-eu-1"].state == "draining"
    assert eligible(fleet) == set()
    assert fleet.undrain("edge-eu-1")
    assert fleet.statuses["edge-eu-1"].state == "up"
    assert not fleet.drain("edge-nowhere")


def test_api_drain_wins_over_down(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.drain("edge-eu-1")
    fleet.apply_probe("edge-eu-1", False, 0.0)
    fleet.apply_probe("edge-eu-1", False, 1.0)
    assert fleet.statuses["edge-eu-1"].state == "draining"


@pytest.mark.parametrize(
    ("utilization", "state"), [(0.0, "up"), (0.84, "up"), (0.85, "saturated"), (1.3, "saturated")]
)
def test_saturation_threshold(rec: Recorder, utilization: float, state: str) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    fleet.apply_report(report(utilization=utilization), 0.0)
    assert fleet.statuses["edge-eu-1"].state == state
    pool = fleet.snapshot.pool("eu", 4)
    assert bool(pool.eligible) == (state == "up")
    assert bool(pool.saturated) == (state == "saturated")


def test_headroom_is_capacity_up_to_the_threshold(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_report(report(utilization=0.25), 0.0)
    (candidate,) = fleet.snapshot.pool("eu", 4).eligible
    assert candidate.load_rps == pytest.approx(500.0)
    assert candidate.headroom_rps == pytest.approx(2000 * 0.85 - 500)
    assert candidate.reported_at == 0.0


def test_degraded_edge_stays_eligible_and_is_noted(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_report(report(status="degraded"), 0.0)
    status = fleet.statuses["edge-eu-1"]
    assert (status.state, status.reason, status.degraded) == ("up", "edge_degraded", True)
    assert eligible(fleet) == {"edge-eu-1"}
    assert rec.transitions[-1] == Transition("edge-eu-1", "eu", "unknown", "up", "edge_degraded")


@pytest.mark.parametrize(
    ("first", "second", "result"),
    [
        (5, 5, "stale"),  # duplicate
        (50, 49, "stale"),  # overtaken by a newer report
        (5, 6, "accepted"),
        (100, 1, "accepted"),  # reset to a small seq: the edge restarted
        (100, 4, "accepted"),
        (100, 5, "stale"),
        (3, 1, "accepted"),  # restart early in the previous process's life
        (1, 1, "stale"),
    ],
)
def test_report_sequence(rec: Recorder, first: int, second: int, result: str) -> None:
    fleet = rec.fleet()
    assert fleet.apply_report(report(seq=first, utilization=0.1), 0.0) == "accepted"
    assert fleet.apply_report(report(seq=second, utilization=0.5), 1.0) == result
    expected = 0.5 if result == "accepted" else 0.1
    assert fleet.statuses["edge-eu-1"].utilization == expected


def test_unknown_node_report_is_rejected(rec: Recorder) -> None:
    fleet = rec.fleet()
    before = fleet.snapshot
    assert fleet.apply_report(report(node="edge-mars-1"), 0.0) == "unknown_node"
    assert fleet.snapshot is before


def test_every_change_publishes_a_newer_immutable_snapshot(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    fleet.apply_report(report(seq=1), 0.1)
    fleet.apply_report(report(seq=2, utilization=0.3), 1.1)
    versions = [s.version for s in rec.snapshots]
    assert versions == sorted(set(versions)) and len(versions) == 4
    assert rec.snapshots[-1] is fleet.snapshot
    with pytest.raises(FrozenInstanceError):
        fleet.snapshot.version = 0  # type: ignore[misc]


def test_probe_success_without_state_change_publishes_nothing(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    count = len(rec.snapshots)
    fleet.apply_probe("edge-eu-1", True, 1.0)
    assert len(rec.snapshots) == count
    assert fleet.statuses["edge-eu-1"].last_probe_at == 1.0


def test_transitions_are_observed_once_per_change(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-na-1", True, 0.0)
    fleet.apply_probe("edge-na-1", True, 1.0)
    fleet.apply_probe("edge-na-1", False, 2.0)
    fleet.apply_probe("edge-na-1", False, 3.0)
    assert rec.transitions == [
        Transition("edge-na-1", "na", "unknown", "up", "healthy"),
        Transition("edge-na-1", "na", "up", "down", "probe_failures"),
    ]


def test_families_have_separate_pools(rec: Recorder) -> None:
    fleet = rec.fleet()
    for node in ("edge-eu-1", "edge-eu-2"):
        fleet.apply_probe(node, True, 0.0)
    assert eligible(fleet, family=4) == {"edge-eu-1", "edge-eu-2"}
    assert eligible(fleet, family=6) == {"edge-eu-1"}
    assert fleet.snapshot.pool("na", 6).configured == ()


def test_reconfigure_keeps_state_of_nodes_that_still_exist(rec: Recorder) -> None:
    fleet = rec.fleet()
    for node in ("edge-eu-1", "edge-eu-2", "edge-na-1"):
        fleet.apply_probe(node, True, 0.0)
    fleet.apply_report(report(seq=7), 0.0)
    moved = replace(EU2, control_url="http://127.0.0.20:9080")
    new_node = Node("edge-na-2", "na", 1000.0, "http://127.0.0.12:9080", IPv4Address("127.0.0.12"))
    fleet.reconfigure(make_config(REGIONS, (EU1, moved, new_node), Policy("na")))
    states = {name: s.state for name, s in fleet.statuses.items()}
    assert states == {"edge-eu-1": "up", "edge-eu-2": "unknown", "edge-na-2": "unknown"}
    assert fleet.apply_report(report(seq=7), 1.0) == "stale"  # seq history kept too
    fleet.apply_probe("edge-na-1", False, 1.0)  # a probe of a removed node is ignored
    assert "edge-na-1" not in fleet.statuses


def test_probe_of_a_url_the_node_no_longer_has_is_ignored(rec: Recorder) -> None:
    fleet = rec.fleet()
    old_url = EU2.health_url
    moved = replace(EU2, control_url="http://127.0.0.20:1")
    fleet.reconfigure(make_config(REGIONS, (EU1, moved), Policy("na")))
    fleet.apply_probe("edge-eu-2", True, 1.0, old_url)
    assert fleet.statuses["edge-eu-2"].state == "unknown"
    fleet.apply_probe("edge-eu-2", True, 2.0, "http://127.0.0.20:1/healthz")
    assert fleet.statuses["edge-eu-2"].state == "up"


def test_reconfigure_keeps_an_api_drain_when_the_control_url_changes(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-2", True, 0.0)
    fleet.drain("edge-eu-2")
    moved = replace(EU2, control_url="http://127.0.0.20:9080")
    fleet.reconfigure(make_config(REGIONS, (EU1, moved, NA1), Policy("na")))
    fleet.apply_probe("edge-eu-2", True, 1.0, moved.health_url)
    status = fleet.statuses["edge-eu-2"]
    assert (status.state, status.reason, status.api_drained) == ("draining", "api_drain", True)
    assert eligible(fleet) == set()


def test_one_reload_publishes_exactly_one_snapshot(rec: Recorder) -> None:
    fleet = rec.fleet()
    for name in ("edge-eu-1", "edge-eu-2", "edge-na-1"):
        fleet.apply_probe(name, True, 0.0)
        fleet.apply_report(report(name, utilization=0.6), 0.0)
    before = len(rec.snapshots)
    # Every node changes state: saturated by the new threshold, or unknown when moved.
    moved = replace(NA1, control_url="http://127.0.0.21:9080")
    fleet.reconfigure(
        make_config(REGIONS, (EU1, EU2, moved), Policy("na", saturation_threshold=0.5))
    )
    assert len(rec.snapshots) == before + 1
    assert {s.state for s in fleet.statuses.values()} == {"saturated", "unknown"}
    assert rec.snapshots[-1] is fleet.snapshot


def test_reconfigure_applies_a_new_threshold(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_report(report(utilization=0.6), 0.0)
    assert fleet.statuses["edge-eu-1"].state == "up"
    fleet.reconfigure(make_config(REGIONS, CONFIG.nodes, Policy("na", saturation_threshold=0.5)))
    assert fleet.statuses["edge-eu-1"].state == "saturated"
    assert rec.snapshots[-1].pool("eu", 4).saturated


EVENTS = st.one_of(
    st.tuples(st.just("probe"), st.sampled_from(["edge-eu-1", "edge-eu-2"]), st.booleans()),
    st.tuples(
        st.just("report"),
        st.sampled_from(["edge-eu-1", "edge-eu-2"]),
        st.sampled_from(["up", "degraded", "draining"]),
    ),
    st.tuples(st.just("drain"), st.sampled_from(["edge-eu-1", "edge-eu-2"]), st.booleans()),
    st.tuples(st.just("tick"), st.just(""), st.just(None)),
)


@settings(max_examples=200, deadline=None)
@given(events=st.lists(st.tuples(EVENTS, st.floats(0, 3), st.floats(0, 1.2)), max_size=40))
def test_snapshot_always_matches_node_states(events: list[tuple[tuple, float, float]]) -> None:  # type: ignore[type-arg]
    fleet = Fleet(CONFIG, lambda _: None)
    now = 0.0
    for seq, ((kind, name, arg), dt, utilization) in enumerate(events, start=10):
        now += dt
        if kind == "probe":
            fleet.apply_probe(name, arg, now)
        elif kind == "report":
            fleet.apply_report(replace(report(name, seq, arg), utilization=utilization), now)
        elif kind == "drain":
            (fleet.drain if arg else fleet.undrain)(name)
        else:
            fleet.tick(now)
        pool = fleet.snapshot.pool("eu", 4)
        states = {n: s.state for n, s in fleet.statuses.items() if s.node.region == "eu"}
        assert {c.node.name for c in pool.eligible} == {n for n, s in states.items() if s == "up"}
        assert {c.node.name for c in pool.saturated} == {
            n for n, s in states.items() if s == "saturated"
        }
        assert pool.draining == ("draining" in states.values())
        assert all(0 <= c.headroom_rps <= c.capacity_rps for c in pool.eligible)


def test_restarted_edge_whose_first_reports_were_lost_is_accepted_once_expired(
    rec: Recorder,
) -> None:
    # The old process reached seq 1000; the new one's seq 1..5 were lost (a partition
    # during the restart), so its first report to arrive is seq 6: not a small seq.
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    for seq in range(1, 1001):
        fleet.apply_report(report(seq=seq), seq / 1000)
    assert fleet.apply_report(report(seq=6), 1.5) == "stale"  # still fresh: reordered
    fleet.tick(7.0)  # 6 s of silence
    assert fleet.statuses["edge-eu-1"].reason == "report_expired"
    results = {fleet.apply_report(report(seq=seq), 7.0 + seq / 100) for seq in range(6, 200)}
    assert results == {"accepted"}
    status = fleet.statuses["edge-eu-1"]
    assert (status.state, status.report.seq if status.report else None) == ("up", 199)


def test_within_expiry_an_old_seq_stays_stale(rec: Recorder) -> None:
    fleet = rec.fleet()
    fleet.apply_report(report(seq=1000), 0.0)
    assert fleet.apply_report(report(seq=6), 2.5) == "stale"  # exactly at expiry: not yet
    assert fleet.apply_report(report(seq=6), 2.6) == "accepted"


def test_a_node_back_while_owing_purges_stays_out_until_it_acks_them(rec: Recorder) -> None:
    # Its report's reply carries the purges it missed while cut off: until a later report
    # acks them it may still serve purged objects, so it takes no clients.
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    fleet.apply_report(report(seq=1), 0.0)
    fleet.tick(3.0)  # cut off: its reports expired
    fleet.apply_report(report(seq=2), 4.0, owes_purges=True)
    status = fleet.statuses["edge-eu-1"]
    assert (status.state, status.reason) == ("down", "purges_owed")
    assert eligible(fleet) == set()
    fleet.apply_report(report(seq=3), 5.0, owes_purges=True)  # not applied yet: still out
    assert fleet.statuses["edge-eu-1"].reason == "purges_owed"
    fleet.apply_report(report(seq=4), 6.0)  # acked
    assert fleet.statuses["edge-eu-1"].state == "up" and eligible(fleet) == {"edge-eu-1"}


def test_a_serving_node_that_owes_a_purge_in_flight_keeps_its_clients(rec: Recorder) -> None:
    # A purge being fanned out is owed by every node for a few milliseconds; a node that
    # was serving applies it from this reply at once and is not taken out for it.
    fleet = rec.fleet()
    fleet.apply_probe("edge-eu-1", True, 0.0)
    fleet.apply_report(report(seq=1), 0.0)
    fleet.apply_report(report(seq=2), 1.0, owes_purges=True)
    assert fleet.statuses["edge-eu-1"].state == "up"
