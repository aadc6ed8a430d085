"""The shield tier with real `edge serve` processes: edges whose parents are two shields
(edges too) in front of a scripted origin that counts its fetches.

Every process binds 127.0.0.1 with kernel-chosen ports (or ports just handed out) and is
stopped by its PID.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from cdnlab.loopback import free_port
from tests.origin_app import CACHEABLE, ScriptedOrigin, background, poll
from tests.test_edge_process import TOKEN, Process, edge_argv, spawn, stop

pytest_plugins = ("tests.edge_fixtures",)

# Followers wait for the leader's fetch well past the time the test holds the origin.
PATIENT = "[limits]\ncoalesce_wait_s = 60\norigin_head_timeout_s = 60\norigin_read_timeout_s = 60\n"


def node_argv(name: str, origin: str, config: Path, parents: list[str], **flags: str) -> list[str]:
    argv = [*edge_argv(name, origin, [], **flags), "--config", str(config)]
    for parent in parents:
        argv += ["--parent", parent]
    return argv


@asynccontextmanager
async def processes(*argvs: list[str]) -> AsyncIterator[list[Process]]:
    """Start every argv at once; stop each by its PID on the way out."""
    started = await asyncio.gather(*(spawn(argv) for argv in argvs), return_exceptions=True)
    children = [c for c in started if isinstance(c, Process)]
    try:
        failed = [c for c in started if not isinstance(c, Process)]
        if failed:
            raise failed[0]
        yield children
    finally:
        await asyncio.gather(*(stop(c) for c in children))


def content(node: Process) -> str:
    return f"http://{node.fields['content']}"


async def metric_sum(
    session: aiohttp.ClientSession, node: Process, name: str, **labels: str
) -> float:
    """The sum of a metric's samples (with these labels) on a node's /metrics (0: none)."""
    async with session.get(f"http://{node.fields['control']}/metrics") as resp:
        text = await resp.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_100_concurrent_misses_across_6_edges_cause_one_origin_fetch(
    origin: ScriptedOrigin, tmp_path: Path
) -> None:
    gate = asyncio.Event()
    origin.script("/hot", headers={**CACHEABLE, "Surrogate-Key": "hot"}, body=b"hot", gate=gate)
    config = tmp_path / "patient.toml"
    config.write_text(PATIENT)
    async with processes(
        node_argv("shield-1", origin.url, config, []), node_argv("shield-2", origin.url, config, [])
    ) as shields:
        parents = [content(s) for s in shields]
        edges_argv = [node_argv(f"edge-{i}", origin.url, config, parents) for i in range(6)]
        async with processes(*edges_argv) as edges, aiohttp.ClientSession() as session:

            async def get(i: int) -> tuple[int, str, bytes, bool]:
                url = f"{content(edges[i % 6])}/hot"
                async with session.get(url, headers={"Host": "cdn.example.com"}) as resp:
                    surrogate = "Surrogate-Key" in resp.headers
                    return resp.status, resp.headers["Cache-Status"], await resp.read(), surrogate

            tasks = [asyncio.create_task(get(i)) for i in range(100)]
            try:

                async def waiting() -> tuple[float, float]:
                    at_edges = [await metric_sum(session, e, "edge_coalesced_waits_total")
                                for e in edges]  # fmt: skip
                    at_shields = [await metric_sum(session, s, "edge_coalesced_waits_total")
                                  for s in shields]  # fmt: skip
                    return sum(at_edges), sum(at_shields)

                # Every client is in: 94 wait at their edge, 5 edges' fetches at the shield.
                deadline = asyncio.get_running_loop().time() + 60
                while await waiting() != (94, 5):
                    assert asyncio.get_running_loop().time() < deadline, await waiting()
                    await asyncio.sleep(0.05)
                assert origin.fetches["/hot"] == 1
                gate.set()
                answers = await asyncio.gather(*tasks)
            finally:
                gate.set()
                for task in tasks:
                    task.cancel()
            assert origin.fetches["/hot"] == 1  # one origin fetch for 100 clients on 6 edges
            assert {(status, body) for status, _, body, _ in answers} == {(200, b"hot")}
            assert not any(surrogate for *_, surrogate in answers)  # never at a client
            # RFC 9211 §2: the shield's member first, then the edge's.
            for _, cache_status, _, _ in answers:
                members = [m.split(";")[0] for m in cache_status.split(", ")]
                assert members[0] in ("shield-1", "shield-2") and members[1].startswith("edge-")
            # The edges stored it with the shield's Surrogate-Key: a key purge finds it.
            for node in edges:
                async with session.post(
                    f"http://{node.fields['control']}/purge",
                    json={"key": "hot"},
                    headers={"Authorization": f"Bearer {TOKEN}"},
                ) as resp:
                    assert (resp.status, await resp.json()) == (200, {"purged": 1})


async def test_a_shield_killed_during_traffic_costs_no_client_error(
    origin: ScriptedOrigin, tmp_path: Path
) -> None:
    paths = [f"/k{i}" for i in range(150)]
    for path in paths:
        origin.script(path, headers=CACHEABLE, body=path.encode())
    config = tmp_path / "edge.toml"
    config.write_text("[edge]\nparent_retry_s = 300\n")
    async with processes(
        node_argv("shield-1", origin.url, config, []), node_argv("shield-2", origin.url, config, [])
    ) as shields:
        parents = [content(s) for s in shields]
        async with (
            processes(node_argv("edge-1", origin.url, config, parents)) as (edge,),
            aiohttp.ClientSession() as session,
        ):
            results: list[tuple[str, int, bytes]] = []

            async def traffic() -> None:
                for path in paths:  # every one a miss at the edge
                    async with session.get(content(edge) + path) as resp:
                        results.append((path, resp.status, await resp.read()))

            async with background(traffic()) as task:
                second_ok = {"parent": parents[1], "result": "ok"}
                await poll(lambda: len(results) >= 30, timeout_s=30)
                shields[0].proc.send_signal(signal.SIGKILL)
                before = await metric_sum(session, edge, "edge_parent_requests_total", **second_ok)
                await poll(lambda: len(results) >= 80, timeout_s=30)
                after = await metric_sum(session, edge, "edge_parent_requests_total", **second_ok)
                shields[1].proc.send_signal(signal.SIGKILL)
                await asyncio.wait_for(task, 60)
            assert [(status, body) for _, status, body in results] == [
                (200, path.encode()) for path in paths
            ]  # no client error: the other shield, then the origin answered
            # All of shield-1's keys went to shield-2 while it lived (about half the misses).
            assert after - before >= 25
            assert await metric_sum(session, edge, "edge_parent_up") == 0  # both marked down
            assert await metric_sum(session, edge, "edge_parent_go_direct_total") >= 60
        downs = [line for line in edge.log if "event=parent_down" in line]
        assert {parent in "".join(downs) for parent in parents} == {True}


async def test_two_edges_each_others_parent_answer_508_rfc8586(origin: ScriptedOrigin) -> None:
    origin.script("/loop", headers=CACHEABLE)
    ports = [free_port("127.0.0.1") for _ in range(2)]
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    argv_a = [*edge_argv("edge-a", origin.url, [], listen=f"127.0.0.1:{ports[0]}"), "--parent", b]
    argv_b = [*edge_argv("edge-b", origin.url, [], listen=f"127.0.0.1:{ports[1]}"), "--parent", a]
    async with processes(argv_a, argv_b) as (edge_a, edge_b), aiohttp.ClientSession() as session:
        async with session.get(f"{a}/loop") as resp:
            # a -> b -> a: a finds itself in CDN-Loop and refuses; the 508 comes back.
            assert resp.status == 508
            assert "detail=cdn-loop" in resp.headers["Cache-Status"]
        assert origin.fetches["/loop"] == 0  # never forwarded round and round
        assert await metric_sum(session, edge_a, "edge_cdn_loops_total") == 1
        assert await metric_sum(session, edge_b, "edge_cdn_loops_total") == 0
