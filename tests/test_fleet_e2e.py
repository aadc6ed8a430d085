"""The router as the fleet's control plane, with real processes: purge everywhere, an edge
that missed a purge, drains and weights that survive a restart, several routers sharing
their state through a real nats-server (one, or a 3-node JetStream cluster)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cdn.config import HostPort
from cdnlab.loopback import SUBNETS, TOKEN, Cdn, free_dns_port, free_port, poll, start_cdn
from cdnlab.plan import ROUTER_LAYER, edge_spec, router_spec
from cdnlab.supervisor import ChildSpec, Supervisor
from tests.nats_fixture import NatsNode, needs_nats, start_nats, wait_ready

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST_HEADER = {"Host": "cdn.example.com"}
OBJECT = "/img/dog.jpg"
SELECTOR = {"url": f"http://cdn.example.com{OBJECT}"}
REACHABLE_GOAL_S = 2.0
# JetStream re-elects the leaders of what a killed node led (measured here: 5-10 s on a
# loaded two-core machine); the routers resync after it.
CLUSTER_RECOVERY_S = 30.0  # the goal: a purge applied within 2 s of being reachable


async def fetch_verdict(session: aiohttp.ClientSession, cdn: Cdn, node: str) -> str:
    """'hit' or 'miss' for one GET of OBJECT on `node`."""
    async with session.get(cdn.content_url(node, OBJECT), headers=HOST_HEADER) as response:
        assert response.status == 200
        await response.read()
        # The edge's own member is the last (RFC 9211 §2); a shield's comes before it.
        mine = response.headers.get("Cache-Status", "").split(",")[-1]
        return "hit" if "; hit" in mine else "miss"


async def warm_all(session: aiohttp.ClientSession, cdn: Cdn) -> None:
    for edge in cdn.plan.edges:
        await fetch_verdict(session, cdn, edge.name)
        assert await fetch_verdict(session, cdn, edge.name) == "hit", edge.name


async def post(
    session: aiohttp.ClientSession, url: str, body: object | None = None
) -> tuple[int, Any]:
    async with session.post(url, json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with session.get(url) as response:
        return response.status, await response.json()


async def metric(session: aiohttp.ClientSession, control: str, series: str) -> float | None:
    async with session.get(f"{control}/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def bus_toml(nodes: list[NatsNode], replicas: int = 1) -> str:
    servers = ", ".join(f'"{n.url}"' for n in nodes)
    return f"[bus]\nservers = [{servers}]\nreplicas = {replicas}\n"


async def start_second_router(cdn: Cdn, tmp_path: Path) -> str:
    """Router B: the same topology and bus from another config file (so another state
    directory), on its own ports; returns its control URL."""
    config = tmp_path / "router-b.toml"
    config.write_text(cdn.config_path.read_text())
    host = cdn.plan.dns.host
    dns, control = HostPort(host, free_dns_port(host)), HostPort(host, free_port(host))
    argv = (sys.executable, "-m", "georouter", "serve", "--config", str(config),
            "--dns", str(dns), "--control", str(control))  # fmt: skip
    await cdn.supervisor.start(ChildSpec("router-b", argv, layer=ROUTER_LAYER))
    return f"http://{control}"


async def report_only_to(cdn: Cdn, node: str, router_url: str) -> None:
    """Restart `node` so that it reports to `router_url` only."""
    await cdn.supervisor.stop(cdn.child(node))
    edge = next(e for e in cdn.plan.edges if e.name == node)
    spec = edge_spec(cdn.plan, edge)
    argv = list(spec.argv)
    argv[argv.index("--router") + 1] = router_url
    await cdn.supervisor.start(ChildSpec(spec.name, tuple(argv), layer=spec.layer))


@pytest.mark.timeout(90)
async def test_purge_through_the_router_reaches_every_edge(tmp_path: Path) -> None:
    async with start_cdn(tmp_path) as cdn, aiohttp.ClientSession() as session:
        await warm_all(session, cdn)
        status, body = await post(session, f"{cdn.plan.control_url}/api/v1/purge", SELECTOR)
        assert status == 200, body
        names = {e.name for e in cdn.plan.nodes}  # the shields are purged too
        assert body["nodes"] == dict.fromkeys(names, "done")
        for node in (e.name for e in cdn.plan.edges):  # gone everywhere: the next GET misses
            assert await fetch_verdict(session, cdn, node) == "miss", node
        status, record = await get_json(
            session, f"{cdn.plan.control_url}/api/v1/purge/{body['id']}"
        )
        assert status == 200 and record["nodes"] == body["nodes"]
        assert record["selector"] == {"id": body["id"], **SELECTOR}
        control = cdn.plan.control_url
        assert await metric(session, control, 'georouter_purges_total{result="complete"}') == 1
        # The command line wraps it: token and address from the config.
        await fetch_verdict(session, cdn, "edge-eu-1")
        assert await fetch_verdict(session, cdn, "edge-eu-1") == "hit"
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "georouter", "purge", "--config", str(cdn.config_path),
            "--prefix", "http://cdn.example.com/img/",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await cli.communicate()
        assert cli.returncode == 0, out
        assert re.search(rb'"edge-eu-1": "done"', out)
        assert await fetch_verdict(session, cdn, "edge-eu-1") == "miss"
        # A bad selector is refused before anything fans out.
        status, body = await post(session, f"{control}/api/v1/purge", {"url": "ftp://x/"})
        assert status == 400 and "http://" in body["error"]


@pytest.mark.timeout(90)
async def test_an_edge_unreachable_at_purge_time_applies_it_once_reachable(
    tmp_path: Path,
) -> None:
    async with (
        start_cdn(tmp_path, router_settings="fanout_timeout_s = 0.5") as cdn,
        aiohttp.ClientSession() as session,
    ):
        await warm_all(session, cdn)
        frozen = cdn.child("edge-na-1").pid
        os.kill(frozen, signal.SIGSTOP)
        try:
            status, body = await post(session, f"{cdn.plan.control_url}/api/v1/purge", SELECTOR)
        finally:
            os.kill(frozen, signal.SIGCONT)
        resumed = time.monotonic()
        assert status == 200
        assert body["nodes"]["edge-na-1"] == "pending"
        assert {n for n, r in body["nodes"].items() if r == "done"} == {
            e.name for e in cdn.plan.nodes if e.name != "edge-na-1"
        }
        url = f"{cdn.plan.control_url}/api/v1/purge/{body['id']}"
        await poll(
            lambda: get_json(session, url),
            lambda answer: answer[1]["nodes"]["edge-na-1"] == "done",
            REACHABLE_GOAL_S,
            "the frozen edge confirms the purge once it runs again",
        )
        assert time.monotonic() - resumed < REACHABLE_GOAL_S
        # From then on it never serves the old object.
        assert await fetch_verdict(session, cdn, "edge-na-1") == "miss"
        await poll(
            lambda: metric(
                session, cdn.plan.control_url, 'georouter_purges_pending{node="edge-na-1"}'
            ),
            lambda value: value == 0,
            5.0,
            "no purge pending",
        )


@pytest.mark.timeout(90)
async def test_a_router_restart_keeps_drains_and_weights(tmp_path: Path) -> None:
    async with start_cdn(tmp_path) as cdn, aiohttp.ClientSession() as session:
        control = cdn.plan.control_url
        status, _ = await post(session, f"{control}/api/v1/nodes/edge-eu-1/drain")
        assert status == 200
        status, body = await post(
            session, f"{control}/api/v1/nodes/edge-na-2/weight", {"weight": 2.5}
        )
        assert (status, body["weight"]) == (200, 2.5)
        await cdn.supervisor.stop(cdn.child("router"))
        await cdn.supervisor.start(router_spec(cdn.plan))
        # The very first answers after the restart already leave the drained node out.
        for _ in range(20):
            assert cdn.ip("edge-eu-1") not in await cdn.resolve(SUBNETS["eu"])
        nodes = await cdn.nodes(session)
        assert nodes["edge-eu-1"]["drained"] is True
        assert nodes["edge-na-2"]["weight"] == 2.5
        status, body = await post(
            session, f"{control}/api/v1/nodes/edge-na-2/weight", {"weight": -1}
        )
        assert status == 400


@needs_nats
@pytest.mark.timeout(120)
async def test_two_routers_share_purges_and_drains_through_nats(tmp_path: Path) -> None:
    nats_supervisor = Supervisor(tmp_path)
    try:
        (node,) = await start_nats(nats_supervisor, tmp_path / "nats")
        async with (
            start_cdn(tmp_path, extra=bus_toml([node])) as cdn,
            aiohttp.ClientSession() as session,
        ):
            router_b = await start_second_router(cdn, tmp_path)
            # edge-ap-2 talks to router B only; router B receives nothing directly.
            await report_only_to(cdn, "edge-ap-2", router_b)
            await warm_all(session, cdn)
            status, body = await post(session, f"{cdn.plan.control_url}/api/v1/purge", SELECTOR)
            assert status == 200
            url_b = f"{router_b}/api/v1/purge/{body['id']}"
            await poll(
                lambda: get_json(session, url_b),
                lambda answer: answer[0] == 200 and answer[1]["nodes"]["edge-ap-2"] == "done",
                5.0,
                "router B heard the purge and edge-ap-2 confirmed it to B",
            )
            assert await fetch_verdict(session, cdn, "edge-ap-2") == "miss"
            # A drain on router A takes the node out of router B's answers too.
            status, _ = await post(session, f"{cdn.plan.control_url}/api/v1/nodes/edge-eu-2/drain")
            assert status == 200
            await poll(
                lambda: get_json(session, f"{router_b}/api/v1/nodes"),
                lambda answer: {n["name"]: n for n in answer[1]["nodes"]}["edge-eu-2"]["drained"],
                5.0,
                "router B adopts router A's drain",
            )
    finally:
        await nats_supervisor.stop_all()


@needs_nats
@pytest.mark.timeout(120)
async def test_a_router_whose_bus_is_cut_keeps_answering_and_catches_up(tmp_path: Path) -> None:
    nats_supervisor = Supervisor(tmp_path)
    try:
        (node,) = await start_nats(nats_supervisor, tmp_path / "nats")
        async with (
            start_cdn(tmp_path, extra=bus_toml([node])) as cdn,
            aiohttp.ClientSession() as session,
        ):
            control = cdn.plan.control_url
            assert await metric(session, control, "georouter_bus_connected") == 1
            nats_supervisor.kill(nats_supervisor.by_name(node.name))
            await poll(
                lambda: metric(session, control, "georouter_bus_connected"),
                lambda value: value == 0,
                10.0,
                "the router notices the bus is gone",
            )
            # DNS goes on with the last state; a drain is refused rather than split.
            assert set(await cdn.resolve(SUBNETS["eu"])) <= cdn.ips("eu")
            status, body = await post(session, f"{control}/api/v1/nodes/edge-eu-1/drain")
            assert status == 503 and "nothing changed" in body["error"]
            # A purge still fans out from this router, and waits to be published.
            status, purge = await post(session, f"{control}/api/v1/purge", SELECTOR)
            assert status == 200 and set(purge["nodes"].values()) == {"done"}
            log = (cdn.supervisor.log_dir / "router.log").read_text()
            assert "event=bus_unavailable" in log
            await nats_supervisor.start(node.spec)
            await wait_ready(node)
            await poll(
                lambda: metric(session, control, "georouter_bus_connected"),
                lambda value: value == 1,
                10.0,
                "the router is back in step with the bus",
            )
            # Caught up: a router that starts now hears the purge made while the bus was away.
            router_b = await start_second_router(cdn, tmp_path)
            status, record = await get_json(session, f"{router_b}/api/v1/purge/{purge['id']}")
            assert status == 200, record
            status, _ = await post(session, f"{control}/api/v1/nodes/edge-eu-1/drain")
            assert status == 200
    finally:
        await nats_supervisor.stop_all()


@needs_nats
@pytest.mark.timeout(150)
async def test_a_three_node_jetstream_cluster_loses_a_node_during_a_purge(tmp_path: Path) -> None:
    nats_supervisor = Supervisor(tmp_path)
    try:
        nodes = await start_nats(nats_supervisor, tmp_path / "nats", count=3)
        async with (
            start_cdn(tmp_path, extra=bus_toml(nodes, replicas=3)) as cdn,
            aiohttp.ClientSession() as session,
        ):
            router_b = await start_second_router(cdn, tmp_path)
            await warm_all(session, cdn)
            purge = asyncio.create_task(
                post(session, f"{cdn.plan.control_url}/api/v1/purge", SELECTOR)
            )
            nats_supervisor.kill(nats_supervisor.by_name(nodes[0].name))
            status, body = await purge
            assert status == 200 and set(body["nodes"].values()) == {"done"}
            await poll(
                lambda: get_json(session, f"{router_b}/api/v1/purge/{body['id']}"),
                lambda answer: answer[0] == 200,
                CLUSTER_RECOVERY_S,
                "router B hears the purge through the two surviving NATS nodes",
            )
            for edge in cdn.plan.edges:
                assert await fetch_verdict(session, cdn, edge.name) == "miss", edge.name
            # The shared state takes writes with two of three nodes (once JetStream has
            # elected new leaders for what the dead node led).
            drain = f"{router_b}/api/v1/nodes/edge-ap-1/drain"
            await poll(
                lambda: post(session, drain),
                lambda a: a[0] == 200,
                CLUSTER_RECOVERY_S,
                "drain on B",
            )
            await poll(
                lambda: cdn.nodes(session),
                lambda answer: answer["edge-ap-1"]["drained"],
                10.0,
                "router A adopts router B's drain",
            )
    finally:
        await nats_supervisor.stop_all()
