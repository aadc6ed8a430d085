"""Pre-warming with real processes: a task to a region's edges (fetched through their
shields, then already cached, and a failed origin status), the quotas, the CLI, and a
popularity pre-warm after an edge is killed (the node that takes its clients gets its hot
set)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
import nats
import pytest

from cdnlab.loopback import TOKEN, Cdn, poll, start_cdn
from cdnlab.supervisor import Supervisor
from georouter import bus
from tests.nats_fixture import needs_nats, start_nats
from tests.test_fleet_e2e import bus_toml, report_only_to, start_second_router

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOST = "cdn.example.com"
OBJECT = f"http://{HOST}/img/dog.jpg"
MISSING = f"http://{HOST}/no-such-object"
EU = ("edge-eu-1", "edge-eu-2")
QUOTAS = "[prewarm]\nmax_urls_per_task = 3\nmax_urls_per_day = 4\npopularity = false\n"


async def post(session: aiohttp.ClientSession, url: str, body: object) -> tuple[int, Any]:
    async with session.post(url, json=body, headers=AUTH) as response:
        return response.status, await response.json()


async def get_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def verdict(session: aiohttp.ClientSession, cdn: Cdn, node: str, path: str) -> str:
    """This edge's Cache-Status member for one GET of path: 'hit' or 'miss'."""
    url = cdn.content_url(node, path)
    async with session.get(url, headers={"Host": HOST}) as response:
        await response.read()
        member = response.headers.get("Cache-Status", "").rsplit(",", 1)[-1]
        return "hit" if "; hit" in member else "miss"


async def finished(session: aiohttp.ClientSession, cdn: Cdn, task_id: str) -> dict[str, Any]:
    url = f"{cdn.plan.control_url}/api/v1/prewarm/{task_id}"
    task: dict[str, Any] = await poll(
        lambda: get_json(session, url),
        lambda t: all(p["state"] == "done" for p in t["nodes"].values()),
        15.0,
        f"every node finished pre-warm task {task_id}",
    )
    return task


