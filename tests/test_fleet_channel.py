"""Fleet: a report channel that closes without a drain takes the node out at once; it
comes back only after a report on a reopened channel and a good probe, both after the
close, and a node whose channel keeps closing is held out longer each time."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from georouter.fleet import FLAP_HOLD_MAX_S, FLAP_HOLD_S, FLAP_WINDOW_S, Fleet
from tests.test_fleet import Recorder, eligible, report

NODE = "edge-eu-1"


def up_on_channel(rec: Recorder, now: float = 0.0) -> Fleet:
    fleet = rec.fleet()
    fleet.apply_probe(NODE, True, now)
    assert fleet.apply_report(report(seq=1), now, channel=True) == "accepted"
    assert fleet.statuses[NODE].state == "up"
    return fleet


def test_channel_close_takes_the_node_out_at_once() -> None:
    rec = Recorder()
    fleet = up_on_channel(rec)
    version = fleet.snapshot.version
    assert fleet.close_channel(NODE, 1.0)
    status = fleet.statuses[NODE]
    assert (status.state, status.reason) == ("down", "channel_closed")
    assert NODE not in eligible(fleet)
    assert fleet.snapshot.version > version  # published: the DNS path sees it now
    assert rec.transitions[-1].reason == "channel_closed"


def test_close_of_an_unknown_node_is_ignored() -> None:
    assert not Recorder().fleet().close_channel("edge-nowhere", 1.0)


def test_back_only_after_a_channel_report_and_a_probe_after_the_close() -> None:
    fleet = up_on_channel(Recorder())
    fleet.close_channel(NODE, 1.0)
    fleet.apply_probe(NODE, True, 1.5)  # a good probe alone is not enough
    assert fleet.statuses[NODE].state == "down"
    fleet.apply_report(report(seq=2), 1.6, channel=False)  # nor a report by POST
    assert fleet.statuses[NODE].state == "down"
    fleet.apply_report(report(seq=3), 1.7, channel=True)  # channel report + earlier probe
    assert fleet.statuses[NODE].state == "up"


def test_a_probe_must_follow_the_close() -> None:
    fleet = up_on_channel(Recorder())
    fleet.close_channel(NODE, 1.0)
    fleet.apply_report(report(seq=2), 1.2, channel=True)
    assert fleet.statuses[NODE].state == "down"  # the last good probe predates the close
    fleet.apply_probe(NODE, False, 1.3)
    assert fleet.statuses[NODE].state == "down"
    fleet.apply_probe(NODE, True, 1.4)
    assert fleet.statuses[NODE].state == "up"


def test_flapping_node_is_held_out_longer_each_time() -> None:
    fleet = up_on_channel(Recorder())
    now, holds = 0.0, []
    for seq in range(2, 7):
        now += 1.0
        fleet.close_channel(NODE, now)
        closed = now
        while fleet.statuses[NODE].state != "up":
            now += 0.25
            fleet.apply_report(report(seq=seq), now, channel=True)
            fleet.apply_probe(NODE, True, now)
        holds.append(now - closed)
    assert holds[0] <= 0.25  # the first close costs no hold
    assert holds[1] >= FLAP_HOLD_S and holds[2] >= 2 * FLAP_HOLD_S
    assert holds[3] >= 4 * FLAP_HOLD_S and holds[4] <= FLAP_HOLD_MAX_S + 0.25


def test_closes_far_apart_are_not_a_flap() -> None:
    fleet = up_on_channel(Recorder())
    for n, now in enumerate((10.0, 10.0 + FLAP_WINDOW_S + 1, 10.0 + 2 * FLAP_WINDOW_S + 2)):
        fleet.close_channel(NODE, now)
        fleet.apply_report(report(seq=n + 2), now + 0.1, channel=True)
        fleet.apply_probe(NODE, True, now + 0.2)
        assert fleet.statuses[NODE].state == "up"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["close", "probe_ok", "probe_fail", "chan", "post"]),
            st.floats(0.01, 3.0),
        ),
        max_size=30,
    )
)
def test_never_up_without_channel_report_and_probe_since_the_last_close(
    events: list[tuple[str, float]],
) -> None:
    fleet = up_on_channel(Recorder())
    now, seq, closed = 0.0, 1, None
    chan_after = probe_after = False
    for kind, step in events:
        now += step
        seq += 1
        if kind == "close":
            fleet.close_channel(NODE, now)
            closed, chan_after, probe_after = now, False, False
        elif kind.startswith("probe"):
            fleet.apply_probe(NODE, kind == "probe_ok", now)
            probe_after = probe_after or kind == "probe_ok"
        else:
            fleet.apply_report(report(seq=seq), now, channel=kind == "chan")
            chan_after = chan_after or kind == "chan"
        if closed is not None and fleet.statuses[NODE].state == "up":
            assert chan_after and probe_after  # both since the close
            closed = None
