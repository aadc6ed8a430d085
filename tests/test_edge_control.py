"""The edge's control port: /healthz, /metrics and purge, on a real in-process edge."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdnlab.loopback import free_port
from edge.control import purge_slot
from edge.server import EdgeServer
from edge.sites import SiteTable, cache_host
from tests.origin_app import (
    CACHEABLE,
    FakeRouter,
    ScriptedOrigin,
    edge_config,
    metric,
    poll,
    running_edge,
)

pytest_plugins = ("tests.edge_fixtures",)
AUTH = {"Authorization": "Bearer t0ken"}
PATHS = ("/img/a.png", "/img/b.png", "/css/site.css", "/api/p?id=1")


@pytest.fixture
async def edge(origin: ScriptedOrigin) -> AsyncIterator[EdgeServer]:
    for path in PATHS:
        origin.script(path, headers=CACHEABLE, body=path.encode())
    origin.script("/tagged", headers={**CACHEABLE, "Surrogate-Key": "product-42 all"})
    async with running_edge(origin.url) as server:
        yield server


async def warm(client: aiohttp.ClientSession, edge: EdgeServer, *paths: str) -> None:
    for path in paths:
        headers = {"Host": "cdn.example.com"}
        async with client.get(f"http://{edge.content}{path}", headers=headers) as resp:
            assert resp.status == 200
            await resp.read()


async def purge(
    client: aiohttp.ClientSession, edge: EdgeServer, body: object, headers: dict[str, str] = AUTH
) -> tuple[int, dict[str, object]]:
    async with client.post(f"http://{edge.control}/purge", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_healthz_reports_load_then_503_when_draining(
    edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    await warm(client, edge, "/img/a.png", "/img/a.png")
    async with client.get(f"http://{edge.control}/healthz") as resp:
        assert resp.status == 200
        health = await resp.json()
    assert health["status"] == "up"
    assert set(health) == {"status", "inflight", "rps", "utilization", "cache_hit_ratio", "tunnels"}
    assert health["cache_hit_ratio"] == 0.5 and health["rps"] > 0
    edge.drain()
    async with client.get(f"http://{edge.control}/healthz") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "draining"
    await warm(client, edge, "/img/b.png")  # draining still serves content


async def test_purge_by_url(edge: EdgeServer, client: aiohttp.ClientSession) -> None:
    await warm(client, edge, "/img/a.png", "/img/b.png", "/api/p?id=1")
    assert await purge(client, edge, {"url": "http://cdn.example.com/img/a.png"}) == (
        200, {"purged": 1},
    )  # fmt: skip
    assert await purge(client, edge, {"url": "http://cdn.example.com/api/p?id=1"}) == (
        200, {"purged": 1},
    )  # fmt: skip
    assert edge.cache.objects == 1


async def test_purge_by_prefix(
    edge: EdgeServer, client: aiohttp.ClientSession, origin: ScriptedOrigin
) -> None:
    await warm(client, edge, "/img/a.png", "/img/b.png", "/css/site.css")
    status, body = await purge(client, edge, {"prefix": "http://cdn.example.com/img/"})
    assert (status, body) == (200, {"purged": 2})
    await warm(client, edge, "/img/a.png", "/css/site.css")
    assert origin.fetches["/img/a.png"] == 2 and origin.fetches["/css/site.css"] == 1


async def test_purge_by_surrogate_key(edge: EdgeServer, client: aiohttp.ClientSession) -> None:
    await warm(client, edge, "/tagged", "/img/a.png")
    assert await purge(client, edge, {"key": "product-42"}) == (200, {"purged": 1})
    assert await purge(client, edge, {"key": "product-42"}) == (200, {"purged": 0})
    assert edge.cache.objects == 1
    assert metric(edge.metrics, "edge_purges_total", {"kind": "key"}) == 2
    assert metric(edge.metrics, "edge_purged_objects_total") == 1


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken"}]
)
async def test_purge_without_the_token_is_401_rfc6750_3(
    edge: EdgeServer, client: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    await warm(client, edge, "/img/a.png")
    status, _ = await purge(client, edge, {"url": "http://cdn.example.com/img/a.png"}, headers)
    assert status == 401
    assert edge.cache.objects == 1


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
async def test_purge_bearer_scheme_is_case_insensitive_rfc9110_11_1(
    edge: EdgeServer, client: aiohttp.ClientSession, scheme: str
) -> None:
    await warm(client, edge, "/img/a.png")
    headers = {"Authorization": f"{scheme} t0ken"}
    body = {"url": "http://cdn.example.com/img/a.png"}
    assert await purge(client, edge, body, headers) == (200, {"purged": 1})


async def test_purge_accepts_previous_tokens_during_a_rotation(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/img/a.png", headers=CACHEABLE)
    async with running_edge(origin.url, token="new", previous_tokens=("old",)) as edge:
        body = {"key": "product-42"}
        for token in ("new", "old"):
            headers = {"Authorization": f"Bearer {token}"}
            assert await purge(client, edge, body, headers) == (200, {"purged": 0})
        status, _ = await purge(client, edge, body, {"Authorization": "Bearer t0ken"})
        assert status == 401


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        ({}, 'Bearer realm="edge"'),
        ({"Authorization": "Bearer wrong"}, 'Bearer realm="edge", error="invalid_token"'),
    ],
)
async def test_purge_401_challenge_rfc6750_3_1(
    edge: EdgeServer, client: aiohttp.ClientSession, headers: dict[str, str], challenge: str
) -> None:
    url = f"http://{edge.control}/purge"
    async with client.post(url, json={"key": "k"}, headers=headers) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == challenge


async def test_edge_without_a_token_refuses_every_purge(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    async with running_edge(origin.url, token="") as edge:
        for value in ("Bearer ", "Bearer", "bearer  "):
            status, _ = await purge(client, edge, {"key": "k"}, {"Authorization": value})
            assert status == 401


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"url": "http://x/a", "key": "k"},
        {"url": "/relative"},
        {"prefix": 3},
        {"tag": "k"},
        {"key": ""},
    ],
)
async def test_bad_purge_requests_are_400(
    edge: EdgeServer, client: aiohttp.ClientSession, body: object
) -> None:
    status, answer = await purge(client, edge, body)
    assert status == 400 and "error" in answer


async def test_purge_body_that_is_not_json_is_400(
    edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    url = f"http://{edge.control}/purge"
    async with client.post(url, data=b"\xff{", headers=AUTH) as resp:
        assert resp.status == 400


async def test_metrics_exposes_edge_series(edge: EdgeServer, client: aiohttp.ClientSession) -> None:
    await warm(client, edge, "/img/a.png", "/img/a.png")
    async with client.get(f"http://{edge.control}/metrics") as resp:
        text = await resp.text()
    assert 'edge_requests_total{cache="hit",code="200",method="GET"} 1.0' in text
    assert "edge_cache_objects 1.0" in text
    assert 'edge_status{status="up"} 1.0' in text
    assert "edge_cache_capacity_bytes" in text


async def test_drain_reports_at_once(origin: ScriptedOrigin, router: FakeRouter) -> None:
    async with running_edge(origin.url, routers=(router.url,), report_interval_s=60.0) as edge:
        await poll(lambda: len(router.reports) == 1)
        edge.drain()
        await poll(lambda: len(router.reports) == 2, timeout_s=2)
        assert router.reports[1].status == "draining"
        assert router.reports[1].seq == 2


async def test_router_down_edge_keeps_serving(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/img/a.png", headers=CACHEABLE)
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"  # nothing listens there
    failed = {"router": url, "result": "failed"}
    async with running_edge(origin.url, routers=(url,), report_interval_s=0.05) as edge:
        await poll(lambda: metric(edge.metrics, "edge_reports_total", failed) >= 2)
        await warm(client, edge, "/img/a.png")
        async with client.get(f"http://{edge.control}/healthz") as resp:
            assert resp.status == 200


@given(
    st.sampled_from(["cdn.example.com", "CDN.Example.COM", "127.0.0.1", "[::1]"]),
    st.sampled_from([None, 80, 8080]),
    st.text(alphabet="abc/-_.~%", max_size=20),
    st.one_of(st.none(), st.text(alphabet="a=&1", max_size=10)),
)
def test_purge_url_names_the_key_the_proxy_uses(
    host: str, port: int | None, path: str, query: str | None
) -> None:
    authority = host if port is None else f"{host}:{port}"
    target = "/" + path + (f"?{query}" if query else "")
    table = SiteTable.from_config(edge_config("http://127.0.0.1:1"))
    site = table.choose(authority)
    assert site is not None
    assert purge_slot(table, f"http://{authority}{target}") == (cache_host(site, authority), target)
