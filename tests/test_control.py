"""Control API over a real loopback server, and the prober against fake edges."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cdn.prewarm import HotObject
from cdn.report import MAX_REPORT_BYTES, LoadReport
from cdnlab.simulation import make_config
from georouter.config import HealthSettings, Node, Policy, Region
from georouter.control import ControlPlane, make_control_app, observer
from georouter.controller import Controller
from georouter.credentials import Credentials
from georouter.fleet import Fleet
from georouter.metrics import RouterMetrics
from georouter.prewarm import PrewarmTask
from georouter.prober import Prober
from georouter.selector import Selector
from tests.origin_app import poll

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NODES = (
    Node("edge-eu-1", "eu", 2000.0, "http://127.0.0.1:1", IPv4Address("127.0.0.13")),
    Node("edge-eu-2", "eu", 1000.0, "http://127.0.0.1:1", IPv4Address("127.0.0.14")),
)
CONFIG = make_config((Region("eu", 50.1, 8.7),), NODES, Policy("eu"))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_plane(clock: Clock, state_dir: Path) -> ControlPlane:
    config = replace(CONFIG, router=replace(CONFIG.router, state_dir=state_dir))
    metrics = RouterMetrics()
    selector = Selector(config.policy, config.regions, random.Random(1))
    fleet = Fleet(config, selector.update, observer(metrics))
    controller = Controller(config=config, fleet=fleet, metrics=metrics)
    return ControlPlane(fleet, selector, metrics, Credentials.of(config), controller, clock)


def rotated(plane: ControlPlane, tokens: tuple[str, ...]) -> Credentials:
    nodes = dict.fromkeys(plane.credentials.nodes, tokens)
    return Credentials(nodes=nodes, operator=tokens, shared_nodes=tuple(nodes))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def plane(clock: Clock, tmp_path: Path) -> ControlPlane:
    return make_plane(clock, tmp_path / "state")


@pytest.fixture
async def client(plane: ControlPlane) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(make_control_app(plane), host="127.0.0.1")) as c:
        yield c


def body(node: str = "edge-eu-1", seq: int = 1, utilization: float = 0.3) -> bytes:
    return LoadReport(node, seq, "up", 4, 600.0, 2000.0, utilization, 0.8).to_json()


def hot_body(url: str) -> bytes:
    report = json.loads(body())
    report["hot"] = [[url, 1]]
    return json.dumps(report).encode()


def sample(text: str, name: str) -> float | None:
    """The value of one exposition line by its exact series name, None if absent."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


Client = TestClient[web.Request, web.Application]


async def test_report_with_token_is_accepted(client: Client, plane: ControlPlane) -> None:
    response = await client.post("/api/v1/report", data=body(), headers=AUTH)
    assert response.status == 200
    assert (await response.json()) == {"result": "accepted"}
    assert plane.fleet.statuses["edge-eu-1"].utilization == 0.3


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"bearer{TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ],
)
async def test_report_without_right_token_is_401_rfc6750_3(
    client: Client, plane: ControlPlane, headers: dict[str, str]
) -> None:
    response = await client.post("/api/v1/report", data=body(), headers=headers)
    assert response.status == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer")
    # RFC 6750 §3.1: invalid_token for a token that is wrong, no code when none was sent.
    assert ('error="invalid_token"' in challenge) == bool(headers)
    assert plane.fleet.statuses["edge-eu-1"].report is None


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_bearer_scheme_is_case_insensitive_rfc9110_11_1(
    client: Client, plane: ControlPlane, scheme: str
) -> None:
    headers = {"Authorization": f"{scheme} {TOKEN}"}
    response = await client.post("/api/v1/report", data=body(), headers=headers)
    assert response.status == 200
    response = await client.post("/api/v1/nodes/edge-eu-1/drain", headers=headers)
    assert response.status == 200


