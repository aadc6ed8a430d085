"""A credential per node and one for operators, on a real control server (aiohttp client):
a report, a channel, a drain or a purge signed with another holder's token is refused 403
and counted; a topology without per-node tokens keeps the shared router.token working."""

from __future__ import annotations

import json
import random
import re
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from ipaddress import IPv4Address
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from cdn.purge import PURGE_PATH, Purge
from cdn.report import CHANNEL_PATH, LoadReport
from cdnlab.simulation import make_config
from georouter.config import Node, Policy, Region, RouterConfig
from georouter.control import ControlPlane, make_control_app, observer
from georouter.controller import Controller
from georouter.credentials import Credentials, Refusal
from georouter.fanout import fan_out
from georouter.fleet import Fleet
from georouter.metrics import RouterMetrics
from georouter.selector import Selector
from tests.test_router_e2e import _metrics, poll, running_router

A, B = "edge-eu-1", "edge-eu-2"
TOKENS = {A: ("a-new", "a-old"), B: ("b-token",)}
OPERATOR = ("op-new", "op-old")
NODES = (
    Node(A, "eu", 2000.0, "http://127.0.0.1:1", IPv4Address("127.0.0.13"), tokens=TOKENS[A]),
    Node(B, "eu", 1000.0, "http://127.0.0.1:1", IPv4Address("127.0.0.14"), tokens=TOKENS[B]),
)
BASE = make_config((Region("eu", 50.1, 8.7),), NODES, Policy("eu"))
CONFIG = replace(
    BASE,
    router=replace(
        BASE.router, token="", operator_token=OPERATOR[0], previous_operator_tokens=OPERATOR[1:]
    ),
)
Client = TestClient[web.Request, web.Application]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def report(node: str, seq: int = 1, **values: object) -> bytes:
    raw = json.loads(LoadReport(node, seq, "up", 4, 600.0, 2000.0, 0.3, 0.8).to_json())
    return json.dumps(raw | values).encode()


def refused(plane: ControlPlane, action: str, reason: str) -> float:
    labels = {"action": action, "reason": reason}
    value = plane.metrics.registry.get_sample_value("georouter_auth_refused_total", labels)
    return value or 0.0


def make_plane(config: RouterConfig, state_dir: Path) -> ControlPlane:
    config = replace(config, router=replace(config.router, state_dir=state_dir))
    metrics = RouterMetrics()
    selector = Selector(config.policy, config.regions, random.Random(1))
    fleet = Fleet(config, selector.update, observer(metrics))
    controller = Controller(config=config, fleet=fleet, metrics=metrics)
    return ControlPlane(fleet, selector, metrics, Credentials.of(config), controller)


@pytest.fixture
def plane(tmp_path: Path) -> ControlPlane:
    return make_plane(CONFIG, tmp_path / "state")


@pytest.fixture
async def client(plane: ControlPlane) -> AsyncIterator[Client]:
    async with TestClient(TestServer(make_control_app(plane), host="127.0.0.1")) as c:
        yield c


# --- the pure check ---------------------------------------------------------------------------

CREDENTIALS = Credentials.of(CONFIG)


@pytest.mark.parametrize(
    ("header", "node", "expected"),
    [
        ("Bearer a-new", A, None),
        ("Bearer a-old", A, None),  # a rotation: the previous token still works
        ("Bearer b-token", A, Refusal("wrong_node")),
        ("Bearer op-new", A, Refusal("wrong_node")),  # an operator is no node
        ("Bearer nope", A, Refusal("unknown")),
        (None, A, Refusal("missing")),
        ("Basic a-new", A, Refusal("missing")),
        ("Bearer a-new", "edge-unknown", Refusal("wrong_node")),
    ],
)
def test_a_node_is_authorized_by_its_own_token_only(
    header: str | None, node: str, expected: Refusal | None
) -> None:
    assert CREDENTIALS.for_node(header, node) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer op-new", None),
        ("Bearer op-old", None),
        ("Bearer a-new", Refusal("not_operator")),
        ("Bearer b-token", Refusal("not_operator")),
        ("Bearer nope", Refusal("unknown")),
        (None, Refusal("missing")),
    ],
)
def test_operator_actions_need_the_operator_token(header: str | None, expected: object) -> None:
    assert CREDENTIALS.for_operator(header) == expected


