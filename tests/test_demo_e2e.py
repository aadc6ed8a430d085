"""`georouter demo` and the whole CDN end to end: origin, supervisor, failover, drain, purge.

The first half tests the demo's parts with plain calls and single processes; the second
half runs whole CDNs (cdnlab/loopback.py) on fresh loopback blocks with ephemeral ports, so a
developer's running `make demo` is never disturbed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import re
import select
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from cdnlab import origin
from cdnlab.certs import DemoTls
from cdnlab.loopback import (
    SHIPPED_CONFIG,
    SUBNETS,
    TRANSIENT,
    Cdn,
    free_dns_port,
    free_port,
    loopback_block,
    poll,
    relocate_config,
    start_cdn,
)
from cdnlab.plan import (
    EDGE_LAYER,
    ORIGIN_LAYER,
    ROUTER_LAYER,
    SAMPLE_SUBNETS,
    SHIELD_LAYER,
    addresses_needed,
    edge_spec,
    guide,
    make_plan,
    origin_spec,
    router_spec,
)
from cdnlab.status import answers_by_node, render_table, rows_from_json
from cdnlab.supervisor import (
    LINE_START_BYTES,
    ChildSpec,
    DemoError,
    Supervisor,
    check_ports_free,
    parse_logfmt,
    split_lines,
)
from cdnlab.workload import (
    CLIENTS,
    OBJECTS,
    Workload,
    cache_verdict,
    requests,
    zipf_weights,
)
from georouter.config import load_config
from georouter.geo import Geo, open_geoip
from georouter.tallies import HotPathTallies
from tests.e2e import which

ORIGIN_ROOT = origin.ORIGIN_ROOT

# ---- demo origin ---------------------------------------------------------------------------


@pytest.fixture
async def origin_url() -> AsyncIterator[str]:
    runner = web.AppRunner(origin.create_app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}"
    await runner.cleanup()


async def test_image_is_cacheable_with_validators_rfc9111_5_2_2_1(origin_url: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{origin_url}/img/cat.jpg") as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == "public, max-age=86400"
        assert r.headers["Content-Type"] == "image/jpeg"
        assert r.headers["ETag"] and r.headers["Last-Modified"]
        assert await r.read() == (ORIGIN_ROOT / "img" / "cat.jpg").read_bytes()


async def test_conditional_get_answers_304_rfc9110_13_1_1_and_13_1_3(origin_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{origin_url}/img/dog.jpg") as r:
            etag, modified = r.headers["ETag"], r.headers["Last-Modified"]
        async with s.get(f"{origin_url}/img/dog.jpg", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        headers = {"If-Modified-Since": modified}
        async with s.get(f"{origin_url}/img/dog.jpg", headers=headers) as r:
            assert r.status == 304
        async with s.get(f"{origin_url}/img/dog.jpg", headers={"If-None-Match": '"x"'}) as r:
            assert r.status == 200


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/static/app.v3.css", "public, max-age=31536000, immutable"),
        ("/static/app.v3.js", "public, max-age=31536000, immutable"),
        ("/", "public, max-age=60"),
        ("/index.html", "public, max-age=60"),
        ("/img/thumb-1.png", "public, max-age=86400"),
    ],
)
async def test_cache_control_by_kind_rfc8246(origin_url: str, path: str, expected: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(origin_url + path) as r:
        assert r.status == 200
        assert r.headers["Cache-Control"] == expected


async def test_feed_stale_while_revalidate_rfc5861_3_and_etag(origin_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{origin_url}/api/posts") as r:
            assert r.headers["Cache-Control"] == "public, max-age=5, stale-while-revalidate=30"
            etag, feed = r.headers["ETag"], await r.json()
        assert len(feed["posts"]) == origin.POST_COUNT
        async with s.get(f"{origin_url}/api/posts", headers={"If-None-Match": etag}) as r:
            assert r.status == 304


async def test_comment_is_stored_and_changes_the_feed(origin_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{origin_url}/api/posts") as r:
            etag = r.headers["ETag"]
        comment = {"post": 3, "author": "ada", "text": "nice"}
        async with s.post(f"{origin_url}/api/comments", json=comment) as r:
            assert r.status == 201
            assert r.headers["Cache-Control"] == "no-store"
            assert await r.json() == comment
        async with s.get(f"{origin_url}/api/posts", headers={"If-None-Match": etag}) as r:
            assert r.status == 200  # the feed changed, so the old validator no longer matches
            assert (await r.json())["posts"][2]["comments"] == 1


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"post": 0, "text": "x"}',
        b'{"post": 1}',
        b'{"post": true, "text": "x"}',
    ],
)
async def test_bad_comment_is_400_with_reason(origin_url: str, body: bytes) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{origin_url}/api/comments", data=body) as r:
        assert r.status == 400
        assert (await r.json())["error"]


async def test_oversized_comment_is_413(origin_url: str) -> None:
    body = json.dumps({"post": 1, "text": "x" * origin.MAX_REQUEST_BYTES}).encode()
    async with aiohttp.ClientSession() as s, s.post(f"{origin_url}/api/comments", data=body) as r:
        assert r.status == 413


async def test_user_carries_surrogate_keys(origin_url: str) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{origin_url}/api/users/7") as r:
            assert r.headers["Surrogate-Key"] == "user-7 users"
            assert (await r.json())["id"] == 7
        for bad in ("0", "x", str(origin.USER_COUNT + 1)):
            async with s.get(f"{origin_url}/api/users/{bad}") as r:
                assert r.status == 404


@pytest.mark.parametrize("path", ["/../pyproject.toml", "/img/../../data/cdn.toml", "/nope.jpg"])
async def test_nothing_outside_the_content_root(origin_url: str, path: str) -> None:
    async with aiohttp.ClientSession() as s, s.get(origin_url + path) as r:
        assert r.status == 404


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=5))
def test_parse_comment_rejects_only_with_valueerror(raw: object) -> None:
    with contextlib.suppress(ValueError):
        origin.parse_comment(raw)


@given(st.dictionaries(st.sampled_from(["post", "text", "author"]), st.integers() | st.text()))
def test_parse_comment_accepts_exactly_the_valid(raw: dict[str, object]) -> None:
    post, text, author = raw.get("post"), raw.get("text"), raw.get("author", "anonymous")
    valid = (
        isinstance(post, int)
        and 1 <= post <= origin.POST_COUNT
        and isinstance(text, str)
        and 0 < len(text) <= origin.MAX_COMMENT_TEXT
        and isinstance(author, str)
        and 0 < len(author) <= 64
    )
    try:
        origin.parse_comment(raw)
    except ValueError:
        assert not valid
    else:
        assert valid


@pytest.mark.parametrize(
    ("listen", "reason"),
    [
        ("127.0.0.1:99999", "port must be in 0..65535, got 99999"),
        ("nowhere", "expected HOST:PORT (IPv6 as [::1]:53), got 'nowhere'"),
        ("[::1:80", "expected HOST:PORT"),
    ],
)
def test_origin_rejects_a_bad_listen_address_with_usage_exit_2(
    listen: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        origin.main(["--listen", listen])
    assert exited.value.code == 2
    assert f"argument --listen: {reason}" in capsys.readouterr().err


def test_content_is_small_and_images_are_valid() -> None:
    files = [p for p in ORIGIN_ROOT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 3 * 1024 * 1024
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".jpg":
            assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9", path
        if path.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[-8:-4] == b"IEND", path
    sizes = sorted(p.stat().st_size for p in files if p.parent.name == "img")
    assert sizes[0] < 8 * 1024 and sizes[-1] > 512 * 1024  # a few KB to most of a MB


def test_a_file_replaced_at_the_origin_gets_its_new_digest_rfc9530(tmp_path: Path) -> None:
    # A new profile picture at the same URL: the Repr-Digest follows the bytes on disk.
    picture = tmp_path / "img" / "me.jpg"
    picture.parent.mkdir()
    picture.write_bytes(b"old picture")
    found = origin.index_files(tmp_path)["/img/me.jpg"]
    assert found.current_digest() == origin.repr_digest(b"old picture")
    (tmp_path / "next").write_bytes(b"the new picture")
    os.replace(tmp_path / "next", picture)
    assert found.current_digest() == origin.repr_digest(b"the new picture")


def test_every_workload_object_exists() -> None:
    files = origin.index_files(ORIGIN_ROOT)
    assert all(p in files or p.startswith("/api/") for p in OBJECTS)


# ---- the demo's pure parts -----------------------------------------------------------------


def test_sample_and_workload_subnets_are_where_we_say_in_the_embedded_geolite2() -> None:
    config = load_config(SHIPPED_CONFIG)
    geo = Geo(config, open_geoip(None), HotPathTallies())
    for region, (subnet, country) in SAMPLE_SUBNETS.items():
        address = subnet.split("/")[0]
        assert geo.locate(address).country == country
        assert geo.place(address).region == region
    for client in CLIENTS:
        assert geo.locate(client.subnet.split("/")[0]).country == client.country
    assert {r: s for r, (s, _) in SAMPLE_SUBNETS.items()} == SUBNETS


def test_plan_derives_every_address_from_the_config() -> None:
    plan = make_plan(load_config(SHIPPED_CONFIG), SHIPPED_CONFIG, None)
    assert str(plan.origin) == "127.0.0.1:8000"
    assert (str(plan.dns), str(plan.control)) == ("127.0.0.1:5300", "127.0.0.1:9153")
    assert [str(e.content) for e in plan.edges] == [f"127.0.0.1{i}:8080" for i in range(1, 7)]
    assert [str(e.control) for e in plan.edges] == [f"127.0.0.1{i}:9080" for i in range(1, 7)]
    assert [str(s.content) for s in plan.shields] == ["127.0.0.21:8080", "127.0.0.22:8080"]
    assert len(addresses_needed(plan)) == 4 + 3 * 6 + 2 * 2
    shield = edge_spec(plan, plan.shields[0])
    specs = (origin_spec(plan), shield, edge_spec(plan, plan.edges[0]), router_spec(plan))
    assert [s.layer for s in specs] == [ORIGIN_LAYER, SHIELD_LAYER, EDGE_LAYER, ROUTER_LAYER]
    # stop_all stops the highest first: edges drain through the shields to the origin.
    assert ORIGIN_LAYER < SHIELD_LAYER < EDGE_LAYER < ROUTER_LAYER
    # Every edge names both shields as parents; a shield has none.
    parents = [a for i, a in enumerate(specs[2].argv) if specs[2].argv[i - 1] == "--parent"]
    assert parents == ["http://127.0.0.21:8080", "http://127.0.0.22:8080"]
    assert "--parent" not in shield.argv and "--tls-listen" not in shield.argv


def test_guide_commands_name_the_plan() -> None:
    plan = make_plan(load_config(SHIPPED_CONFIG), SHIPPED_CONFIG, None)
    text = guide(plan, Path("/tmp/logs"), {"edge-eu-1": 4242})
    assert "dig @127.0.0.1 -p 5300 cdn.example.com +subnet=185.60.216.0/24" in text
    assert text.count("curl -sI http://127.0.0.13:8080/img/cat.jpg") == 2
    assert "http://127.0.0.1:9153/api/v1/purge" in text and "kill -9 4242" in text
    assert "fills from the shields shield-1, shield-2" in text
    assert "georouter prewarm --config" in text and "--region eu" in text
    assert "--cacert" not in text  # HTTPS only once the runner has made the CA
    tls = DemoTls(Path("/d/ca.pem"), Path("/d/e.pem"), Path("/d/e.key"), Path("/d/e.toml"), "h=")
    text = guide(dataclasses.replace(plan, tls=tls), Path("/tmp/logs"), {})
    assert (
        "curl -sI --cacert /d/ca.pem --resolve img.example.com:8443:127.0.0.13"
        " https://img.example.com:8443/img/cat.jpg" in text
    )
    assert "'--host-resolver-rules=MAP *.example.com 127.0.0.13'" in text
    assert "--ignore-certificate-errors-spki-list=h=" in text
    assert "https://cdn.example.com:8443/feed.html" in text
    spec = edge_spec(dataclasses.replace(plan, tls=tls), plan.edges[0])
    start = spec.argv.index("--config")
    assert spec.argv[start : start + 8] == (
        "--config", "/d/e.toml", "--tls-listen", f"{plan.edges[0].content.host}:8443",
        "--tls-cert", "/d/e.pem", "--tls-key", "/d/e.key",
    )  # fmt: skip


def test_zipf_popularity_decreases_and_stream_is_seeded() -> None:
    weights = zipf_weights(len(OBJECTS))
    assert weights == sorted(weights, reverse=True) and weights[0] == 1.0
    a = [next(requests(random.Random(1))) for _ in range(1)]
    b = [next(requests(random.Random(1))) for _ in range(1)]
    assert a == b
    stream = requests(random.Random(2))
    counts: dict[str, int] = {}
    for _ in range(4000):
        path = next(stream).path
        counts[path] = counts.get(path, 0) + 1
    assert counts[OBJECTS[0]] > counts.get(OBJECTS[-1], 0) * 5


@pytest.mark.parametrize(
    ("header", "verdict"),
    [
        ("georouter-edge; hit; ttl=86400", "hit"),
        ("georouter-edge; fwd=uri-miss; fwd-status=200; stored", "uri-miss"),
        ("origin-cache; hit, georouter-edge; fwd=stale", "stale"),
        (None, "none"),
        ("georouter-edge", "other"),
    ],
)
def test_cache_verdict_reads_the_nearest_cache_rfc9211_2(header: str | None, verdict: str) -> None:
    assert cache_verdict(header) == verdict


def test_table_tolerates_missing_and_malformed_figures() -> None:
    body = {
        "nodes": [
            {"name": "edge-eu-1", "region": "eu", "state": "up", "utilization": 0.25,
             "rps": 50.0, "cache_hit_ratio": 0.9, "tunnels": 3},
            {"name": "edge-eu-2", "region": "eu", "state": "down", "utilization": "x", "rps": None},
            "garbage",
        ]
    }  # fmt: skip
    rows = rows_from_json(body, {"edge-eu-1": 12})
    table = render_table(rows, "12:00:00")
    assert re.search(r"edge-eu-1\s+eu\s+up\s+25%\s+50\s+90%\s+3\s+12", table)
    assert re.search(r"edge-eu-2\s+eu\s+down\s+-\s+-\s+-\s+-\s+-", table)
    assert rows_from_json(["not", "an object"], {}) == []


def test_answer_totals_come_from_the_prometheus_text() -> None:
    text = (
        "# HELP georouter_answers_total Edge node addresses handed out.\n"
        "# TYPE georouter_answers_total counter\n"
        'georouter_answers_total{region="eu",node="edge-eu-1"} 5.0\n'
        'georouter_answers_total{region="na",node="edge-eu-1"} 2.0\n'
        'georouter_answers_total{region="eu",node="edge-eu-2"} 1.0\n'
    )
    assert answers_by_node(text) == {"edge-eu-1": 7, "edge-eu-2": 1}


# ---- supervisor ----------------------------------------------------------------------------


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


async def test_supervisor_returns_the_ready_line_and_stops_by_pid(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    code = "import sys,time; print('event=listening x=1:2', file=sys.stderr); time.sleep(60)"
    fields = await sup.start(ChildSpec("sleeper", _python(code)))
    assert fields == {"event": "listening", "x": "1:2"}
    pid = sup.children[0].pid
    await sup.stop_all()
    assert sup.children[0].process.returncode == -signal.SIGTERM
    assert not Path(f"/proc/{pid}").exists()


async def test_supervisor_fails_fast_when_a_child_dies_at_start(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    code = "import sys; print('cannot bind', file=sys.stderr); sys.exit(3)"
    with pytest.raises(
        DemoError, match=r"(?s)broken \(pid \d+\) exited with code 3.*\| cannot bind"
    ):
        await sup.start(ChildSpec("broken", _python(code)), timeout_s=10)
    await sup.stop_all()


async def test_supervisor_times_out_a_silent_child(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    with pytest.raises(DemoError, match=r"not listening after 0\.3 s"):
        await sup.start(ChildSpec("mute", _python("import time; time.sleep(60)")), timeout_s=0.3)
    await sup.stop_all()
    assert sup.children[0].process.returncode is not None


async def test_supervisor_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    code = (
        "import signal,sys,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('event=listening', file=sys.stderr, flush=True); time.sleep(60)"
    )
    await sup.start(ChildSpec("stubborn", _python(code)))
    await sup.stop_all(grace_s=0.3)
    assert sup.children[0].process.returncode == -signal.SIGKILL


# A child that logs when SIGTERM arrives and when it exits, holding on a moment as a draining
# edge does (CLOCK_MONOTONIC is one clock for every process on the machine).
STOP_RECORDER = """import signal, sys, time
def term(*_):
    print(f"term={time.monotonic()}", file=sys.stderr, flush=True)
    time.sleep(0.3)
    print(f"exit={time.monotonic()}", file=sys.stderr, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("event=listening", file=sys.stderr, flush=True)
while True:
    time.sleep(1)
"""


async def test_supervisor_stops_router_then_edges_together_then_origin(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    layers = {
        "origin": ORIGIN_LAYER,
        "edge-a": EDGE_LAYER,
        "edge-b": EDGE_LAYER,
        "router": ROUTER_LAYER,
    }
    for name, layer in layers.items():
        await sup.start(ChildSpec(name, _python(STOP_RECORDER), layer=layer))
    await sup.stop_all()
    times = {c.spec.name: parse_logfmt(" ".join(c.tail)) for c in sup.children}
    term = {name: float(t["term"]) for name, t in times.items()}
    exit_ = {name: float(t["exit"]) for name, t in times.items()}
    edges = ("edge-a", "edge-b")
    assert exit_["router"] < min(term[e] for e in edges)  # router gone before edges drain
    assert max(term[e] for e in edges) < min(exit_[e] for e in edges)  # edges drain together
    assert max(exit_[e] for e in edges) < term["origin"]  # origin serves until they are done


async def test_supervisor_child_shares_its_session_in_a_group_of_its_own(tmp_path: Path) -> None:
    # The session (hence the CPU autogroup) is the supervisor's; a group of its own keeps a
    # terminal's Ctrl-C off it and lets SIGKILL take its whole tree.
    sup = Supervisor(tmp_path)
    await sup.start(ChildSpec("tree", ("sh", "-c", "sleep 60 & sleep 61 & wait"), None))
    child = sup.children[0]
    assert os.getsid(child.pid) == os.getsid(0)
    assert os.getpgid(child.pid) == child.pid != os.getpgid(0)
    sleeps = await poll(lambda: _kids(child.pid), lambda k: len(k) == 2, 10, "two sleeps")
    sup.kill(child)
    await sup.stop_all()
    await poll(lambda: _alive(sleeps), lambda alive: not alive, 10, "the sleeps to die")


async def _kids(pid: int) -> list[int]:
    return _children_of(pid)


async def _alive(pids: list[int]) -> list[int]:
    return [pid for pid in pids if _running(pid)]


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return ") Z " not in stat.read_text()
    return False


LONG_LINE_BYTES = 200 * 1024  # over the pipe buffer and StreamReader's 64 KiB line limit


async def test_supervisor_drains_a_line_longer_than_the_reader_limit(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    code = (
        "import sys,time; err = sys.stderr.buffer; "
        f"err.write(b'x' * {LONG_LINE_BYTES} + b'\\n'); "
        "err.write(b'event=listening x=1\\n'); err.flush(); time.sleep(60)"
    )
    assert await sup.start(ChildSpec("chatty", _python(code)), timeout_s=10) == {
        "event": "listening",
        "x": "1",
    }
    await sup.stop_all()
    child = sup.children[0]
    assert child.process.returncode == -signal.SIGTERM
    assert child.log_path.read_bytes() == b"x" * LONG_LINE_BYTES + b"\nevent=listening x=1\n"


async def test_supervisor_failure_shows_the_start_of_a_long_last_line(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path)
    code = f"import sys; sys.stderr.write('y' * {LONG_LINE_BYTES}); sys.exit(4)"
    with pytest.raises(DemoError, match=r"exited with code 4") as failure:
        await sup.start(ChildSpec("unended", _python(code)), timeout_s=10)
    await sup.stop_all()
    assert str(failure.value).endswith("| " + "y" * LINE_START_BYTES)
    assert sup.children[0].log_path.stat().st_size == LONG_LINE_BYTES


@given(st.lists(st.binary(max_size=40)), st.lists(st.integers(1, 30), min_size=1))
def test_split_lines_rejoins_chunked_output(lines: list[bytes], cuts: list[int]) -> None:
    lines = [line.replace(b"\n", b"") for line in lines]
    text = b"".join(line + b"\n" for line in lines)
    found: list[bytes] = []
    pending, at, i = b"", 0, 0
    while at < len(text):
        chunk = text[at : at + cuts[i % len(cuts)]]
        at, i = at + len(chunk), i + 1
        complete, pending = split_lines(pending, chunk, keep=64)
        found += complete
    assert found == lines and pending == b""


def test_split_lines_keeps_only_the_start_of_an_unended_line() -> None:
    lines, rest = split_lines(b"", b"ok\n" + b"z" * 5000, keep=100)
    assert lines == [b"ok"] and rest == b"z" * 100
    lines, rest = split_lines(rest, b"z" * 5000 + b"\nnext", keep=100)
    assert lines == [b"z" * 5100] and rest == b"next"


def test_busy_port_is_named() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(DemoError, match=rf"127\.0\.0\.1:{port}/tcp is already in use"):
            check_ports_free([("127.0.0.1", port, "tcp")])


# ---- the whole CDN -------------------------------------------------------------------------


@pytest.fixture
async def cdn(tmp_path: Path) -> AsyncIterator[Cdn]:
    async with start_cdn(tmp_path) as running:
        yield running


async def _traffic(cdn: Cdn, stop: asyncio.Event) -> int:
    """Clients in each region resolving and fetching until stopped; returns requests made."""
    made = 0
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while not stop.is_set():
            for subnet in SUBNETS.values():
                try:
                    ips = await cdn.resolve(subnet)
                    async with session.get(f"http://{ips[0]}:{cdn.plan.content_port}/"):
                        made += 1
                except (*TRANSIENT, IndexError):
                    pass  # a just-killed edge refuses until its answers expire
            await asyncio.sleep(0.05)
    return made


@pytest.mark.timeout(60)
async def test_failover_kill9_then_region_then_recovery(cdn: Cdn) -> None:
    eu, na = SUBNETS["eu"], cdn.ips("na")
    eu1, eu2 = cdn.ip("edge-eu-1"), cdn.ip("edge-eu-2")
    assert set(await cdn.resolve(eu)) == {eu1, eu2}
    stop = asyncio.Event()
    traffic = asyncio.create_task(_traffic(cdn, stop))
    try:
        cdn.supervisor.kill(cdn.child("edge-eu-1"))
        killed_at = time.monotonic()
        answer = await poll(lambda: cdn.resolve(eu), lambda ips: eu1 not in ips, 5, "eu-1 out")
        took = time.monotonic() - killed_at
        assert took <= 3.0, f"a crashed edge stayed in answers for {took:.2f} s"
        assert answer == [eu2]  # the other eu edge, and only it

        cdn.supervisor.kill(cdn.child("edge-eu-2"))
        answer = await poll(lambda: cdn.resolve(eu), lambda ips: eu2 not in ips, 5, "eu-2 out")
        assert answer and set(answer) <= na  # eu fails over to its first choice, na

        await asyncio.gather(cdn.restart_edge("edge-eu-1"), cdn.restart_edge("edge-eu-2"))
        answer = await poll(lambda: cdn.resolve(eu), lambda ips: set(ips) == {eu1, eu2}, 10, "back")
    finally:
        stop.set()
        assert await traffic > 0


@pytest.fixture
async def cdn_slow_drain(tmp_path: Path) -> AsyncIterator[Cdn]:
    async with start_cdn(tmp_path, drain_s=3.0) as running:
        yield running


# The edge reports `draining` the moment it gets SIGTERM and the router applies a report at
# once, so the node leaves the answers well within this. Without that immediate report the
# next periodic one (edge REPORT_INTERVAL_S, 1 s) or two failed probes of its 503 /healthz
# (about 2 s) would take it out: both later than this bound when SIGTERM follows a report.
DRAIN_NOTICE_S = 0.5


async def _just_after_a_report(cdn: Cdn, node: str) -> None:
    """Return as soon as the router has taken a new periodic report from `node`."""
    async with aiohttp.ClientSession() as session:
        seq = (await cdn.nodes(session))[node]["seq"]
        await poll(lambda: cdn.nodes(session), lambda n: n[node]["seq"] != seq, 5, "a report")


@pytest.mark.timeout(60)
async def test_drain_leaves_answers_at_once_before_it_stops_serving(cdn_slow_drain: Cdn) -> None:
    cdn = cdn_slow_drain
    eu1 = cdn.ip("edge-eu-1")
    child = cdn.child("edge-eu-1")
    url = cdn.content_url("edge-eu-1", "/img/cat.jpg")
    fetches: list[tuple[float, int | str]] = []
    stop = asyncio.Event()

    async def fetch_forever() -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    async with session.get(url) as r:
                        await r.read()
                        fetches.append((time.monotonic(), r.status))
                except (OSError, aiohttp.ClientError) as exc:
                    fetches.append((time.monotonic(), type(exc).__name__))
                await asyncio.sleep(0.02)

    fetcher = asyncio.create_task(fetch_forever())
    await poll(lambda: asyncio.sleep(0, len(fetches)), lambda n: n > 3, 5, "fetching")
    await _just_after_a_report(cdn, "edge-eu-1")
    child.process.send_signal(signal.SIGTERM)
    signalled_at = time.monotonic()
    answer = await poll(lambda: cdn.resolve(SUBNETS["eu"]), lambda ips: eu1 not in ips, 3, "out")
    left_answers_at = time.monotonic()
    took = left_answers_at - signalled_at
    assert took <= DRAIN_NOTICE_S, f"a draining edge stayed in answers for {took:.2f} s"
    assert child.process.returncode is None, "the edge stopped before it left the answers"
    assert answer == [cdn.ip("edge-eu-2")]
    assert await asyncio.wait_for(child.process.wait(), 10) == 0
    stop.set()
    await fetcher
    served = [status for at, status in fetches if at <= left_answers_at]
    assert served and all(status == 200 for status in served), served


@pytest.mark.timeout(60)
async def test_whole_path_resolve_fetch_hit_purge_miss(cdn: Cdn) -> None:
    ips = await cdn.resolve(SUBNETS["ap"])
    assert ips and set(ips) <= cdn.ips("ap")
    url = f"http://{ips[0]}:{cdn.plan.content_port}/img/dog.jpg"
    headers = {"Host": "cdn.example.com"}
    edge = next(e for e in cdn.plan.edges if e.content.host == ips[0])
    async with aiohttp.ClientSession(headers=headers) as s:
        verdicts = []
        for _ in range(2):
            async with s.get(url) as r:
                assert r.status == 200 and len(await r.read()) > 50_000
                verdicts.append(cache_verdict(r.headers.get("Cache-Status")))
        purge = {"url": "http://cdn.example.com/img/dog.jpg"}
        auth = {"Authorization": f"Bearer {edge.token}"}  # the edge's own credential
        async with s.post(f"http://{edge.control}/purge", json=purge, headers=auth) as r:
            assert r.status == 200 and (await r.json())["purged"] >= 1
        async with s.get(url) as r:
            verdicts.append(cache_verdict(r.headers.get("Cache-Status")))
    assert verdicts[1] == "hit"
    assert verdicts[0] != "hit" and verdicts[2] != "hit", verdicts


@pytest.mark.timeout(60)
async def test_demo_workload_is_bounded_and_served_by_each_clients_region(cdn: Cdn) -> None:
    workload = Workload(cdn.dns, "cdn.example.com", cdn.plan.content_port)
    stats = await workload.run(duration_s=20, max_requests=300, rate_rps=1000)
    assert stats.requests == 300 and stats.errors == 0, stats
    assert stats.by_status["hit"] > 150  # Zipf popularity: the hot objects are cached
    # Clients were in all three regions, so each region's edges served some of the requests.
    served: dict[str, float] = {}
    async with aiohttp.ClientSession() as session:
        for edge in cdn.plan.edges:
            async with session.get(f"http://{edge.control}/metrics") as r:
                text = await r.text()
            count = sum(
                float(v) for v in re.findall(r"^edge_requests_total\{.*\} (\S+)$", text, re.M)
            )
            served[edge.region] = served.get(edge.region, 0.0) + count
    assert sum(served.values()) == 300
    assert all(served[region] > 0 for region in ("na", "eu", "ap")), served


# ---- `georouter demo` itself ---------------------------------------------------------------


def _demo_config(tmp_path: Path) -> tuple[Path, str]:
    """The shipped topology on a fresh block; content/origin use the demo's own ports there."""
    block = loopback_block()
    raw_nodes = load_config(SHIPPED_CONFIG).nodes
    ports = {"dns": free_dns_port(f"{block}1"), "control": free_port(f"{block}1")}
    ports.update({n.name: free_port(block + str(n.ipv4).rsplit(".", 1)[1]) for n in raw_nodes})
    path = tmp_path / "demo.toml"
    path.write_text(relocate_config(SHIPPED_CONFIG.read_text(), block, ports))
    return path, block


def _children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _read_until(proc: subprocess.Popen[bytes], marker: str, deadline_s: float) -> str:
    """stdout so far, once it contains marker (select: the demo keeps writing, never closes)."""
    assert proc.stdout is not None
    fd, text, end = proc.stdout.fileno(), b"", time.monotonic() + deadline_s
    while marker.encode() not in text:
        if proc.poll() is not None or time.monotonic() > end:
            raise AssertionError(f"no {marker!r} (exit {proc.returncode}): {text.decode()}")
        if select.select([fd], [], [], 0.1)[0]:
            text += os.read(fd, 65536)
    return text.decode()


@pytest.mark.timeout(90)
def test_demo_guide_commands_work_as_printed_then_sigint_stops_everything(tmp_path: Path) -> None:
    if which("dig") is None:
        pytest.skip("dig not installed (Debian bind9-dnsutils; `make test` installs it)")
    config, _ = _demo_config(tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "georouter", "demo", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        guide_text = _read_until(demo, "Stop everything", 30)
        children = _children_of(demo.pid)
        assert len(children) == 10  # origin, router, six edges, two shields
        _wait_all_up(config)
        commands = [line.strip().split("  #")[0].strip() for line in guide_text.splitlines()]
        runs = [(c, _sh(c)) for c in commands if c.startswith(("dig ", "curl ", "georouter "))]
        _check_guide_runs(runs, config)
    finally:
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, err.decode()
    assert b"stopping" in out
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)
    check_ports_free(addresses_needed(make_plan(load_config(config), config, None)))


def _sh(command: str) -> str:
    if command.startswith("georouter "):  # as installed: this interpreter's georouter
        command = f"{shlex.quote(sys.executable)} -m {command}"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=10)
    return done.stdout