async def test_non_utf8_authorization_is_401_and_counted(client: Client) -> None:
    # aiohttp's client will not send such bytes: a raw HTTP/1.1 request does.
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    payload = body()
    writer.write(
        b"POST /api/v1/report HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Authorization: Bearer \xff\xfe\xc3(\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.split()[1] == b"401"
    text = await (await client.get("/metrics")).text()
    assert sample(text, 'georouter_reports_total{result="unauthorized"}') == 1.0


async def test_previous_tokens_are_accepted_during_a_rotation(
    client: Client, plane: ControlPlane
) -> None:
    # What a reload with previous_tokens = [old] does (the shared router.token).
    plane.credentials = rotated(plane, ("new-token", TOKEN))
    for token in ("new-token", TOKEN):
        headers = {"Authorization": f"Bearer {token}"}
        response = await client.post("/api/v1/report", data=body(seq=1), headers=headers)
        assert response.status == 200
        drain = await client.post("/api/v1/nodes/edge-eu-2/drain", headers=headers)
        assert drain.status == 200
    plane.credentials = rotated(plane, ("new-token",))  # rotation over
    assert (await client.post("/api/v1/report", data=body(), headers=AUTH)).status == 401


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (b"{not json", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"node": "edge-eu-1"}', "seq"),
        (body().replace(b'"up"', b'"sideways"'), "status"),
        (b" " * (MAX_REPORT_BYTES + 1), "larger than"),
        # urlsplit raises ValueError ("Invalid IPv6 URL"), not a ReportError: was a 500
        (hot_body("http://[::1/x"), "hot: expected an absolute http:// URL"),
    ],
)
async def test_bad_report_body_is_400_with_the_reason(
    client: Client, data: bytes, detail: str
) -> None:
    response = await client.post("/api/v1/report", data=data, headers=AUTH)
    assert response.status == 400
    assert detail in (await response.json())["error"]


async def test_oversized_report_is_refused_413(client: Client) -> None:
    response = await client.post("/api/v1/report", data=b" " * 100_000, headers=AUTH)
    assert response.status == 413


async def test_report_for_unknown_node_is_404(client: Client) -> None:
    response = await client.post("/api/v1/report", data=body("edge-mars-1"), headers=AUTH)
    assert response.status == 404


async def test_stale_report_is_acknowledged_but_ignored(
    client: Client, plane: ControlPlane
) -> None:
    await client.post("/api/v1/report", data=body(seq=10, utilization=0.3), headers=AUTH)
    response = await client.post("/api/v1/report", data=body(seq=9, utilization=0.9), headers=AUTH)
    assert (response.status, await response.json()) == (200, {"result": "stale"})
    assert plane.fleet.statuses["edge-eu-1"].utilization == 0.3


async def test_reports_are_counted_by_result(client: Client) -> None:
    await client.post("/api/v1/report", data=body(), headers=AUTH)
    await client.post("/api/v1/report", data=body())
    await client.post("/api/v1/report", data=b"{", headers=AUTH)
    await client.post("/api/v1/report", data=body("edge-x"), headers=AUTH)
    text = await (await client.get("/metrics")).text()
    for result in ("accepted", "unauthorized", "rejected", "unknown_node"):
        assert sample(text, f'georouter_reports_total{{result="{result}"}}') == 1.0


async def test_drain_and_undrain(client: Client, plane: ControlPlane) -> None:
    plane.fleet.apply_probe("edge-eu-1", True, 100.0)
    response = await client.post("/api/v1/nodes/edge-eu-1/drain", headers=AUTH)
    assert (response.status, await response.json()) == (
        200,
        {"node": "edge-eu-1", "state": "draining"},
    )
    assert plane.selector.pick("eu", 4).reason == "fail_open"  # at once, no eligible node
    response = await client.post("/api/v1/nodes/edge-eu-1/undrain", headers=AUTH)
    assert (await response.json())["state"] == "up"
    assert [n.name for n in plane.selector.pick("eu", 4).nodes] == ["edge-eu-1"]


@pytest.mark.parametrize("action", ["drain", "undrain"])
async def test_drain_needs_the_token_and_a_known_node(client: Client, action: str) -> None:
    assert (await client.post(f"/api/v1/nodes/edge-eu-1/{action}")).status == 401
    response = await client.post(f"/api/v1/nodes/edge-mars-1/{action}", headers=AUTH)
    assert response.status == 404


