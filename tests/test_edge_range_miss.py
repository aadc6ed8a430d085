"""Range on a miss (RFC 9110 §14.2) through a real `edge serve` process: the 206 goes out
as soon as its bytes are in, while the edge fills the whole object in the background with
one origin fetch shared by every request for it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.origin_app import ScriptedOrigin, poll
from tests.test_edge_digests import edge_argv, fetch, field, metric
from tests.test_edge_process import Process, spawn, stop

pytest_plugins = ("tests.edge_fixtures",)

OBJECT = os.urandom(761_387)  # the demo's hero.jpg size
FIRST_PART = 128 * 1024  # sent before the origin pauses


class PausingOrigin:
    """Sends OBJECT's first FIRST_PART bytes, then waits for ``resume`` before the rest."""

    def __init__(self) -> None:
        self.resume = asyncio.Event()
        self.fetches = 0
        self.ranges: list[str | None] = []
        self.url = ""
        self.extra: dict[str, str] = {}  # more response fields
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.fetches += 1
        self.ranges.append(request.headers.get("Range"))
        headers = {"Cache-Control": "max-age=60", "Repr-Digest": field("sha-256", OBJECT)}
        headers.update(self.extra)
        response = web.StreamResponse(headers=headers)
        response.content_length = len(OBJECT)
        await response.prepare(request)
        await response.write(OBJECT[:FIRST_PART])
        await self.resume.wait()
        await response.write(OBJECT[FIRST_PART:])
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        self.resume.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def pausing() -> AsyncIterator[PausingOrigin]:
    origin = PausingOrigin()
    await origin.start()
    try:
        yield origin
    finally:
        await origin.stop()


@pytest.fixture
async def edge_process(pausing: PausingOrigin) -> AsyncIterator[Process]:
    child = await spawn(edge_argv(pausing.url))
    try:
        yield child
    finally:
        await stop(child)


async def test_range_miss_is_206_before_the_whole_object_rfc9110_14_2(
    pausing: PausingOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    # The origin holds back everything past FIRST_PART: a 206 now proves the edge did
    # not wait for the whole object.
    status, headers, body = await fetch(client, edge_process, "/img/hero.jpg", Range="bytes=0-99")
    assert (status, body) == (206, OBJECT[:100])
    assert headers["Content-Range"] == f"bytes 0-99/{len(OBJECT)}"
    assert headers["Repr-Digest"] == field("sha-256", OBJECT)  # the whole representation's
    assert "Content-Digest" not in headers
    assert pausing.ranges == [None]  # the fill asked for the whole object
    # Meanwhile a full GET follows the same flight; once the origin resumes it is served.
    whole = asyncio.create_task(fetch(client, edge_process, "/img/hero.jpg"))
    pausing.resume.set()
    status, headers, body = await whole
    assert (status, body) == (200, OBJECT)
    # Stored: a later range beyond the first part is a hit, and the origin saw one fetch.
    status, headers, body = await fetch(
        client, edge_process, "/img/hero.jpg", Range="bytes=700000-700099"
    )
    assert (status, body) == (206, OBJECT[700000:700100])
    assert "hit" in headers["Cache-Status"]
    assert pausing.fetches == 1
    assert await metric(client, edge_process, "edge_digests_verified_total") == 1


async def test_range_miss_sends_only_stored_fields_rfc9111_5_2_2_4_and_5_2_2_7(
    pausing: PausingOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    # A 206 cut from a fill is a cache's answer: fields the store drops (Set-Cookie, those
    # named by no-cache="..." and private="...") are not sent, to this client or a follower.
    pausing.extra = {
        "Cache-Control": 'max-age=60, no-cache="Set-Cookie", private="X-Secret"',
        "Set-Cookie": "session=leader",
        "X-Secret": "leader's",
    }
    for _ in range(2):  # the leader, then a follower served from the same fill
        status, headers, body = await fetch(client, edge_process, "/c", Range="bytes=0-9")
        assert (status, body) == (206, OBJECT[:10])
        assert "Set-Cookie" not in headers
        assert "X-Secret" not in headers
    assert pausing.fetches == 1


async def test_range_miss_past_the_first_part_waits_for_its_bytes(
    pausing: PausingOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    late = asyncio.create_task(
        fetch(client, edge_process, "/v", Range=f"bytes={len(OBJECT) - 10}-")
    )
    await poll(lambda: pausing.fetches == 1)
    pausing.resume.set()
    status, _, body = await late
    assert (status, body) == (206, OBJECT[-10:])
    assert pausing.fetches == 1


async def test_unsatisfiable_range_miss_is_416_rfc9110_15_5_17(
    pausing: PausingOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    status, headers, _ = await fetch(client, edge_process, "/x", Range=f"bytes={len(OBJECT)}-")
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(OBJECT)}"
    pausing.resume.set()
    await poll(lambda: pausing.fetches == 1)
    status, headers, body = await fetch(client, edge_process, "/x")
    assert (status, body) == (200, OBJECT)
    assert pausing.fetches == 1


async def test_uncacheable_range_miss_is_relayed_from_the_one_fetch(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    # Not storable: the background fill hands its answer to the client, no second fetch.
    origin.script("/private", headers={"Cache-Control": "private"}, body=b"0123456789")
    child = await spawn(edge_argv(origin.url))
    try:
        status, headers, body = await fetch(client, child, "/private", Range="bytes=0-3")
        assert (status, body) == (200, b"0123456789")  # the origin's answer, as it is
        assert "fwd=uri-miss" in headers["Cache-Status"] and "stored" not in headers["Cache-Status"]
        assert origin.fetches["/private"] == 1
    finally:
        await stop(child)


async def test_concurrent_range_misses_share_the_fill_and_answer_at_once(
    pausing: PausingOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    # The origin still holds back the rest: both 206s come from the one fill's first part.
    first = fetch(client, edge_process, "/shared", Range="bytes=0-99")
    second = fetch(client, edge_process, "/shared", Range="bytes=1000-1999")
    (s1, _, b1), (s2, h2, b2) = await asyncio.gather(first, second)
    assert (s1, b1) == (206, OBJECT[:100])
    assert (s2, b2) == (206, OBJECT[1000:2000])
    assert h2["Content-Range"] == f"bytes 1000-1999/{len(OBJECT)}"
    assert pausing.fetches == 1
