"""Every input the fuzz targets found, replayed: against the pure code where the fault
lies and, where it reaches a client, against the real program.

Each test failed before its fix landed.
"""

from __future__ import annotations

import asyncio

import pytest
from multidict import CIMultiDict

from edge.rules import invalidation_targets
from edge.server import EdgeServer
from fuzz.http_target import HttpTarget
from tests.origin_app import ScriptedOrigin

pytest_plugins = ("tests.edge_fixtures",)

# Found by the http target: a client's Host that is not a valid URL authority (an unclosed
# IPv6 bracket), on an unsafe request whose answer carries Location or Content-Location.
# RFC 9111 §4.4 invalidation joins those onto http://<Host><target>; urllib refuses the
# base with ValueError("Invalid IPv6 URL"), so the edge answers 500 (its handler raised)
# instead of relaying the origin's answer. Such a Location now matches nothing.
BAD_HOST_POST = b"POST /form HTTP/1.1\r\nHost: [\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize("host", ["[", "a]", "[::1"])
def test_invalidation_ignores_locations_under_an_unparsable_host_rfc9111_4_4(host: str) -> None:
    moved = CIMultiDict({"Location": "/moved"})
    assert invalidation_targets(host, "/form", "POST", 201, moved) == ["/form"]


def test_http_target_replays_the_bad_host_post() -> None:
    target = HttpTarget()
    try:
        assert target.check(BAD_HOST_POST) == (("unsafe",),)
    finally:
        target.close()


async def exchange(where: str, request: bytes) -> bytes:
    host, port = where.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
    finally:
        writer.close()


async def test_edge_relays_the_origin_answer_to_a_post_with_a_bad_host(
    origin: ScriptedOrigin, edge: EdgeServer
) -> None:
    origin.script("/form", status=201, headers={"Location": "/form/1"}, body=b"made")
    status_line = await exchange(str(edge.content), BAD_HOST_POST)
    assert status_line.startswith(b"HTTP/1.1 201 "), status_line
