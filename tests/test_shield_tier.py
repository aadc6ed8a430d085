"""The shield tier with real edges in this event loop: an edge whose parent is another edge
(the shield) in front of a scripted origin, one fake clock for all three.

Process-level scenarios (a shield killed during traffic, a loop between two processes, six
edges behind two shields) are in tests/test_shield_e2e.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import pytest

from edge.config import ParentSettings
from edge.server import EdgeServer
from tests.origin_app import CACHEABLE, FakeClock, ScriptedOrigin, get, metric, running_edge

pytest_plugins = ("tests.edge_fixtures",)


@asynccontextmanager
async def tier(
    origin: ScriptedOrigin, clock: FakeClock, **parents: object
) -> AsyncIterator[tuple[EdgeServer, EdgeServer]]:
    """(shield, edge): the edge's one parent is the shield."""
    async with running_edge(origin.url, clock, name="shield-1") as shield:
        settings = ParentSettings(urls=(f"http://{shield.content}",), **parents)  # type: ignore[arg-type]
        async with running_edge(origin.url, clock, name="edge-1", parents=settings) as edge:
            yield shield, edge


@pytest.fixture
def clock(origin: ScriptedOrigin) -> FakeClock:
    fake = FakeClock()
    origin.clock = fake
    return fake


async def test_cache_status_names_both_layers_origin_side_first_rfc9211_2(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/a", headers=CACHEABLE, body=b"tiered")
    async with tier(origin, clock) as (shield, edge):
        status, headers, body = await get(client, edge, "/a", headers={"Host": "cdn.example.com"})
        assert (status, body) == (200, b"tiered")
        members = [m.split(";")[0] for m in headers["Cache-Status"].split(", ")]
        assert members == ["shield-1", "edge-1"]  # the cache nearest the origin first
        assert "fwd=uri-miss" in headers["Cache-Status"].split(", ")[0]
        clock.advance(5)
        _, headers, _ = await get(client, edge, "/a", headers={"Host": "cdn.example.com"})
        assert headers["Cache-Status"].endswith("edge-1; hit; ttl=55")
        assert origin.fetches["/a"] == 1
        # The shield got the client's Host (it keys and routes by it), the origin its own.
        # The shield stored it under the client's Host: a direct request is a hit.
        _, direct, _ = await get(client, shield, "/a", headers={"Host": "cdn.example.com"})
        assert direct["Cache-Status"] == "shield-1; hit; ttl=55"
        seen = origin.seen[0].headers
        assert seen["X-Forwarded-Host"] == "cdn.example.com"
        assert seen["Host"] == origin.url.removeprefix("http://")
        # RFC 8586: each node appended its identifier, the edge first.
        assert seen["CDN-Loop"] == "georouter-edge-1, georouter-shield-1"
        assert metric(edge.metrics, "edge_parent_requests_total",
                      {"parent": f"http://{shield.content}", "result": "ok"}) == 1  # fmt: skip


async def test_a_request_naming_this_node_in_cdn_loop_is_508_rfc8586_2(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/a", headers=CACHEABLE)
    async with running_edge(origin.url, clock, name="edge-1") as edge:
        loop = {"CDN-Loop": "foo.example.net, georouter-edge-1; v=1"}
        status, headers, _ = await get(client, edge, "/a", headers=loop)
        assert status == 508 and "detail=cdn-loop" in headers["Cache-Status"]
        assert origin.fetches["/a"] == 0
        assert metric(edge.metrics, "edge_cdn_loops_total") == 1
        other = {"CDN-Loop": "georouter-edge-10"}
        assert (await get(client, edge, "/a", headers=other))[0] == 200


async def test_surrogate_key_never_reaches_clients_on_a_miss_or_a_hit(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/t", headers={**CACHEABLE, "Surrogate-Key": "product-42 all",
                                 "Surrogate-Control": "max-age=600"})  # fmt: skip
    async with running_edge(origin.url, clock, name="edge-1") as edge:
        for _ in range(2):  # the miss, then the hit
            _, headers, _ = await get(client, edge, "/t")
            assert "Surrogate-Key" not in headers and "Surrogate-Control" not in headers


async def test_a_downstream_edge_gets_surrogate_fields_so_key_purges_reach_it(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/t", headers={**CACHEABLE, "Surrogate-Key": "product-42 all",
                                 "Surrogate-Control": "max-age=600"})  # fmt: skip
    async with tier(origin, clock) as (shield, edge):
        _, headers, _ = await get(client, edge, "/t")
        assert "Surrogate-Key" not in headers and "Surrogate-Control" not in headers
        # The edge stored it with the shield's tags and the CDN lifetime (Surrogate-Control).
        assert edge.cache.purge_key("product-42") == 1
        clock.advance(300)  # past max-age=60, within the surrogate max-age=600
        _, headers, _ = await get(client, edge, "/t")  # refilled from the shield's hit
        assert headers["Cache-Status"].startswith("shield-1; hit")
        assert origin.fetches["/t"] == 1
        # A request from one of ours gets the fields from a stored entry too.
        ours = {"CDN-Loop": "georouter-edge-9"}
        _, direct, _ = await get(client, shield, "/t", headers=ours)
        assert direct["Surrogate-Key"] == "product-42 all"
        assert direct["Surrogate-Control"] == "max-age=600"
        _, plain, _ = await get(client, shield, "/t")
        assert "Surrogate-Key" not in plain