def _wait_all_up(config: Path) -> None:
    url = make_plan(load_config(config), config, None).control_url + "/api/v1/nodes"
    end = time.monotonic() + 10
    while time.monotonic() < end:
        out = _sh(f"curl -s {shlex.quote(url)}")
        if out and all(n["state"] == "up" for n in json.loads(out)["nodes"]):
            return
        time.sleep(0.1)
    raise AssertionError("nodes not up")


def _check_guide_runs(runs: list[tuple[str, str]], config: Path) -> None:
    """The guide's commands, run in order as printed, do what the guide says they do."""
    by_region: dict[str, set[str]] = {}
    for node in load_config(config).nodes:
        if node.role == "edge":  # a shield is never in an answer
            by_region.setdefault(node.region, set()).add(str(node.ipv4))
    digs = [(c, out) for c, out in runs if c.startswith("dig ")]
    assert len(digs) == 3
    for command, out in digs:
        region = next(r for r, subnet in SUBNETS.items() if subnet in command)
        answered = set(re.findall(r"^[^;\s]\S*\s+\d+\s+IN\s+A\s+(\S+)$", out, re.MULTILINE))
        assert answered and answered <= by_region[region], (command, out)
    heads = [out for c, out in runs if c.startswith("curl -sI http://")]
    assert len(heads) == 2 and "; hit" not in heads[0] and "; hit" in heads[1], heads
    # RFC 9211 §2: the shield's member, then the edge's (the guide says both layers show).
    layers = re.search(r"(?im)^cache-status: (shield-\d); .*, (edge-eu-1); ", heads[0])
    assert layers is not None, heads[0]
    # HTTPS with the demo's CA: an image from img., the posts from api. (each its own site).
    image = _output(runs, "https://img.example.com")
    assert image.startswith("HTTP/1.1 200") and "image/jpeg" in image, image
    assert len(json.loads(_output(runs, "https://api.example.com"))["posts"]) == 10
    purged = json.loads(_output(runs, "/api/v1/purge"))["nodes"]
    assert len(purged) == 8 and set(purged.values()) == {"done"}  # shields purged too
    prewarmed = json.loads(_output(runs, "georouter prewarm"))["nodes"]
    assert set(prewarmed) == {"edge-eu-1", "edge-eu-2"}, prewarmed
    assert all(p["state"] == "done" and p["fetched"] + p["cached"] == 1
               for p in prewarmed.values()), prewarmed  # fmt: skip
    assert "georouter_answers_total{" in _output(runs, "/metrics")
    nodes = json.loads(_output(runs, "/api/v1/nodes"))["nodes"]
    assert sorted(n["role"] for n in nodes) == ["edge"] * 6 + ["shield"] * 2
    drained = re.search(r"/nodes/([\w-]+)/drain", next(c for c, _ in runs if "/drain" in c))
    assert drained is not None
    eu_dig = digs[0][0]  # the guide's first dig asks from an eu subnet
    assert str(load_node_ip(config, drained.group(1))) not in _sh(eu_dig)