def test_statuses_401_for_no_credential_403_for_the_wrong_one() -> None:
    assert [Refusal(r).status for r in ("missing", "unknown", "wrong_node", "not_operator")] == [
        401,
        401,
        403,
        403,
    ]


def test_a_topology_without_node_tokens_shares_router_token() -> None:
    # make_config: router.token = "test-token"; these nodes have no token of their own
    legacy = Credentials.of(replace(BASE, nodes=tuple(replace(n, tokens=()) for n in NODES)))
    assert legacy.shared_nodes == (A, B) and legacy.shared_operator
    assert legacy.for_node("Bearer test-token", A) is None
    assert legacy.for_node("Bearer test-token", B) is None
    assert legacy.for_operator("Bearer test-token") is None
    assert legacy.node_token(B) == "test-token"


def test_the_router_presents_each_node_its_own_current_token() -> None:
    assert [CREDENTIALS.node_token(n) for n in (A, B)] == ["a-new", "b-token"]
    assert not CREDENTIALS.shared_nodes and not CREDENTIALS.shared_operator


# --- the control port ------------------------------------------------------------------------


async def test_a_report_signed_with_another_nodes_token_is_403_and_counted(
    client: Client, plane: ControlPlane
) -> None:
    response = await client.post("/api/v1/report", data=report(A), headers=bearer("b-token"))
    assert response.status == 403
    assert "node" in (await response.json())["error"]
    assert plane.fleet.statuses[A].report is None  # nothing applied
    assert refused(plane, "report", "wrong_node") == 1
    for token in TOKENS[A]:
        ok = await client.post("/api/v1/report", data=report(A, seq=2), headers=bearer(token))
        assert ok.status == 200, token


async def test_an_operator_token_cannot_report(client: Client, plane: ControlPlane) -> None:
    response = await client.post("/api/v1/report", data=report(A), headers=bearer("op-new"))
    assert response.status == 403  # a credential, but no node's
    assert refused(plane, "report", "wrong_node") == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"/api/v1/nodes/{A}/drain", None),
        (f"/api/v1/nodes/{B}/drain", None),
        (f"/api/v1/nodes/{A}/undrain", None),
        (f"/api/v1/nodes/{A}/weight", {"weight": 2}),
        ("/api/v1/purge", {"url": "http://cdn.example.com/a.png"}),
    ],
)
async def test_operator_actions_refuse_every_node_token_403(
    client: Client, plane: ControlPlane, path: str, body: object
) -> None:
    for token in (*TOKENS[A], *TOKENS[B]):
        response = await client.post(path, json=body, headers=bearer(token))
        assert response.status == 403, token
        assert "operator" in (await response.json())["error"]
    assert refused(plane, "operator", "not_operator") == 3
    assert not plane.fleet.statuses[A].api_drained and not plane.fleet.statuses[B].api_drained
    response = await client.post(path, json=body, headers=bearer("nope"))
    assert response.status == 401 and "WWW-Authenticate" in response.headers


async def test_drain_and_weight_with_the_operator_token_and_its_predecessor(
    client: Client, plane: ControlPlane
) -> None:
    drain = await client.post(f"/api/v1/nodes/{A}/drain", headers=bearer("op-new"))
    assert drain.status == 200 and plane.fleet.statuses[A].api_drained
    weight = await client.post(
        f"/api/v1/nodes/{B}/weight", json={"weight": 2}, headers=bearer("op-old")
    )
    assert weight.status == 200


async def test_a_channel_report_for_another_node_is_refused_and_closes_it(
    client: Client, plane: ControlPlane
) -> None:
    async with client.ws_connect(CHANNEL_PATH, headers=bearer("b-token")) as ws:
        await ws.send_str(report(A).decode())
        reply = await ws.receive()
        assert reply.type == WSMsgType.TEXT and "node" in json.loads(reply.data)["error"]
        closing = await ws.receive()
        assert closing.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING)
    assert plane.fleet.statuses[A].report is None
    assert refused(plane, "channel", "wrong_node") == 1
    async with client.ws_connect(CHANNEL_PATH, headers=bearer("b-token")) as ws:
        await ws.send_str(report(B).decode())
        assert json.loads((await ws.receive()).data)["result"] == "accepted"