async def test_nodes_lists_state_load_probe_and_answers(
    client: Client, plane: ControlPlane, clock: Clock
) -> None:
    plane.fleet.apply_probe("edge-eu-1", True, 100.0)
    await client.post("/api/v1/report", data=body(seq=3), headers=AUTH)
    plane.selector.pick("eu", 4)
    clock.now = 101.5
    data = await (await client.get("/api/v1/nodes")).json()
    node = next(n for n in data["nodes"] if n["name"] == "edge-eu-1")
    assert node["state"] == "up" and node["region"] == "eu"
    assert (node["utilization"], node["rps"], node["inflight"], node["seq"]) == (0.3, 600.0, 4, 3)
    assert (node["report_age_s"], node["last_probe_ok"], node["last_probe_age_s"]) == (
        1.5,
        True,
        1.5,
    )
    assert node["answers_since_report"] == 1
    other = next(n for n in data["nodes"] if n["name"] == "edge-eu-2")
    assert (other["state"], other["rps"], other["report_age_s"]) == ("unknown", None, None)


async def test_healthz(client: Client, plane: ControlPlane) -> None:
    plane.fleet.apply_probe("edge-eu-2", True, 100.0)
    data = await (await client.get("/healthz")).json()
    assert data == {
        "status": "ok",
        "snapshot_version": plane.fleet.snapshot.version,
        "nodes_up": 1,
        "nodes_total": 2,
    }


async def test_metrics_exposition_has_node_gauges(
    client: Client, plane: ControlPlane, clock: Clock
) -> None:
    await client.post("/api/v1/report", data=body(utilization=0.4), headers=AUTH)
    plane.fleet.apply_probe("edge-eu-2", False, 100.0)
    plane.fleet.apply_probe("edge-eu-2", False, 101.0)
    clock.now = 102.0
    response = await client.get("/metrics")
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = await response.text()
    assert sample(text, 'georouter_node_healthy{node="edge-eu-1",region="eu"}') == 1.0
    assert sample(text, 'georouter_node_healthy{node="edge-eu-2",region="eu"}') == 0.0
    assert sample(text, 'georouter_node_state{node="edge-eu-2",state="down"}') == 1.0
    assert sample(text, 'georouter_node_utilization{node="edge-eu-1",region="eu"}') == 0.4
    assert sample(text, 'georouter_node_report_age_seconds{node="edge-eu-1"}') == 2.0
    assert sample(text, 'georouter_node_state_changes_total{node="edge-eu-2",state="down"}') == 1
    assert sample(text, "georouter_fleet_snapshot_version") == plane.fleet.snapshot.version


async def test_gauges_of_nodes_removed_by_reload_disappear(
    client: Client, plane: ControlPlane
) -> None:
    await client.post("/api/v1/report", data=body("edge-eu-2"), headers=AUTH)
    series = (
        'georouter_node_healthy{node="edge-eu-2",region="eu"}',
        'georouter_node_state{node="edge-eu-2",state="up"}',
        'georouter_node_report_age_seconds{node="edge-eu-2"}',
    )
    text = await (await client.get("/metrics")).text()
    assert all(sample(text, name) is not None for name in series)
    plane.fleet.reconfigure(make_config(CONFIG.regions, NODES[:1], CONFIG.policy))
    text = await (await client.get("/metrics")).text()
    assert all(sample(text, name) is None for name in series)


async def test_report_age_series_goes_when_a_reload_resets_the_node(
    client: Client, plane: ControlPlane, clock: Clock
) -> None:
    series = 'georouter_node_report_age_seconds{node="edge-eu-1"}'
    await client.post("/api/v1/report", data=body(), headers=AUTH)
    clock.now += 1.5
    assert sample(await (await client.get("/metrics")).text(), series) == 1.5
    moved = replace(NODES[0], control_url="http://127.0.0.2:1")  # a new process: no report
    plane.fleet.reconfigure(make_config(CONFIG.regions, (moved, NODES[1]), CONFIG.policy))
    assert sample(await (await client.get("/metrics")).text(), series) is None


