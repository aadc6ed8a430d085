"""The hostile-traffic bench part (benchmarks/hostile.py): its judge, verdict and table, and
one tiny run against a real router."""

from __future__ import annotations

import dataclasses

import dns.message
import pytest

from benchmarks import cdn, hostile
from benchmarks.hostile import Load, Outcome, Tally, hostile_table, verdict

TINY = Load(datagrams=300, datagrams_per_s=3000.0, streams=25, stream_concurrency=8, held_idle=0)


def exchange() -> tuple[bytes, bytes]:
    query = dns.message.make_query("cdn.example.com.", "A", id=0x0102)
    return query.to_wire(), dns.message.make_response(query).to_wire()


def clean(load: Load = TINY) -> Outcome:
    tally = Tally(datagrams=load.datagrams)
    return Outcome(load, tally, alive=True, answers_normal_query=True, errors_logged=0, seconds=1)


def test_a_clean_run_meets_every_goal() -> None:
    assert verdict(clean()) == []
    table = hostile_table(clean())
    assert dict((row[0], row[1]) for row in table.rows)["crashes"] == "0"
    assert table.notes[-1] == "Verdict: all goals met."


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"alive": False}, "the router process died"),
        ({"answers_normal_query": False}, "the router no longer answers a normal query"),
        ({"errors_logged": 2}, "2 ERROR lines logged"),
    ],
)
def test_each_missed_goal_is_named(change: dict[str, object], problem: str) -> None:
    outcome = dataclasses.replace(clean(), **change)  # type: ignore[arg-type]
    assert verdict(outcome) == [problem]
    assert problem in hostile_table(outcome).notes[2]
    crashes = dict((row[0], row[1]) for row in hostile_table(outcome).rows)["crashes"]
    assert crashes == ("0" if "ERROR" in problem else "1")


def test_malformed_stuck_and_unclosed_idle_streams_fail_the_run() -> None:
    outcome = clean(dataclasses.replace(TINY, held_idle=3))
    outcome.tally.malformed["answer without QR"] += 2
    outcome.tally.stuck = 1
    outcome.tally.held_closed = 2
    outcome.tally.datagrams -= 1
    assert verdict(outcome) == [
        f"only {TINY.datagrams - 1} datagrams sent in 150 s",
        "2 malformed replies",
        "1 TCP streams left open after the client's EOF",
        "1 idle connections not closed by the router",
    ]


def test_judge_accepts_an_answer_and_counts_every_kind_of_bad_one() -> None:
    query, reply = exchange()
    tally = Tally()
    assert tally.judge(query, reply, "udp")
    assert tally.judge(query, reply, "udp")  # the cached verdict
    assert not tally.judge(query, b"\x09\x09" + reply[2:], "udp")  # cached shape, wrong ID
    assert not tally.judge(query, query, "udp")  # no QR
    assert not tally.judge(query, reply + b"\0" * 600, "udp")  # over 512 without EDNS
    assert not tally.judge(query, reply[:-1], "tcp")  # cut short
    assert sum(tally.malformed.values()) == 4
    assert tally.malformed_example.startswith(f"query {query.hex()} reply ")


def test_ratio_keeps_the_largest_and_its_query() -> None:
    tally = Tally()
    tally.note_ratio(b"q" * 10, b"r" * 20)
    tally.note_ratio(b"Q" * 4, b"r" * 20)
    tally.note_ratio(b"q" * 10, b"r" * 30)
    assert (tally.ratio, tally.ratio_query) == (5.0, b"Q" * 4)


def test_hostile_queries_are_repeatable_and_bounded() -> None:
    import random

    def batch() -> list[bytes]:
        make = hostile.hostile_queries(random.Random(3))
        return [make() for _ in range(300)]

    first = batch()
    assert first == batch() and len(set(first)) > 250
    assert max(map(len, first)) <= hostile.MAX_UDP_QUERY_BYTES + 64


def test_a_tiny_run_against_a_real_router_meets_the_goals() -> None:
    outcome = hostile.run(cdn.TOPOLOGY, TINY)
    assert verdict(outcome) == [], hostile_table(outcome).notes
    assert outcome.tally.datagrams == TINY.datagrams
    assert outcome.tally.udp_replies > 0 and outcome.tally.tcp_replies > 0
    assert sum(outcome.tally.streams.values()) == TINY.streams
