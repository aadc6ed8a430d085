"""The purge benchmark (benchmarks/purge.py): its quick mode end to end with real processes
(a router, edges, the demo origin, one edge cut off through a CutLink), the tables it
writes, the generated topology, the cut link itself, and splicing a part into the report.
No timed asserts: only the shape of the results and that every figure is there."""

from __future__ import annotations

import os
import re
import socket
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks import headline, purge
from benchmarks.__main__ import PARTS
from benchmarks.cdn import TOPOLOGY
from benchmarks.cut_link import CutLink
from benchmarks.processes import BenchError
from benchmarks.report import Part, Table, render, splice_text
from georouter.config import load_config

FIGURE = re.compile(r"^\**[\d,]+(\.\d+)?\**$")


def figures(cell: str) -> list[str]:
    return re.split(r"\s*/\s*", cell)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.timeout(150)
def test_quick_mode_measures_both_tables_and_stops_every_process(tmp_path: Path) -> None:
    started: list[tuple[str, int]] = []
    results = purge.measure(tmp_path, purge.QUICK, lambda label, pid: started.append((label, pid)))
    labels = {label for label, _ in started}
    assert {"origin (purge part)", "georouter"} <= labels
    edges = sum(label.startswith("edge") for label in labels)
    assert edges == 1  # every edge under one label: "edge (one of N)"
    assert not [pid for _, pid in started if alive(pid)], "a process outlived the part"

    (fleet,) = results.fleets
    assert fleet.edges == purge.QUICK.fleets[0]
    assert len(fleet.last_s) == purge.QUICK.purges == len(fleet.answered_s)
    assert all(low <= new for low, new in zip(fleet.last_low_s, fleet.last_s, strict=True))
    assert results.cut is not None and len(results.cut.trials) == purge.QUICK.cut_trials
    trial = results.cut.trials[0]
    assert trial.result != "done"  # the cut link kept the fan-out from it
    assert trial.new_after_s >= 0 and trial.up_after_s >= 0 and trial.stale_after_up >= 0
    assert trial.via != "none"  # the edge applied the purge, one way or the other

    purge_table, cut_table = purge.tables(results)
    for table in (purge_table, cut_table):
        assert all(len(row) == len(table.columns) for row in table.rows)
        assert table.notes
    (row,) = purge_table.rows
    assert row[0] == str(purge.QUICK.fleets[0]) and row[1] == str(purge.QUICK.purges)
    for cell in row[2:7]:
        assert all(FIGURE.match(f) for f in figures(cell)), cell
    (cut_row,) = cut_table.rows
    assert re.fullmatch(r"(fanout|report)( and \w+)? 1", cut_row[4]), cut_row[4]
    for cell in (cut_row[6], cut_row[7], cut_row[8], cut_row[9]):
        assert all(FIGURE.match(f) for f in figures(cell)), cell
    assert "%" in row[-1] and "%" in cut_row[-1]  # the other work on the machine


def test_the_fleet_topology_has_n_nodes_over_the_shipped_regions(tmp_path: Path) -> None:
    shipped = load_config(TOPOLOGY)
    path = tmp_path / "fleet.toml"
    path.write_text(purge.fleet_toml(TOPOLOGY.read_text(), shipped, 50, "fanout_timeout_s = 0.5"))
    config = load_config(path)
    assert len(config.nodes) == len({n.name for n in config.nodes}) == 50
    assert {n.region for n in config.nodes} == {r.name for r in shipped.regions}
    assert config.router.fanout_timeout_s == 0.5
    assert [z.origin for z in config.zones] == [z.origin for z in shipped.zones]


def test_poll_interval_keeps_the_pollers_within_their_budget() -> None:
    for edges in (1, 3, 6, 50, 200):
        interval = purge.poll_interval(edges)
        assert interval >= purge.MIN_POLL_S
        assert edges / interval <= purge.POLL_BUDGET_RPS + 1e-9


def test_version_is_read_from_the_body_and_anything_else_is_an_error() -> None:
    assert purge.version_of(b"v12:xxxx") == 12
    with pytest.raises(BenchError):
        purge.version_of(b"<html>not found")


def test_purge_is_a_part_of_make_bench() -> None:
    assert "purge" in PARTS


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def echo_link() -> Iterator[CutLink]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    link = CutLink("127.0.0.1", server.server_address[1]).start()
    try:
        yield link
    finally:
        link.stop()
        server.shutdown()
        server.server_close()


def _connect(link: CutLink) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", link.port), timeout=5.0)
    return sock