# --- prober -----------------------------------------------------------------------------


async def _fake_edge(status: int = 200, delay: float = 0.0, location: str = "") -> TestServer:
    async def healthz(request: web.Request) -> web.Response:
        if delay:
            await asyncio.sleep(delay)  # a slow edge, not test synchronisation
        headers = {"Location": location} if location else None
        return web.json_response({"status": "up"}, status=status, headers=headers)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


def probes(metrics: RouterMetrics, node: str, result: str) -> float:
    labels = {"node": node, "result": result}
    return metrics.registry.get_sample_value("georouter_probes_total", labels) or 0.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_prober_results_feed_the_fleet() -> None:
    ok = await _fake_edge(200)
    failing = await _fake_edge(503)
    slow = await _fake_edge(200, delay=2.0)
    redirect_target = await _fake_edge(200)
    redirecting = await _fake_edge(302, location=str(redirect_target.make_url("/healthz")))
    urls = {
        "ok": str(ok.make_url("")),
        "failing": str(failing.make_url("")),
        "slow": str(slow.make_url("")),
        "refused": f"http://127.0.0.1:{_closed_port()}",
        "redirect": str(redirecting.make_url("")),
    }
    nodes = tuple(
        Node(name, "eu", 1000.0, url, IPv4Address("127.0.0.1")) for name, url in urls.items()
    )
    health = HealthSettings(probe_interval_s=0.2, probe_timeout_s=0.3, fall=1)
    config = make_config((Region("eu", 0.0, 0.0),), nodes, Policy("eu"), health)
    metrics = RouterMetrics()
    fleet = Fleet(config, lambda _: None)
    prober = Prober(fleet, health, metrics)
    await prober.start()
    try:
        await prober.probe_all()
        states = {name: s.state for name, s in fleet.statuses.items()}
        assert states == {
            "ok": "up",
            "failing": "down",
            "slow": "down",
            "refused": "down",
            "redirect": "down",
        }
        assert probes(metrics, "ok", "ok") >= 1
        assert probes(metrics, "slow", "fail") >= 1
        # The background loop keeps probing at the interval: poll with a deadline.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while probes(metrics, "ok", "ok") < 3:
            assert loop.time() < deadline, "prober loop stalled"
            await asyncio.sleep(0.05)
    finally:
        await prober.stop()
        for server in (ok, failing, slow, redirect_target, redirecting):
            await server.close()


