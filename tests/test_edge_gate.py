"""The content port's gate on the real edge: PURGE and BAN answered by the edge and never
forwarded; request filters refuse (and count) traversal, NUL, CRLF and unlisted methods
before the cache or the origin, or only count them in logging-only mode."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest

from edge.armour import ArmourSettings
from edge.config import SiteConfig
from edge.filters import RECOMMENDED_METHODS, FilterPolicy, inspect
from edge.server import EdgeServer
from tests.origin_app import ScriptedOrigin, get, metric, running_edge

pytest_plugins = ("tests.edge_fixtures",)

POLICY = FilterPolicy(frozenset(RECOMMENDED_METHODS))


async def raw(edge: EdgeServer, head: bytes) -> bytes:
    """Send one raw request head (as written: no client normalises it); the status line."""
    assert edge.content is not None
    reader, writer = await asyncio.open_connection(edge.content.host, edge.content.port)
    try:
        writer.write(head)
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        ("/a/../etc/passwd", "traversal"),
        ("/a/%2e%2e/etc/passwd", "traversal"),
        ("/a/%2E./x", "traversal"),
        ("/a/./b", "traversal"),
        ("/..", "traversal"),
        ("/a/%2e%2e%2fetc", "traversal"),
        ("/a%00.jpg", "nul"),
        ("/a%2fb", "slash"),
        ("/a\\b", "slash"),
        ("/r?next=%0d%0aSet-Cookie:x", "crlf"),
    ],
)
def test_filters_refuse_what_cannot_be_normalised_safely(target: str, rule: str) -> None:
    verdict = inspect("GET", target, [], POLICY)
    assert verdict.refused_by == rule and verdict.status == 400


@pytest.mark.parametrize(
    "target", ["/", "/a/b.c/d..e/.f", "/a?x=../y", "/img/a.png?v=2", "/a%20b", "/...", "/a."]
)
def test_filters_pass_ordinary_targets(target: str) -> None:
    assert inspect("GET", target, [("Host", "x"), ("Accept", "*/*")], POLICY).matched == ()


def test_header_value_with_cr_lf_or_nul_is_header_injection() -> None:
    for value in ("a\r\nSet-Cookie: x", "a\nb", "a\x00"):
        assert inspect("GET", "/", [("X-A", value)], POLICY).refused_by == "crlf"


def test_method_outside_the_site_list_is_405_and_overlong_is_414() -> None:
    assert inspect("TRACE", "/", [], POLICY).status == 405
    short = dataclasses.replace(POLICY, max_url_bytes=10)
    assert inspect("GET", "/" + "a" * 10, [], short).status == 414


def test_log_only_rules_count_without_refusing() -> None:
    policy = dataclasses.replace(POLICY, log_only=frozenset({"traversal"}))
    verdict = inspect("GET", "/a/../b%00", [], policy)
    assert verdict.matched == ("nul", "traversal") and verdict.refused_by == "nul"
    assert inspect("GET", "/a/../b", [], policy).refused_by is None


@pytest.mark.parametrize(
    ("target", "rule"),
    [
        (b"/a/../etc/passwd", "traversal"),
        (b"/a/%2e%2e/etc/passwd", "traversal"),
        (b"/a%00", "nul"),
        (b"/r?next=%0d%0aSet-Cookie:x", "crlf"),
    ],
)
async def test_filtered_requests_get_400_never_reach_the_origin_and_are_counted(
    origin: ScriptedOrigin, edge: EdgeServer, target: bytes, rule: str
) -> None:
    status = await raw(edge, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 400 ")
    assert origin.seen == []
    labels = {"rule": rule, "action": "refused"}
    assert metric(edge.metrics, "edge_filter_matches_total", labels) == 1


async def test_method_not_allowed_by_the_site_is_405_with_allow(origin: ScriptedOrigin) -> None:
    site = SiteConfig(name="x", hosts=("x",), origin=origin.url, methods=RECOMMENDED_METHODS)
    async with running_edge(origin.url, sites=(site,)) as edge:
        status = await raw(edge, b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 405 ")
    assert origin.seen == []


async def test_a_site_without_a_method_list_passes_any_method(origin: ScriptedOrigin) -> None:
    # RFC 9111 §4.4: an origin's own unsafe methods (M-SEARCH) reach it and invalidate.
    async with running_edge(origin.url) as edge:
        status = await raw(edge, b"M-SEARCH / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not status.startswith(b"HTTP/1.1 405 ")
    assert [seen.method for seen in origin.seen] == ["M-SEARCH"]


async def test_log_only_rule_passes_and_counts(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/a/%2e%2e/b", body=b"through")
    armour = ArmourSettings(log_only=frozenset({"traversal"}))
    async with running_edge(origin.url, armour=armour) as edge:
        status = await raw(edge, b"GET /a/%2e%2e/b HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status.startswith(b"HTTP/1.1 200 ")
        labels = {"rule": "traversal", "action": "logged"}
        assert metric(edge.metrics, "edge_filter_matches_total", labels) == 1
    assert len(origin.seen) == 1


async def test_purge_without_token_is_401_and_never_reaches_the_origin(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/a.jpg", body=b"img", headers={"Cache-Control": "max-age=600"})
    assert (await get(client, edge, "/a.jpg"))[0] == 200
    for auth in ({}, {"Authorization": "Bearer wrong"}):
        status, headers, _ = await get(client, edge, "/a.jpg", "PURGE", headers=auth)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    # BAN: aiohttp's C parser (llhttp) knows no such method and answers 400 itself; the
    # pure-Python parser passes it to the gate, which treats it as a prefix PURGE.
    assert (await get(client, edge, "/a.jpg", "BAN"))[0] in (400, 401)
    assert [seen.method for seen in origin.seen] == ["GET"]
    assert (await get(client, edge, "/a.jpg"))[0] == 200
    assert origin.fetches["/a.jpg"] == 1  # still stored
    assert metric(edge.metrics, "edge_content_purges_total", {"result": "unauthorized"}) == 2


async def test_purge_with_token_purges_its_own_url(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    for path in ("/img/a.jpg", "/img/b.jpg"):
        origin.script(path, body=b"img", headers={"Cache-Control": "max-age=600"})
        await get(client, edge, path)
    token = {"Authorization": "Bearer t0ken"}
    status, _, body = await get(client, edge, "/img/a.jpg", "PURGE", headers=token)
    assert (status, body) == (200, b'{"purged": 1}')
    await get(client, edge, "/img/a.jpg")
    await get(client, edge, "/img/b.jpg")
    assert (origin.fetches["/img/a.jpg"], origin.fetches["/img/b.jpg"]) == (2, 1)
    assert {seen.method for seen in origin.seen} == {"GET"}