def test_a_cut_link_drops_silently_and_resets_what_lived_through_the_cut(
    echo_link: CutLink,
) -> None:
    before = _connect(echo_link)
    before.sendall(b"ping")
    assert before.recv(4) == b"ping"
    echo_link.cut()
    during = _connect(echo_link)  # accepted, then hears nothing
    before.sendall(b"lost")
    during.sendall(b"lost")
    for sock in (before, during):
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):  # nothing comes back, nothing is closed
            sock.recv(4)
    echo_link.restore()
    for sock in (before, during):
        sock.settimeout(5.0)
        with pytest.raises(ConnectionResetError):  # an RST, and what was sent never arrives
            sock.recv(4)
            sock.recv(4)  # (a FIN would read b"" first)
        sock.close()
    after = _connect(echo_link)
    after.sendall(b"pong")
    assert after.recv(4) == b"pong"
    after.close()


REPORT = """# Benchmarks

- Date: old

## Headline

| a | b |
|---|---|

## How the run works

old method

## The harness

harness text

## 1. DNS

dns text

## 2. Memory

memory text

## Profile-driven improvements

kept
"""


def test_splice_adds_a_part_before_memory_and_renumbers() -> None:
    part = Part("Purge everywhere", "intro", [Table("T", ["a"], [["1"]])])
    text = splice_text(REPORT, [part], ["- stamp"])
    headings = re.findall(r"(?m)^## (.+)$", text)
    assert headings == [
        "Headline", "How the run works", "The harness", "1. DNS", "2. Purge everywhere",
        "3. Memory", "Profile-driven improvements",
    ]  # fmt: skip
    assert "old method" in text  # the method of the run the rest of the page came from
    assert "dns text" in text and "memory text" in text and text.endswith("kept\n")
    assert "- stamp\n\nintro\n\n### T" in text
    again = splice_text(text, [Part("Purge everywhere", "second", [])], [])
    assert again.count("Purge everywhere") == 1 and "second" in again and "### T" not in again
    assert re.findall(r"(?m)^## (.+)$", again) == headings


FAILOVER = Table(
    "Failover: a killed or frozen edge leaves the answers",
    ["system", "detection settings", "time until a dead node leaves answers", "source"],
    [
        ["georouter, kill -9 (cdn.toml)", "x", "measured: median 6 ms, max 11 ms", "this run"],
        ["georouter, SIGSTOP (cdn.toml)", "x", "measured: median 1409 ms, max 1442 ms", "run"],
        ["Route 53 health checks", "x", "≈ 90 s", "AWS"],
    ],
)


def test_headline_reads_each_fault_of_ours_and_only_the_peers_as_defaults() -> None:
    (row,) = headline.headline([FAILOVER]).rows
    assert row == [
        "a crashed or frozen edge leaves the answers",
        "kill -9: median 6 ms, max 11 ms; SIGSTOP: median 1409 ms, max 1442 ms; "
        "documented defaults: Route 53 health checks ≈ 90 s",
    ]


def purge_results(others: float) -> purge.PurgeResults:
    machine = purge.Machine(ours=50.0, others=others, stolen=0.0)
    fleet = purge.FleetResult(
        edges=50, poll_s=0.04, answered_s=[0.05, 0.06], last_s=[0.08, 0.2],
        last_low_s=[0.04, 0.1], first_purge_s=0.3, first_s=[0.01, 0.02], not_done=0,
        machine=machine,
    )  # fmt: skip
    trial = purge.CutTrial("edge-na-1", "pending", True, 0.4, 1.5, 0, 40, "report")
    return purge.PurgeResults([fleet], purge.CutResult(6, [3.0], [trial], machine))


def test_headline_reads_the_purge_tables_back_from_the_rendered_report() -> None:
    part = Part("Purge everywhere", "", purge.tables(purge_results(others=120.0)))
    text = render([part], ["- Date: today"], Table("Headline", ["a"], []), "", "")
    rows = {row[0]: row[1] for row in headline.headline(headline.tables_in(text)).rows}
    shared = " (the machine shared with other work)"
    assert rows["purge everywhere, until the last edge serves the new object, p50 / p99"] == (
        "50 edges 80 / 200 ms" + shared
    )
    assert rows["an edge cut off during a purge, once reachable again"] == (
        "new object 400 ms after (max 400 ms), 0 stale answers once counted up" + shared
    )
    quiet = render(
        [Part("Purge everywhere", "", purge.tables(purge_results(others=5.0)))],
        ["- Date: today"], Table("Headline", ["a"], []), "", "",
    )  # fmt: skip
    assert "shared" not in str(headline.headline(headline.tables_in(quiet)).rows)


def test_the_headline_section_is_rebuilt_from_the_page_itself(tmp_path: Path) -> None:
    report = tmp_path / "benchmarks.md"
    report.write_text(splice_text(REPORT, [Part("Failover time", "", [FAILOVER])], []))
    headline.rebuild(report, None)
    text = report.read_text()
    section = text.split("## Headline\n", 1)[1].split("\n## ", 1)[0]
    assert "a crashed or frozen edge" in section and "| a | b |" not in section
    assert "## How the run works\n\nold method" in text  # the rest as it was
    headline.rebuild(report, None)
    assert report.read_text() == text  # rebuilt from itself: the same again