async def metric(session: aiohttp.ClientSession, control: str, series: str) -> float:
    async with session.get(f"{control}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.timeout(120)
async def test_prewarm_fetches_then_finds_cached_and_reports_origin_failures(
    tmp_path: Path,
) -> None:
    async with start_cdn(tmp_path, extra=QUOTAS) as cdn, aiohttp.ClientSession() as session:
        api = f"{cdn.plan.control_url}/api/v1/prewarm"
        status, body = await post(session, api, {"region": "eu", "urls": [OBJECT, MISSING]})
        assert status == 202, body
        assert set(body["nodes"]) == set(EU)  # the region's edges, no other region's
        task = await finished(session, cdn, body["id"])
        # The edges fetched through their normal miss path: via the shield that is the
        # object's parent (rendezvous hash), which holds it now.
        shields = []
        for shield in cdn.plan.shields:
            async with session.get(
                f"http://{shield.content}/img/dog.jpg", headers={"Host": HOST}
            ) as response:
                await response.read()
                shields.append("; hit" in response.headers.get("Cache-Status", ""))
        assert cdn.plan.shields and any(shields), shields
        for node in EU:
            progress = task["nodes"][node]
            assert (progress["fetched"], progress["cached"], progress["failed"]) == (1, 0, 1)
            assert progress["errors"] == [{"url": MISSING, "status": 404}]
            assert progress["delivery"] == "sent"
            assert await verdict(session, cdn, node, "/img/dog.jpg") == "hit", node
        assert await verdict(session, cdn, "edge-na-1", "/img/dog.jpg") == "miss"
        # The second time, through the CLI (token from the config): already cached.
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "georouter", "prewarm", "--config", str(cdn.config_path),
            "--region", "eu", "--wait", "15", OBJECT,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await cli.communicate()
        assert cli.returncode == 0, out
        again = json.loads(out)
        assert again["origin"] == "api"
        assert {n: (p["fetched"], p["cached"]) for n, p in again["nodes"].items()} == {
            n: (0, 1) for n in EU
        }
        control = cdn.plan.control_url
        assert await metric(session, control, 'georouter_prewarm_tasks_total{origin="api"}') == 2
        cached = 'georouter_prewarm_urls_total{outcome="cached"}'
        assert await metric(session, control, cached) == 2
        edge = next(e for e in cdn.plan.edges if e.name == "edge-eu-1")
        edge_control = f"http://{edge.control}"
        fetched = 'edge_prewarm_urls_total{outcome="fetched"}'
        assert await metric(session, edge_control, fetched) == 1
        assert await metric(session, edge_control, "edge_prewarm_queue_depth") == 0
        listed = await get_json(session, api)
        assert [t["id"] for t in listed["tasks"]] == [again["id"], body["id"]]


@pytest.mark.timeout(120)
async def test_prewarm_refuses_bad_input_and_enforces_its_quotas(tmp_path: Path) -> None:
    async with start_cdn(tmp_path, extra=QUOTAS) as cdn, aiohttp.ClientSession() as session:
        api = f"{cdn.plan.control_url}/api/v1/prewarm"
        for bad, why in [
            ({"region": "mars", "urls": [OBJECT]}, "unknown region"),
            ({"urls": [OBJECT]}, "region"),
            ({"region": "eu", "urls": ["/img/dog.jpg"]}, "absolute"),
            ({"region": "eu", "urls": []}, "non-empty"),
            # urlsplit raises ValueError ("Invalid IPv6 URL") here: was a 500
            ({"region": "eu", "urls": ["http://[::1/x"]}, "cannot parse"),
            ({"region": "eu", "urls": [OBJECT], "site": "other.example.com"}, "not the host"),
            ({"region": "eu", "urls": [f"{OBJECT}?{i}" for i in range(4)]}, "3 per task"),
        ]:
            status, body = await post(session, api, bad)
            assert status == 400 and why in body["error"], (bad, body)
        async with session.post(api, json={"region": "eu", "urls": [OBJECT]}) as response:
            assert response.status == 401  # no token
        status, body = await post(session, api, {"region": "eu", "urls": [OBJECT, MISSING]})
        assert status == 202
        status, body = await post(session, api, {"region": "na", "urls": [OBJECT, MISSING]})
        assert status == 202  # 4 of 4 today
        status, body = await post(session, api, {"region": "ap", "urls": [OBJECT]})
        assert status == 429 and "4 per day" in body["error"], body
        control = cdn.plan.control_url
        series = 'georouter_prewarm_requests_total{result="over_quota"}'
        assert await metric(session, control, series) == 1


@pytest.mark.timeout(120)
async def test_a_killed_edge_s_hot_set_is_prewarmed_on_the_node_taking_its_clients(
    tmp_path: Path,
) -> None:
    hot = [f"/img/{name}" for name in ("dog.jpg", "cat.jpg", "beach.jpg")]
    async with start_cdn(tmp_path) as cdn, aiohttp.ClientSession() as session:
        for _ in range(3):  # edge-eu-1's clients ask for these; edge-eu-2 has none of them
            for path in hot:
                await verdict(session, cdn, "edge-eu-1", path)
        nodes_url = f"{cdn.plan.control_url}/api/v1/nodes"
        await poll(
            lambda: get_json(session, nodes_url),
            lambda a: ({n["name"]: n for n in a["nodes"]}["edge-eu-1"]["hot_objects"] or 0) >= 3,
            10.0,
            "the router has edge-eu-1's hot set",
        )
        cdn.supervisor.kill(cdn.child("edge-eu-1"))
        api = f"{cdn.plan.control_url}/api/v1/prewarm"
        listed = await poll(
            lambda: get_json(session, api),
            lambda a: any(t["origin"] == "popularity" for t in a["tasks"]),
            10.0,
            "a popularity pre-warm task",
        )
        task = next(t for t in listed["tasks"] if t["origin"] == "popularity")
        assert task["region"] == "eu" and task["nodes"] == ["edge-eu-2"]
        done = await finished(session, cdn, task["id"])
        assert done["nodes"]["edge-eu-2"]["fetched"] >= 3
        for path in hot:
            assert await verdict(session, cdn, "edge-eu-2", path) == "hit", path
        series = 'georouter_prewarm_tasks_total{origin="popularity"}'
        assert await metric(session, cdn.plan.control_url, series) >= 1


@needs_nats
@pytest.mark.timeout(120)
async def test_a_task_made_on_one_router_reaches_the_other_through_nats(tmp_path: Path) -> None:
    nats_supervisor = Supervisor(tmp_path)
    try:
        (node,) = await start_nats(nats_supervisor, tmp_path / "nats")
        async with (
            start_cdn(tmp_path, extra=bus_toml([node])) as cdn,
            aiohttp.ClientSession() as session,
        ):
            router_b = await start_second_router(cdn, tmp_path)
            # edge-ap-2 reports to router B only: B hears the task from the bus alone and
            # the edge's progress from its reports.
            await report_only_to(cdn, "edge-ap-2", router_b)
            status, body = await post(
                session, f"{cdn.plan.control_url}/api/v1/prewarm",
                {"region": "ap", "urls": [OBJECT]},
            )  # fmt: skip
            assert status == 202
            url_b = f"{router_b}/api/v1/prewarm/{body['id']}"
            task = await poll(
                lambda: get_json(session, url_b),
                lambda t: t["nodes"]["edge-ap-2"]["state"] == "done",
                15.0,
                "router B has the task and edge-ap-2's progress",
            )
            assert set(task["nodes"]) == {"edge-ap-1", "edge-ap-2"}
            assert task["origin"] == "api" and task["nodes"]["edge-ap-2"]["fetched"] == 1
    finally:
        await nats_supervisor.stop_all()


@needs_nats
@pytest.mark.timeout(120)
async def test_a_purge_stream_made_before_prewarm_tasks_is_widened_in_place(
    tmp_path: Path,
) -> None:
    nats_supervisor = Supervisor(tmp_path)
    try:
        (node,) = await start_nats(nats_supervisor, tmp_path / "nats")
        client = await nats.connect(servers=[node.url])
        try:
            js = client.jetstream()
            await js.add_stream(name=bus.STREAM, subjects=[bus.SUBJECT])  # as routers made it
            async with (
                start_cdn(tmp_path, extra=bus_toml([node])) as cdn,
                aiohttp.ClientSession() as session,
            ):
                status, body = await post(
                    session, f"{cdn.plan.control_url}/api/v1/prewarm",
                    {"region": "eu", "urls": [OBJECT]},
                )  # fmt: skip
                assert status == 202
                info = await js.stream_info(bus.STREAM)
                assert info.config.subjects == [bus.STREAM_SUBJECTS]

                async def last_task() -> bytes | None:
                    try:
                        msg = await js.get_last_msg(bus.STREAM, bus.PREWARM_SUBJECT)
                    except nats.js.errors.NotFoundError:
                        return None  # not published yet
                    return msg.data

                last = await poll(last_task, lambda data: data is not None, 10.0, "the task")
                assert last is not None and json.loads(last)["id"] == body["id"]
        finally:
            await client.close()
    finally:
        await nats_supervisor.stop_all()