async def test_a_channel_needs_some_nodes_token_before_the_upgrade(
    client: Client, plane: ControlPlane
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect(CHANNEL_PATH, headers=bearer("op-new"))
    assert caught.value.status == 403
    assert refused(plane, "channel", "wrong_node") == 1


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        ({"utilization": float("nan")}, "utilization"),
        ({"utilization": float("inf")}, "utilization"),
        ({"utilization": -0.1}, "utilization"),
        ({"utilization": 101}, "utilization"),
        ({"rps": -1}, "rps"),
        ({"capacity_rps": 1e10}, "capacity_rps"),
        ({"cache_hit_ratio": 1.5}, "cache_hit_ratio"),
        ({"inflight": -3}, "inflight"),
        ({"seq": 2**60}, "seq"),
        ({"seq": True}, "seq"),
        ({"tunnels": 2**40}, "tunnels"),
    ],
)
async def test_report_values_out_of_bounds_are_400_with_the_reason(
    client: Client, plane: ControlPlane, values: dict[str, object], reason: str
) -> None:
    response = await client.post(
        "/api/v1/report", data=report(A, **values), headers=bearer("a-new")
    )
    assert response.status == 400
    assert (await response.json())["error"].startswith(reason + ":")
    assert plane.fleet.statuses[A].report is None


# --- the purge fan-out ------------------------------------------------------------------------


async def test_the_fan_out_presents_each_edge_its_own_token() -> None:
    seen: dict[str, str] = {}

    def edge(name: str) -> web.Application:
        async def purge(request: web.Request) -> web.Response:
            seen[name] = request.headers.get("Authorization", "")
            return web.json_response({"purged": 0})

        app = web.Application()
        app.router.add_post(PURGE_PATH, purge)
        return app

    servers = {n: TestServer(edge(n), host="127.0.0.1") for n in (A, B)}
    for server in servers.values():
        await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            results = await fan_out(
                session,
                purge=Purge("id-1", "key", "k"),
                nodes={n: str(s.make_url("")) for n, s in servers.items()},
                token=CREDENTIALS.node_token,
                deadline_s=5.0,
                settle=lambda node, result: None,
            )
    finally:
        for server in servers.values():
            await server.close()
    assert results == {A: "done", B: "done"}
    assert seen == {A: "Bearer a-new", B: "Bearer b-token"}


# --- the real router -------------------------------------------------------------------------


async def test_a_topology_without_node_tokens_keeps_the_shared_token_with_a_warning(
    tmp_path: Path,
) -> None:
    async with running_router(tmp_path) as router:
        assert not any("event=shared_token" in line for line in router.log)
        text = re.sub(r'(?m)^token = "[^"]*".*\n', "", router.config.read_text())
        text = re.sub(r'(?m)^operator_token = "[^"]*"', 'token = "shared-token"', text)
        router.config.write_text(text)
        router.process.send_signal(signal.SIGHUP)

        async def reloaded() -> bool:
            return 'georouter_reloads_total{result="ok"} 1.0' in await _metrics(router)

        await poll(reloaded)
        warnings = [line for line in router.log if "event=shared_token" in line]
        assert any("nodes=edge-na-1,edge-na-2,edge-eu-1" in line for line in warnings), warnings
        assert any("operator=router.token" in line for line in warnings), warnings
        shared = bearer("shared-token")
        async with aiohttp.ClientSession(headers=shared) as s:
            for node in ("edge-eu-1", "edge-ap-2"):  # one token speaks for every node again
                async with s.post(router.api("/api/v1/report"), data=report(node, 10**6)) as r:
                    assert r.status == 200, node
            async with s.post(router.api("/api/v1/nodes/edge-eu-2/drain")) as r:
                assert r.status == 200
