"""Fleet purges, the pure parts: the purge message and report codecs, the router's purge
log, its state file, and the edge applying each purge id once (in-process, real sockets)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdn.purge import Purge, PurgeError, new_purge_id
from cdn.report import MAX_REPLY_PURGES, LoadReport, ReportReply
from edge.purges import AppliedPurges
from edge.server import EdgeServer
from georouter.errors import ConfigError
from georouter.purge import MAX_PURGES, PURGE_RETENTION_S, PurgeLog
from georouter.state import ControlState, StateFile
from tests.origin_app import CACHEABLE, FakeRouter, ScriptedOrigin, metric, poll, running_edge

pytest_plugins = ("tests.edge_fixtures",)
URL = "http://cdn.example.com/img/a.png"
NODES = ("edge-1", "edge-2", "edge-3")


def purge(n: int = 1) -> Purge:
    return Purge(new_purge_id(1_800_000_000 + n, random.Random(n)), "url", f"{URL}?v={n}")


# --- the message -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ({}, "exactly one"),
        ({"url": URL, "key": "k"}, "exactly one"),
        ({"url": URL, "extra": 1}, "exactly one"),
        ({"url": ""}, "non-empty"),
        ({"url": "ftp://x/a"}, "http://"),
        ({"prefix": "/img/"}, "http://"),
        ({"key": "k", "site": "bad host!"}, "site"),
        ({"url": URL, "site": "other.example.com"}, "not the host"),
        ([URL], "JSON object"),
    ],
)
def test_bad_purge_requests_are_named(body: object, error: str) -> None:
    with pytest.raises(PurgeError, match=error):
        Purge.from_dict(body, need_id=False)


def test_a_purge_without_an_id_is_refused_where_one_is_needed() -> None:
    with pytest.raises(PurgeError, match="id"):
        Purge.from_dict({"url": URL}, need_id=True)


def test_purge_ids_are_uuid7_and_time_ordered_rfc9562_5_7() -> None:
    rng = random.Random(7)
    ids = [new_purge_id(1_700_000_000 + i / 1000, rng) for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(i[14] == "7" and i[19] in "89ab" and len(i) == 36 for i in ids)


@given(
    kind=st.sampled_from(["url", "prefix", "key"]),
    path=st.text(alphabet="abcdefghij/._-", min_size=1, max_size=40),
    site=st.booleans(),
)
def test_purge_round_trips(kind: str, path: str, site: bool) -> None:
    value = f"http://cdn.example.com/{path}" if kind != "key" else path
    raw = {"id": "0123-abc", kind: value}
    if site:
        raw["site"] = "cdn.example.com"
    parsed = Purge.from_dict(raw, need_id=True)
    assert Purge.from_dict(json.loads(json.dumps(parsed.to_dict())), need_id=True) == parsed


def test_report_acks_and_reply_purges_round_trip_and_stay_optional() -> None:
    report = LoadReport("edge-1", 3, "up", 0, 1.0, 10.0, 0.1, 0.5, acks=("a-1", "b-2"))
    assert LoadReport.from_json(report.to_json()) == report
    plain = LoadReport("edge-1", 3, "up", 0, 1.0, 10.0, 0.1, 0.5)
    assert b"acks" not in plain.to_json()  # what an older router reads unchanged
    reply = ReportReply("accepted", (purge(1), purge(2)))
    assert ReportReply.from_json(reply.to_json()) == reply
    assert ReportReply.from_json(b"") == ReportReply("accepted")  # an older router's 204
    assert ReportReply.from_json(b'{"result": "accepted"}').purges == ()


# --- the router's log --------------------------------------------------------------------------


def test_log_tracks_each_node_until_it_confirms() -> None:
    log = PurgeLog()
    p = purge()
    record, created = log.add(p, NODES, 100.0)
    assert created and record.nodes == dict.fromkeys(NODES, "pending")
    assert log.settle(p.id, "edge-1", "done")
    assert log.settle(p.id, "edge-2", "failed: ClientConnectorError")
    assert not log.settle(p.id, "edge-1", "failed: late")  # done is final
    assert log.owed("edge-2", 10) == (p,) and log.owed("edge-1", 10) == ()
    assert dict(log.owed_counts(NODES)) == {"edge-1": 0, "edge-2": 1, "edge-3": 1}
    assert log.ack("edge-2", [p.id, "unknown-id"]) == 1
    assert log.ack("edge-3", [p.id]) == 1 and record.complete


def test_log_adds_a_known_id_once_and_new_nodes_join_it() -> None:
    log = PurgeLog()
    p = purge()
    log.add(p, NODES[:2], 100.0)
    log.settle(p.id, "edge-1", "done")
    record, created = log.add(p, NODES, 200.0)  # heard again, e.g. from the bus
    assert not created and record.created_at == 100.0
    assert record.nodes == {"edge-1": "done", "edge-2": "pending", "edge-3": "pending"}


def test_owed_purges_come_oldest_first_and_bounded() -> None:
    log = PurgeLog()
    purges = [purge(n) for n in range(MAX_REPLY_PURGES + 5)]
    for p in purges:
        log.add(p, NODES, 100.0)
    assert log.owed("edge-1", MAX_REPLY_PURGES) == tuple(purges[:MAX_REPLY_PURGES])


def test_log_forgets_after_the_retention_time_and_beyond_its_size() -> None:
    log = PurgeLog()
    old, new = purge(1), purge(2)
    log.add(old, NODES, 0.0)
    log.add(new, NODES, PURGE_RETENTION_S)
    assert log.prune(PURGE_RETENTION_S + 1) == 1 and log.get(old.id) is None
    for n in range(MAX_PURGES + 3):
        log.add(purge(n + 10), (), PURGE_RETENTION_S)
    log.prune(PURGE_RETENTION_S)
    assert len(log) == MAX_PURGES and log.get(new.id) is None  # the oldest went first


# --- the state file ---------------------------------------------------------------------------


def test_state_file_round_trip_is_atomic(tmp_path: Path) -> None:
    state_file = StateFile(tmp_path / "state")
    assert state_file.load() == ControlState()  # none yet: empty
    log = PurgeLog()
    log.add(purge(), NODES, 123.0)
    log.settle(purge().id, "edge-1", "done")
    state = ControlState(frozenset({"edge-2"}), {"edge-3": 2.5}, tuple(log.records()), 42)
    state_file.save(state)
    loaded = state_file.load()
    assert (loaded.drained, dict(loaded.weights), loaded.stream_seq) == (
        frozenset({"edge-2"}), {"edge-3": 2.5}, 42,
    )  # fmt: skip
    assert [r.to_dict() for r in loaded.purges] == [r.to_dict() for r in state.purges]
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["state.json"]  # no temp left


@pytest.mark.parametrize(
    "body", [b"{", b"[]", b'{"format": 99}', b'{"format": 1, "weights": {"a": -1}}']
)
def test_an_unreadable_state_file_is_one_line_naming_it(tmp_path: Path, body: bytes) -> None:
    (tmp_path / "state.json").write_bytes(body)
    with pytest.raises(ConfigError) as info:
        StateFile(tmp_path).load()
    message = str(info.value)
    assert str(tmp_path / "state.json") in message and "\n" not in message


# --- the edge: once per id ------------------------------------------------------------------


def test_applied_ids_are_remembered_for_a_bounded_time_and_number() -> None:
    applied = AppliedPurges(remember_s=10.0, limit=3)
    assert applied.first_time("a", 0.0) and not applied.first_time("a", 5.0)
    assert applied.first_time("b", 11.0) and "a" not in applied  # past remember_s
    for name in "cde":
        applied.first_time(name, 12.0)
    assert "b" not in applied and "e" in applied  # at most 3, oldest out


async def warm(client: aiohttp.ClientSession, edge: EdgeServer, path: str) -> str:
    headers = {"Host": "cdn.example.com"}
    async with client.get(f"http://{edge.content}{path}", headers=headers) as resp:
        await resp.read()
        return "hit" if "; hit" in resp.headers.get("Cache-Status", "") else "miss"


async def test_edge_applies_a_fanned_out_purge_once_by_id(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/img/a.png", headers=CACHEABLE, body=b"a")
    origin.script("/tagged", headers={**CACHEABLE, "Surrogate-Key": "k1"})
    async with running_edge(origin.url) as edge:
        for path in ("/img/a.png", "/img/a.png", "/tagged"):
            await warm(client, edge, path)
        url = f"http://{edge.control}/api/v1/purge"
        body = {"id": "id-1", "url": URL}
        auth = {"Authorization": "Bearer t0ken"}
        async with client.post(url, json=body, headers=auth) as resp:
            assert (resp.status, await resp.json()) == (
                200, {"id": "id-1", "purged": 1, "duplicate": False},
            )  # fmt: skip
        await warm(client, edge, "/img/a.png")  # stored again
        async with client.post(url, json=body, headers=auth) as resp:
            assert (await resp.json())["duplicate"] is True  # the same id: nothing removed
        assert await warm(client, edge, "/img/a.png") == "hit"
        # A key purge limited to another site leaves this site's objects alone.
        other = {"id": "id-2", "key": "k1", "site": "other.example.com"}
        async with client.post(url, json=other, headers=auth) as resp:
            assert (await resp.json())["purged"] == 0
        async with client.post(url, json=body, headers={}) as resp:
            assert resp.status == 401
        async with client.post(url, json={"url": URL}, headers=auth) as resp:
            assert resp.status == 400  # a router's purge always has its id


async def test_edge_applies_purges_riding_on_a_report_reply_and_acks_them(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, router: FakeRouter
) -> None:
    origin.script("/img/a.png", headers=CACHEABLE, body=b"a")
    async with running_edge(origin.url, routers=(router.url,), report_interval_s=0.2) as edge:
        await warm(client, edge, "/img/a.png")
        assert await warm(client, edge, "/img/a.png") == "hit"
        owed = Purge("missed-1", "url", URL)
        router.owed.append(owed)
        await poll(lambda: any("missed-1" in r.acks for r in router.reports))
        assert router.owed == []  # acknowledged: the router stops sending it
        assert await warm(client, edge, "/img/a.png") == "miss"
        applied = {"via": "report", "result": "applied"}
        assert metric(edge.metrics, "edge_fleet_purges_total", applied) == 1


@given(
    events=st.lists(
        st.tuples(
            st.integers(0, 4),  # purge number
            st.sampled_from(NODES),
            st.sampled_from(["done", "pending", "failed: x", "ack"]),
        ),
        max_size=60,
    )
)
def test_log_owes_a_purge_until_the_node_confirmed_it_and_done_is_final(
    events: list[tuple[int, str, str]],
) -> None:
    log = PurgeLog()
    purges = [purge(n) for n in range(5)]
    for p in purges:
        log.add(p, NODES, 100.0)
    confirmed: set[tuple[int, str]] = set()
    for n, node, event in events:
        if event == "ack":
            log.ack(node, [purges[n].id])
        else:
            log.settle(purges[n].id, node, event)
        if event in ("ack", "done"):
            confirmed.add((n, node))
    for node in NODES:
        owed = {p.id for p in log.owed(node, 10)}
        assert owed == {purges[n].id for n in range(5) if (n, node) not in confirmed}