async def test_a_probe_of_a_url_a_reload_replaced_is_not_applied() -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def healthz(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()  # hold the probe in flight while the test reloads
        return web.json_response({"status": "up"})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    old = TestServer(app, host="127.0.0.1")
    await old.start_server()
    node = Node("edge-eu-1", "eu", 1000.0, str(old.make_url("")), IPv4Address("127.0.0.1"))
    health = HealthSettings(probe_interval_s=600.0, probe_timeout_s=5.0)
    config = make_config((Region("eu", 0.0, 0.0),), (node,), Policy("eu"), health)
    fleet = Fleet(config, lambda _: None)
    prober = Prober(fleet, health, RouterMetrics())
    starting = asyncio.create_task(prober.start())
    try:
        await asyncio.wait_for(arrived.wait(), 5.0)
        moved = replace(node, control_url=f"http://127.0.0.1:{_closed_port()}")
        fleet.reconfigure(make_config(config.regions, (moved,), Policy("eu"), health))
        release.set()
        await asyncio.wait_for(starting, 5.0)
        status = fleet.statuses["edge-eu-1"]
        assert (status.state, status.last_probe_at) == ("unknown", None)
    finally:
        release.set()
        await prober.stop()
        await old.close()


async def test_weight_override_steers_the_selector_and_zero_drains(
    client: Client, plane: ControlPlane
) -> None:
    for name in ("edge-eu-1", "edge-eu-2"):
        plane.fleet.apply_probe(name, True, 100.0)
    url = "/api/v1/nodes/edge-eu-2/weight"
    response = await client.post(url, json={"weight": 4}, headers=AUTH)
    assert (await response.json())["weight"] == 4.0
    pool = plane.selector.snapshot.pool("eu", 4)
    assert {c.node.name: c.capacity_rps for c in pool.eligible}["edge-eu-2"] == 4000.0
    response = await client.post(url, json={"weight": 0}, headers=AUTH)
    assert (await response.json())["state"] == "draining"
    assert [n.name for n in plane.selector.pick("eu", 4).nodes] == ["edge-eu-1"]
    for bad in ({"weight": -1}, {"weight": 101}, {"weight": True}, {"w": 1}, [1]):
        assert (await client.post(url, json=bad, headers=AUTH)).status == 400
    assert (await client.post(url, json={"weight": 1})).status == 401


async def test_an_unreachable_node_gets_the_purge_on_its_report_reply(
    client: Client, plane: ControlPlane
) -> None:
    await plane.controller.start()
    try:
        response = await client.post("/api/v1/purge", json={"key": "k1"}, headers=AUTH)
        answer = await response.json()
        # Nothing listens at the nodes' control URLs: refused at once, not "pending".
        assert set(answer["nodes"].values()) == {"failed: ClientConnectorError"}
        reply = await client.post("/api/v1/report", data=body(seq=1), headers=AUTH)
        owed = json.loads(await reply.read())["purges"]
        assert owed == [{"id": answer["id"], "key": "k1"}]
        acked = LoadReport("edge-eu-1", 2, "up", 4, 600.0, 2000.0, 0.3, 0.8, (answer["id"],))
        reply = await client.post("/api/v1/report", data=acked.to_json(), headers=AUTH)
        assert json.loads(await reply.read()) == {"result": "accepted"}
        status = await (await client.get(f"/api/v1/purge/{answer['id']}")).json()
        assert status["nodes"] == {"edge-eu-1": "done", "edge-eu-2": "failed: ClientConnectorError"}
        text = await (await client.get("/metrics")).text()
        assert sample(text, 'georouter_purges_pending{node="edge-eu-2"}') == 1.0
        assert sample(text, 'georouter_purges_total{result="incomplete"}') == 1.0
        assert (await client.get("/api/v1/purge/nope")).status == 404
        assert (await client.post("/api/v1/purge", json={"x": 1}, headers=AUTH)).status == 400
        # urlsplit's ValueError ("Invalid IPv6 URL") is a bad request, not a 500
        bad = await client.post("/api/v1/purge", json={"url": "http://[::1/x"}, headers=AUTH)
        assert bad.status == 400 and "absolute http" in (await bad.json())["error"]
    finally:
        await plane.controller.stop()


@pytest.mark.parametrize("bad_url", ["/img/a.png", "http://[::1/x"])
async def test_a_task_from_the_bus_with_a_bad_url_is_logged_and_skipped(
    plane: ControlPlane, bad_url: str
) -> None:
    """The bus reader caught PrewarmError only: url_host's PurgeError (a relative URL) or
    urlsplit's ValueError ("Invalid IPv6 URL") escaped it."""
    raw = {"id": "t", "urls": [bad_url], "region": "eu", "origin": "api", "created_at": 1.0,
           "targets": ["edge-eu-1"]}  # fmt: skip
    await plane.controller._adopt_prewarm(raw, 1)
    assert len(plane.controller.prewarms) == 0


async def test_routers_make_one_popularity_task_for_one_change(tmp_path: Path) -> None:
    """Every router sees the change and makes its popularity task: with an id of its own
    each, N routers made N tasks and sent each to every target (N^2 POSTs). The id comes
    from the region, targets and popularity_interval_s period, so they are one task."""
    planes = [make_plane(Clock(), tmp_path / name) for name in ("a", "b")]
    now = [1000.0]
    urls = ("http://cdn.example.com/a.png",)
    for plane in planes:
        plane.controller._clock = lambda: now[0]
        await plane.controller.start()
    try:
        a, b = (plane.controller for plane in planes)
        made_a = await a._new_prewarm("eu", urls, None, "popularity", ("edge-eu-2", "edge-eu-1"))
        made_b = await b._new_prewarm("eu", urls, None, "popularity", ("edge-eu-1", "edge-eu-2"))
        assert made_a.id == made_b.id
        again = await a._new_prewarm("eu", urls, None, "popularity", ("edge-eu-1", "edge-eu-2"))
        assert again is made_a and len(a.prewarms) == 1  # known: not made or sent again
        now[0] += CONFIG.prewarm.popularity_interval_s
        later = await a._new_prewarm("eu", urls, None, "popularity", ("edge-eu-1",))
        assert later.id != made_a.id and len(a.prewarms) == 2  # the next period's
    finally:
        for plane in planes:
            await plane.controller.stop()


def test_a_shield_s_hot_set_is_not_its_region_s_popularity(plane: ControlPlane) -> None:
    """A shield's hot set is its children's misses from every region: counting it would
    pre-warm its region's edges with other regions' objects."""
    hot = (HotObject("http://cdn.example.com/a.png", 5),)
    report = replace(LoadReport("edge-eu-1", 1, "up", 4, 600.0, 2000.0, 0.3, 0.8), hot=hot)
    plane.controller.on_prewarm_report(report, replace(NODES[0], role="shield"))
    assert plane.controller.popularity.hot_set("eu", time.monotonic(), 5) == ()
    plane.controller.on_prewarm_report(report, NODES[0])
    assert plane.controller.popularity.hot_set("eu", time.monotonic(), 5) == (hot[0].url,)


async def test_a_node_unreachable_when_a_task_was_made_is_sent_it_when_it_reports(
    plane: ControlPlane,
) -> None:
    """As with purges: a node that missed a pre-warm task (its control port refused) gets
    it once it is reachable again, which its next load report shows; at most every
    PREWARM_RESEND_S, and never a task it already has."""
    controller = plane.controller
    await controller.start()
    try:
        task = await controller._new_prewarm(
            "eu", ("http://cdn.example.com/a.png",), None, "api", ("edge-eu-1", "edge-eu-2")
        )
        assert task.nodes["edge-eu-1"].delivery.startswith("failed")  # port 1 refuses
        sent: list[tuple[str, str | None]] = []

        async def record(t: PrewarmTask, only: str | None = None) -> None:
            sent.append((t.id, only))

        controller._send_prewarm = record  # type: ignore[method-assign]
        report = LoadReport("edge-eu-1", 1, "up", 4, 600.0, 2000.0, 0.3, 0.8)
        controller.on_prewarm_report(report, NODES[0])
        controller.on_prewarm_report(replace(report, seq=2), NODES[0])  # within the period
        await poll(lambda: bool(sent))
        assert sent == [(task.id, "edge-eu-1")]
        controller.prewarms.deliver(task.id, "edge-eu-2", "sent")
        controller._resent.clear()
        controller.on_prewarm_report(replace(report, node="edge-eu-2", seq=3), NODES[1])
        assert controller.prewarms.owed("edge-eu-2") == []
    finally:
        await controller.stop()


async def test_a_round_probes_more_nodes_than_a_connection_pool_holds_at_once() -> None:
    """Every node of a large fleet is probed within one probe timeout, however slow each
    answer: no pool of connections makes the later probes wait inside their timeout
    (aiohttp's default of 100 would take 2 waves of 0.3 s for 120 nodes: 0.6 s)."""
    slow = await _fake_edge(200, delay=0.3)
    url = str(slow.make_url(""))
    nodes = tuple(
        Node(f"edge-{i}", "eu", 1000.0, url, IPv4Address("127.0.0.1")) for i in range(120)
    )
    health = HealthSettings(probe_interval_s=600.0, probe_timeout_s=0.5, rise=1)
    config = make_config((Region("eu", 0.0, 0.0),), nodes, Policy("eu"), health)
    fleet = Fleet(config, lambda _: None)
    prober = Prober(fleet, health, RouterMetrics())
    await prober.start()  # its first round
    try:
        assert {s.state for s in fleet.statuses.values()} == {"up"}
    finally:
        await prober.stop()
        await slow.close()
