"""Verified bytes (RFC 9530) through a real `edge serve` process in front of a scripted origin.

A body whose Content-Digest or Repr-Digest does not match is neither stored nor delivered
whole: a small one (whole before the head goes out) becomes a 502, a large one is cut
before its last bytes (short of its Content-Length, or without the last chunk); the next
request is a miss again. A good digest is stored and served with its fields; Want-Repr-Digest
and Want-Content-Digest are answered from the stored body (RFC 9530 §4).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from cdnlab.origin import ORIGIN_ROOT, create_app
from tests.origin_app import CACHEABLE, ScriptedOrigin, get, poll, running_edge
from tests.test_edge_process import Process, spawn, stop

pytest_plugins = ("tests.edge_fixtures",)

SMALL = b"small body " * 100  # whole within the relay's 64 KiB prebuffer
LARGE = os.urandom(1024 * 1024)  # streams: its head goes out before the body ends


def _digest(algorithm: str, body: bytes) -> bytes:
    return hashlib.new(algorithm.replace("-", ""), body).digest()


def field(algorithm: str, body: bytes) -> str:
    return f"{algorithm}=:{base64.b64encode(_digest(algorithm, body)).decode()}:"


def edge_argv(origin: str, name: str = "edge-digests-1") -> list[str]:
    return [sys.executable, "-m", "edge", "serve", "--name", name,
            "--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--origin", origin,
            "--token", "t0ken", "--drain-s", "0"]  # fmt: skip


@pytest.fixture
async def edge_process(origin: ScriptedOrigin) -> AsyncIterator[Process]:
    child = await spawn(edge_argv(origin.url))
    try:
        yield child
    finally:
        await stop(child)


async def fetch(
    client: aiohttp.ClientSession, edge: Process, path: str, **headers: str
) -> tuple[int, CIMultiDict[str], bytes]:
    hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
    async with client.get(f"http://{edge.fields['content']}{path}", headers=hdrs) as resp:
        return resp.status, CIMultiDict(resp.headers), await resp.read()


async def metric(client: aiohttp.ClientSession, edge: Process, name: str) -> float:
    async with client.get(f"http://{edge.fields['control']}/metrics") as resp:
        text = await resp.text()
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def cache_status(headers: CIMultiDict[str]) -> str:
    return headers.get("Cache-Status", "")


async def test_good_digest_is_stored_and_served_with_it_rfc9530_3(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    digest = field("sha-256", LARGE)
    origin.script("/img", headers={**CACHEABLE, "Repr-Digest": digest}, body=LARGE)
    status, headers, body = await fetch(client, edge_process, "/img")
    assert (status, body) == (200, LARGE)
    status, headers, body = await fetch(client, edge_process, "/img")
    assert (status, body) == (200, LARGE)
    assert "hit" in cache_status(headers)
    assert headers["Repr-Digest"] == digest
    assert origin.fetches["/img"] == 1
    assert await metric(client, edge_process, "edge_digests_verified_total") == 1


async def test_small_body_with_wrong_digest_is_502_and_not_stored_rfc9530(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    origin.script(
        "/feed", headers={**CACHEABLE, "Repr-Digest": field("sha-256", b"other")}, body=SMALL
    )
    for attempt in (1, 2):
        status, headers, _ = await fetch(client, edge_process, "/feed")
        assert status == 502
        assert "origin-digest" in cache_status(headers)
        assert origin.fetches["/feed"] == attempt  # never stored: a miss again
    mismatches = 'edge_digest_mismatches_total{field="repr"}'
    assert await metric(client, edge_process, mismatches) == 2
    logged = f"event=digest_mismatch url='{origin.url}/feed' digests=Repr-Digest:sha-256"
    assert any(logged in line for line in edge_process.log)


@pytest.mark.parametrize("chunked", [False, True])
async def test_large_body_with_wrong_digest_is_cut_before_its_end_rfc9530(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession, chunked: bool
) -> None:
    corrupt = bytearray(LARGE)
    corrupt[-1] ^= 1  # one flipped bit in the last byte
    origin.script(
        "/video",
        headers={**CACHEABLE, "Content-Digest": field("sha-512", LARGE)},
        body=bytes(corrupt),
        chunks=16 if chunked else 0,
    )
    for attempt in (1, 2):
        received = bytearray()
        with pytest.raises(aiohttp.ClientPayloadError):
            async with client.get(f"http://{edge_process.fields['content']}/video") as resp:
                assert resp.status == 200  # the head went out before the body ended
                async for chunk in resp.content.iter_any():
                    received += chunk
        assert len(received) < len(LARGE)  # the last bytes never left the edge
        assert origin.fetches["/video"] == attempt  # not stored: the next request misses
    mismatches = 'edge_digest_mismatches_total{field="content"}'
    assert await metric(client, edge_process, mismatches) == 2


@pytest.mark.parametrize(
    "stream", [{"Content-Type": "text/event-stream"}, {"X-Accel-Buffering": "no"}]
)
async def test_stream_with_a_length_and_wrong_digest_is_cut_before_its_end_rfc9112_6_3(
    origin: ScriptedOrigin,
    edge_process: Process,
    client: aiohttp.ClientSession,
    stream: dict[str, str],
) -> None:
    # Relayed as it arrives, but with a Content-Length: sending every byte before the
    # check would deliver the corrupt body complete (RFC 9112 §6.3); its last byte waits.
    origin.script(
        "/live", headers={**stream, "Content-Digest": field("sha-256", b"other")}, body=SMALL
    )
    received = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with client.get(f"http://{edge_process.fields['content']}/live") as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += chunk
    assert len(received) < len(SMALL)


async def test_unknown_algorithm_is_ignored_rfc9530_2(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    origin.script("/a", headers={**CACHEABLE, "Repr-Digest": "md5=:AAAA:"}, body=SMALL)
    assert (await fetch(client, edge_process, "/a"))[0] == 200
    status, headers, _ = await fetch(client, edge_process, "/a")
    assert status == 200 and "hit" in cache_status(headers)
    assert await metric(client, edge_process, "edge_digests_verified_total") == 0


async def test_want_repr_digest_answered_from_the_stored_body_rfc9530_4(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    origin.script("/plain", headers=CACHEABLE, body=SMALL)  # the origin sends no digest
    status, headers, _ = await fetch(client, edge_process, "/plain")
    assert status == 200 and "Repr-Digest" not in headers
    _, headers, body = await fetch(
        client, edge_process, "/plain", Want_Repr_Digest="sha-512=3, sha-256=10"
    )
    assert body == SMALL and "hit" in cache_status(headers)
    assert headers["Repr-Digest"] == field("sha-256", SMALL)
    _, headers, _ = await fetch(client, edge_process, "/plain", Want_Content_Digest="sha-512=1")
    assert headers["Content-Digest"] == field("sha-512", SMALL)
    assert "Repr-Digest" not in headers  # nothing computed for those who do not ask
    _, headers, _ = await fetch(client, edge_process, "/plain", Want_Repr_Digest="sha-256=0")
    assert "Repr-Digest" not in headers  # §4: 0 is "not acceptable"
    assert origin.fetches["/plain"] == 1


async def test_range_hit_keeps_repr_digest_and_drops_stored_content_digest_rfc9530_b3(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    digests = {"Repr-Digest": field("sha-256", LARGE), "Content-Digest": field("sha-256", LARGE)}
    origin.script("/big", headers={**CACHEABLE, **digests}, body=LARGE)
    assert (await fetch(client, edge_process, "/big"))[0] == 200
    status, headers, body = await fetch(client, edge_process, "/big", Range="bytes=0-99")
    assert (status, body) == (206, LARGE[:100])
    assert headers["Repr-Digest"] == digests["Repr-Digest"]  # still the whole representation
    assert "Content-Digest" not in headers  # the stored one describes the whole content
    status, headers, body = await fetch(
        client, edge_process, "/big", Range="bytes=100-199", Want_Content_Digest="sha-256=1"
    )
    assert (status, body) == (206, LARGE[100:200])
    assert headers["Content-Digest"] == field("sha-256", LARGE[100:200])
    assert origin.fetches["/big"] == 1


@pytest.fixture
async def demo_origin() -> AsyncIterator[str]:
    runner = web.AppRunner(create_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_demo_origin_digests_are_verified_by_the_edge_rfc9530_3(
    demo_origin: str, client: aiohttp.ClientSession
) -> None:
    child = await spawn(edge_argv(demo_origin))
    try:
        hero = (ORIGIN_ROOT / "img" / "hero.jpg").read_bytes()
        status, headers, body = await fetch(client, child, "/img/hero.jpg")
        assert (status, body) == (200, hero)
        assert headers["Repr-Digest"] == field("sha-256", hero)
        status, headers, body = await fetch(client, child, "/api/posts")
        assert status == 200
        assert headers["Repr-Digest"] == field("sha-256", body)
        assert await metric(client, child, "edge_digests_verified_total") == 2
    finally:
        await stop(child)


async def test_mismatched_body_never_reaches_the_disk_level(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    corrupt = LARGE[:-1] + bytes([LARGE[-1] ^ 1])
    origin.script(
        "/bad", headers={**CACHEABLE, "Repr-Digest": field("sha-256", LARGE)}, body=corrupt
    )
    origin.script(
        "/good", headers={**CACHEABLE, "Repr-Digest": field("sha-256", SMALL)}, body=SMALL
    )
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        with pytest.raises(aiohttp.ClientPayloadError):
            await get(client, edge, "/bad")
        assert (await get(client, edge, "/good"))[0] == 200
        disk = edge.disk
        assert disk is not None
        # The writes are queued in order: once the good one is on disk, the bad one would be.
        await poll(lambda: disk.loaded and not disk._queue and bool(list(tmp_path.glob("*/*.rec"))))
        records = list(tmp_path.glob("*/*.rec"))
        assert len(records) == 1
        assert SMALL in records[0].read_bytes()
        assert len(disk.index) == 1


async def test_digests_travel_through_a_parent_edge_unchanged_rfc9530(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    # A child edge filling from the parent edge (its shield): the parent's stored digest
    # reaches the child unchanged, and the child verifies it again on its own fill.
    digests = {"Repr-Digest": field("sha-512", LARGE), "Content-Digest": field("sha-256", LARGE)}
    origin.script("/clip", headers={**CACHEABLE, **digests}, body=LARGE)
    parent = f"http://{edge_process.fields['content']}"
    child = await spawn([*edge_argv(origin.url, "edge-digests-2"), "--parent", parent])
    try:
        status, headers, body = await fetch(client, child, "/clip")
        assert (status, body) == (200, LARGE)
        assert headers["Cache-Status"].startswith("edge-digests-1; ")  # through the parent
        assert (headers["Repr-Digest"], headers["Content-Digest"]) == (
            digests["Repr-Digest"],
            digests["Content-Digest"],
        )
        status, headers, body = await fetch(client, child, "/clip", Range="bytes=10-19")
        assert (status, body) == (206, LARGE[10:20])
        assert headers["Repr-Digest"] == digests["Repr-Digest"]
        assert "Content-Digest" not in headers
        assert await metric(client, child, "edge_digests_verified_total") == 1
        assert await metric(client, edge_process, "edge_digests_verified_total") == 1
        assert origin.fetches["/clip"] == 1
    finally:
        await stop(child)


async def test_head_answer_carries_no_content_digest_of_the_get_rfc9530_b2(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    digests = {"Repr-Digest": field("sha-256", LARGE), "Content-Digest": field("sha-256", LARGE)}
    origin.script("/h", headers={**CACHEABLE, **digests}, body=LARGE)
    for _ in ("miss", "hit"):
        async with client.head(f"http://{edge_process.fields['content']}/h") as resp:
            assert resp.status == 200
            assert resp.headers["Repr-Digest"] == digests["Repr-Digest"]
            assert "Content-Digest" not in resp.headers
    assert origin.fetches["/h"] == 1


async def test_digest_survives_a_restart_in_the_disk_record(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    digest = field("sha-256", LARGE)
    origin.script("/kept", headers={**CACHEABLE, "Repr-Digest": digest}, body=LARGE)
    host = {"Host": "img.example"}  # the same cache key across restarts (ports change)
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        assert (await get(client, edge, "/kept", headers=host))[0] == 200
        disk = edge.disk
        assert disk is not None
        await poll(lambda: disk.loaded and not disk._queue and bool(list(tmp_path.glob("*/*.rec"))))
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await poll(lambda: edge.ready())
        status, headers, body = await get(
            client, edge, "/kept", headers={**host, "Want-Repr-Digest": "sha-256=1"}
        )
        assert (status, body) == (200, LARGE)
        assert "hit" in headers["Cache-Status"]
        assert headers.getall("Repr-Digest") == [digest]  # stored, not computed again
    assert origin.fetches["/kept"] == 1


async def test_content_coded_body_is_checked_as_received_rfc9530_b5(
    origin: ScriptedOrigin, edge_process: Process, client: aiohttp.ClientSession
) -> None:
    # Representation data includes its content-coding (RFC 9110 §8.1): both fields cover
    # the gzip bytes, which the edge neither decodes nor changes.
    coded = gzip.compress(LARGE[:200_000])
    digests = {"Repr-Digest": field("sha-256", coded), "Content-Digest": field("sha-512", coded)}
    headers = {**CACHEABLE, **digests, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
    origin.script("/coded", headers=headers, body=coded)
    for outcome in ("fwd=uri-miss", "hit"):
        status, got, body = await fetch(client, edge_process, "/coded", Accept_Encoding="gzip")
        assert (status, body) == (200, coded)
        assert outcome in cache_status(got)
        assert (got["Repr-Digest"], got["Content-Digest"]) == (
            digests["Repr-Digest"],
            digests["Content-Digest"],
        )
    assert await metric(client, edge_process, "edge_digests_verified_total") == 1
