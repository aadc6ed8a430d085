"""The edge at its limits and when the origin misbehaves: every case an answer, never a
hang, never a crash, nothing broken stored."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from cdnlab.loopback import free_port
from edge.relay import STREAM_PREBUFFER_BYTES
from edge.server import EdgeServer
from tests.origin_app import CACHEABLE, RawOrigin, ScriptedOrigin, get, metric, running_edge

pytest_plugins = ("tests.edge_fixtures",)


async def fetch(
    client: aiohttp.ClientSession, edge: EdgeServer, path: str
) -> tuple[int, str, bytes]:
    """Status, Cache-Status and body of a GET."""
    status, headers, body = await get(client, edge, path)
    return status, headers.get("Cache-Status", ""), body


async def raw_exchange(edge: EdgeServer, request: bytes) -> bytes:
    """Send bytes to the content port; return the status line the edge answers."""
    assert edge.content is not None
    reader, writer = await asyncio.open_connection(edge.content.host, edge.content.port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()


async def test_origin_down_is_502_rfc9110_15_6_3(client: aiohttp.ClientSession) -> None:
    async with running_edge(f"http://127.0.0.1:{free_port('127.0.0.1')}") as edge:
        status, cache_status, _ = await fetch(client, edge, "/x")
        assert status == 502
        assert "detail=origin-connect" in cache_status
        assert edge.snapshot().status == "degraded"


async def test_origin_timeout_is_504_rfc9110_15_6_5(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/slow", headers=CACHEABLE, delay_s=5.0)
    async with running_edge(origin.url, origin_read_timeout_s=0.2) as edge:
        status, cache_status, _ = await fetch(client, edge, "/slow")
        assert status == 504 and "origin-timeout" in cache_status
        assert metric(edge.metrics, "edge_origin_errors_total", {"kind": "timeout"}) == 1


async def test_origin_5xx_without_stale_is_relayed(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/boom", status=503, body=b"down for maintenance")
    async with running_edge(origin.url) as edge:
        status, _, body = await fetch(client, edge, "/boom")
        assert (status, body) == (503, b"down for maintenance")


MALFORMED = {
    "bad status line": b"HTTP/1.1 two hundred OK\r\nContent-Length: 2\r\n\r\nok",
    "broken chunking": b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "truncated body": b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
    b"Content-Length: 100\r\n\r\nonly ten b",
    "bad header": b"HTTP/1.1 200 OK\r\nCache Control max-age\r\n\r\n",
}


@pytest.mark.parametrize("payload", MALFORMED.values(), ids=MALFORMED.keys())
async def test_malformed_origin_response_is_502_and_not_stored(
    payload: bytes, client: aiohttp.ClientSession
) -> None:
    async with RawOrigin(payload) as raw, running_edge(raw.url) as edge:
        for attempt in (1, 2):
            status, cache_status, _ = await fetch(client, edge, "/m")
            assert status == 502, attempt
            assert "origin-invalid" in cache_status
            assert raw.connections == attempt  # never answered from the cache
        assert edge.cache.objects == 0


async def test_truncated_large_body_aborts_the_stream_and_is_not_stored(
    client: aiohttp.ClientSession,
) -> None:
    # Past the pre-buffer the head has gone out: the client sees a cut connection.
    size = STREAM_PREBUFFER_BYTES * 4
    head = f"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: {size}\r\n\r\n"
    payload = head.encode() + b"x" * (STREAM_PREBUFFER_BYTES * 2)
    async with RawOrigin(payload) as raw, running_edge(raw.url) as edge:
        for attempt in (1, 2):
            with pytest.raises(aiohttp.ClientPayloadError):
                await fetch(client, edge, "/cut")
            assert raw.connections == attempt  # nothing was stored to answer from
        assert edge.cache.objects == 0


async def test_chunked_origin_response_streams_and_is_stored(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB, past the pre-buffer: really streamed
    origin.script("/chunked", headers=CACHEABLE, body=body, chunks=16)
    async with running_edge(origin.url) as edge:
        status, cache_status, got = await fetch(client, edge, "/chunked")
        assert (status, got) == (200, body) and "stored" in cache_status
        status, cache_status, got = await fetch(client, edge, "/chunked")
        assert (status, got) == (200, body) and "hit" in cache_status
        assert origin.fetches["/chunked"] == 1


async def test_object_over_max_streams_through_unstored(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    body = b"y" * 300_000
    origin.script("/chunky", headers=CACHEABLE, body=body, chunks=30)  # no Content-Length
    origin.script("/sized", headers=CACHEABLE, body=body)  # Content-Length over the max
    async with running_edge(origin.url, max_object_bytes=100_000) as edge:
        for path in ("/chunky", "/sized"):
            for _ in range(2):
                status, cache_status, got = await fetch(client, edge, path)
                assert (status, got) == (200, body)
                assert "hit" not in cache_status
            assert origin.fetches[path] == 2
        assert edge.cache.objects == 0


async def test_request_line_over_limit_is_rejected_and_edge_survives(
    origin: ScriptedOrigin,
) -> None:
    origin.script("/ok", headers=CACHEABLE)
    async with running_edge(origin.url, max_line_bytes=1024, max_field_bytes=1024) as edge:
        long_target = "/" + "a" * 2000
        line = await raw_exchange(edge, f"GET {long_target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert line.split()[1] in (b"400", b"414", b"431")
        big_field = "X-Big: " + "b" * 2000
        line = await raw_exchange(
            edge, f"GET /ok HTTP/1.1\r\nHost: x\r\n{big_field}\r\n\r\n".encode()
        )
        assert line.split()[1] in (b"400", b"431")
        just_fits = "X-Big: " + "b" * 900
        line = await raw_exchange(
            edge, f"GET /ok HTTP/1.1\r\nHost: x\r\n{just_fits}\r\n\r\n".encode()
        )
        assert line.split()[1] == b"200"


async def test_header_count_over_limit_is_rejected(origin: ScriptedOrigin) -> None:
    origin.script("/ok", headers=CACHEABLE)
    async with running_edge(origin.url, max_headers=20) as edge:
        many = "".join(f"X-H{i}: v\r\n" for i in range(30))
        line = await raw_exchange(edge, f"GET /ok HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode())
        assert line.split()[1] in (b"400", b"431")
        few = "".join(f"X-H{i}: v\r\n" for i in range(10))
        line = await raw_exchange(edge, f"GET /ok HTTP/1.1\r\nHost: x\r\n{few}\r\n".encode())
        assert line.split()[1] == b"200"


async def test_request_body_over_limit_is_413_rfc9110_15_5_14(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/upload", status=201, body=b"stored")
    async with running_edge(origin.url, max_body_bytes=10_000) as edge:
        assert (await get(client, edge, "/upload", "POST", data=b"z" * 10_001))[0] == 413
        assert (await get(client, edge, "/upload", "POST", data=b"z" * 10_000))[0] == 201
        assert origin.fetches["/upload"] == 1


# A PUT is idempotent, but its body streams to the origin as it arrives (never held
# whole), so there is nothing to send again: only requests without a body are retried.
@pytest.mark.parametrize(("method", "attempts"), [("GET", 2), ("PUT", 1), ("POST", 1)])
async def test_only_idempotent_requests_retry_a_dropped_connection_rfc9110_9_2_2(
    method: str, attempts: int, client: aiohttp.ClientSession
) -> None:
    # The raw origin reads the request and closes without a word.
    async with RawOrigin(b"") as raw, running_edge(raw.url) as edge:
        status, _, _ = await get(client, edge, "/x", method, data=b"d")
        assert status == 502
        assert raw.connections == attempts