async def test_revalidation_and_stale_through_the_tier_rfc9111_4_3(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/r", headers={"Cache-Control": "max-age=10, stale-if-error=600"},
                  body=b"v1", etag='"v1"')  # fmt: skip
    async with tier(origin, clock) as (_, edge):
        assert (await get(client, edge, "/r"))[2] == b"v1"
        clock.advance(20)
        status, headers, body = await get(client, edge, "/r")
        assert (status, body) == (200, b"v1")
        # Both tiers revalidated: the origin answered the shield's If-None-Match with 304.
        assert origin.seen[-1].headers["If-None-Match"] == '"v1"'
        assert origin.fetches["/r"] == 2
        assert "fwd=stale" in headers["Cache-Status"]
        clock.advance(20)
        await origin.stop()  # the origin is gone: the shield serves its stale copy
        status, headers, body = await get(client, edge, "/r")
        assert (status, body) == (200, b"v1")
        assert (
            "shield-1; hit" in headers["Cache-Status"]
            and "origin-connect" in headers["Cache-Status"]
        )


async def test_a_failing_parent_is_marked_down_then_the_origin_answers(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/x", headers=CACHEABLE, body=b"direct")
    dead = "http://127.0.0.1:9"  # discard: nothing listens
    settings = ParentSettings(urls=(dead,), fail_after=2, retry_s=10)
    async with running_edge(origin.url, clock, name="edge-1", parents=settings) as edge:
        for i in range(3):
            origin.script(f"/x{i}", headers=CACHEABLE, body=b"direct")
            status, _, body = await get(client, edge, f"/x{i}")
            assert (status, body) == (200, b"direct")
        labels = {"parent": dead}
        assert metric(edge.metrics, "edge_parent_up", labels) == 0
        assert metric(edge.metrics, "edge_parent_requests_total",
                      {**labels, "result": "connect"}) == 2  # fmt: skip
        # Down after two failures: the third goes to the origin without trying it.
        assert metric(edge.metrics, "edge_parent_go_direct_total") == 3
        clock.advance(10)  # retry_s: the parent is tried again (and fails again)
        origin.script("/y", headers=CACHEABLE, body=b"direct")
        assert (await get(client, edge, "/y"))[0] == 200
        assert metric(edge.metrics, "edge_parent_requests_total",
                      {**labels, "result": "connect"}) == 3  # fmt: skip


async def test_without_go_direct_a_dead_parent_is_502(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/x", headers=CACHEABLE)
    settings = ParentSettings(urls=("http://127.0.0.1:9",), go_direct=False)
    async with running_edge(origin.url, clock, name="edge-1", parents=settings) as edge:
        assert (await get(client, edge, "/x"))[0] == 502
        assert origin.fetches["/x"] == 0


async def test_an_origin_5xx_relayed_by_the_shield_is_final_rfc9211_2_3(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/busy", status=503, headers={"Retry-After": "5"})
    async with tier(origin, clock, fail_after=1) as (shield, edge):
        status, headers, _ = await get(client, edge, "/busy")
        assert status == 503 and "fwd-status=503" in headers["Cache-Status"]
        assert origin.fetches["/busy"] == 1  # not asked again directly: it would repeat
        parent = {"parent": f"http://{shield.content}"}
        assert metric(edge.metrics, "edge_parent_up", parent) == 1
        assert metric(edge.metrics, "edge_parent_go_direct_total") == 0


async def test_a_parent_that_fails_is_marked_down_then_up_again_with_log_lines(
    origin: ScriptedOrigin,
    client: aiohttp.ClientSession,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level("INFO", logger="edge.upstream")
    async with ScriptedOrigin() as sick:  # a "shield" answering its own 503 (no Cache-Status)
        url = sick.url
        settings = ParentSettings(urls=(url,), fail_after=2, retry_s=5)
        async with running_edge(origin.url, clock, name="edge-1", parents=settings) as edge:
            for i in range(3):
                sick.script(f"/p{i}", status=503)
                origin.script(f"/p{i}", headers=CACHEABLE, body=b"from the origin")
                status, _, body = await get(client, edge, f"/p{i}")
                assert (status, body) == (200, b"from the origin")  # no client error
            assert sick.fetches["/p2"] == 0  # down after two: not asked
            assert metric(edge.metrics, "edge_parent_up", {"parent": url}) == 0
            assert metric(edge.metrics, "edge_parent_requests_total",
                          {"parent": url, "result": "unavailable"}) == 2  # fmt: skip
            assert f"event=parent_down parent={url}" in caplog.text
            clock.advance(5)  # retry_s: asked again, and it answers now
            sick.script("/p3", headers=CACHEABLE, body=b"from the shield")
            status, _, body = await get(client, edge, "/p3")
            assert (status, body) == (200, b"from the shield")
            assert metric(edge.metrics, "edge_parent_up", {"parent": url}) == 1
            assert f"event=parent_up parent={url}" in caplog.text