def _output(runs: list[tuple[str, str]], fragment: str) -> str:
    return next(out for command, out in runs if fragment in command)


def load_node_ip(config: Path, name: str) -> str:
    return next(str(n.ipv4) for n in load_config(config).nodes if n.name == name)


@pytest.mark.parametrize(
    ("command", "prog"),
    [(("georouter", "demo"), "georouter"), (("cdnlab",), "cdnlab")],
    ids=["georouter-demo", "cdnlab"],
)
def test_demo_exits_2_with_one_line_when_a_port_is_busy(
    tmp_path: Path, command: tuple[str, ...], prog: str
) -> None:
    config, block = _demo_config(tmp_path)
    with socket.socket() as busy:
        busy.bind((f"{block}13", 8080))
        busy.listen()
        done = subprocess.run(
            [sys.executable, "-m", *command, "--config", str(config)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{prog}: {block}13:8080/tcp is already in use (is another demo running?)"
    ]


@pytest.mark.parametrize(
    ("command", "prog"),
    [(("georouter", "demo"), "georouter"), (("cdnlab",), "cdnlab")],
    ids=["georouter-demo", "cdnlab"],
)
def test_demo_load_without_the_demo_extra_says_how_to_install_it(
    command: tuple[str, ...], prog: str
) -> None:
    # dnspython blocked as if the `demo` extra were not installed (find_spec then says None).
    code = (
        "import runpy, sys; sys.modules['dns'] = None; "
        f"sys.argv = [{command[0]!r}, *{list(command[1:])!r}, '--load']; "
        f"runpy.run_module({command[0]!r}, run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{prog}: --load needs dnspython, the demo extra: pip install 'georouter[demo]'"
    ]


def _child_running(parent: int, fragment: str) -> int:
    for pid in _children_of(parent):
        if fragment in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode():
            return pid
    raise AssertionError(f"no child of {parent} runs {fragment!r}")


@pytest.mark.timeout(90)
def test_demo_keeps_its_logs_and_shows_the_tail_when_the_router_dies(tmp_path: Path) -> None:
    config, _ = _demo_config(tmp_path)
    demo = subprocess.Popen(
        [sys.executable, "-m", "georouter", "demo", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    try:
        _read_until(demo, "Stop everything", 30)
        children = _children_of(demo.pid)
        router = _child_running(demo.pid, "georouter serve")
        os.kill(router, signal.SIGKILL)
        out, err = demo.communicate(timeout=60)
    finally:
        if demo.returncode is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 1, err.decode()
    (log_dir,) = tmp_path.glob("georouter-demo-*")
    notice = re.search(
        rf"router \(pid {router}\) exited with code -9; log {re.escape(str(log_dir))}/router\.log"
        r"((?:\n  \| .*)+)\n",
        out.decode(),
    )
    assert notice is not None, out.decode()
    assert "event=listening" in notice.group(1)  # the router's own last lines
    assert f"logs kept in {log_dir}" in out.decode()
    assert {"router.log", "origin.log", "edge-eu-1.log"} <= {p.name for p in log_dir.iterdir()}
    assert all(not Path(f"/proc/{pid}").exists() for pid in children)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda text: re.sub(r"services = \[[^]]*\]", "services = []", text),
            "zones[0].services: expected a name to serve",
        ),
        (
            lambda text: re.sub(r'ipv4 = "127\.0\.0\.(\d+)"', r'ipv6 = "::1"', text),
            "nodes: expected a node with an ipv4 address",
        ),
    ],
    ids=["no-service", "no-ipv4-node"],
)
def test_demo_exits_2_naming_the_key_when_it_has_nothing_to_serve(
    tmp_path: Path, edit: Callable[[str], str], message: str
) -> None:
    config = tmp_path / "cdn.toml"
    config.write_text(edit(SHIPPED_CONFIG.read_text()))
    load_config(config)  # a valid router config: only the demo cannot run it
    done = subprocess.run(
        [sys.executable, "-m", "georouter", "demo", "--config", str(config)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (done.returncode, done.stderr.splitlines()) == (2, [f"georouter: {config}: {message}"])
