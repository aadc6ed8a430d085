"""The edge as a caching reverse proxy, end to end: a real edge in front of a scripted
origin on loopback, driven by aiohttp's client (and curl)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator

import aiohttp
import pytest

from edge.server import EdgeServer
from tests.origin_app import (
    CACHEABLE,
    FakeClock,
    ScriptedOrigin,
    get,
    metric,
    poll,
    running_edge,
)

pytest_plugins = ("tests.edge_fixtures",)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def edge(origin: ScriptedOrigin, clock: FakeClock) -> AsyncIterator[EdgeServer]:
    origin.clock = clock  # the origin's Date moves with the edge's time
    async with running_edge(origin.url, clock) as server:
        yield server


async def test_miss_then_hit_with_age_and_cache_status_rfc9211_2(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/a", headers=CACHEABLE, body=b"hello")
    status, headers, body = await get(client, edge, "/a")
    assert (status, body) == (200, b"hello")
    assert headers["Cache-Status"].startswith("edge-test-1; fwd=")
    assert "stored" in headers["Cache-Status"] and "fwd-status=200" in headers["Cache-Status"]
    assert headers["Via"] == "1.1 edge-test-1"  # RFC 9110 §7.6.3
    clock.advance(7)
    status, headers, body = await get(client, edge, "/a")
    assert (status, body) == (200, b"hello")
    assert headers["Age"] == "7"  # RFC 9111 §5.1
    # RFC 9211 §2.5: ttl is the lifetime left, counted with the Age sent.
    assert headers["Cache-Status"] == "edge-test-1; hit; ttl=53"
    assert headers["Via"] == "1.1 edge-test-1"
    assert origin.fetches["/a"] == 1
    assert (
        metric(
            edge.metrics, "edge_requests_total", {"cache": "hit", "method": "GET", "code": "200"}
        )
        == 1
    )


async def test_query_is_part_of_the_key_rfc9111_2(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/q", headers=CACHEABLE)
    await get(client, edge, "/q?v=1")
    await get(client, edge, "/q?v=2")
    await get(client, edge, "/q?v=1")
    assert origin.fetches["/q?v=1"] == 1 and origin.fetches["/q?v=2"] == 1


async def test_head_hit_has_headers_and_no_body_rfc9110_9_3_2(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/h", headers=CACHEABLE, body=b"0123456789")
    status, headers, body = await get(client, edge, "/h", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "10"
    # The HEAD miss filled the cache with a GET: the next GET and HEAD are hits.
    assert [s.method for s in origin.seen] == ["GET"]
    _, headers, body = await get(client, edge, "/h")
    assert body == b"0123456789" and "hit" in headers["Cache-Status"]
    _, headers, body = await get(client, edge, "/h", method="HEAD")
    assert body == b"" and headers["Content-Length"] == "10"
    assert origin.fetches["/h"] == 1


async def test_head_passed_to_the_origin_keeps_its_content_length_rfc9110_8_6(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/hp", headers=CACHEABLE, body=b"0123456789")
    # If-Match is the origin's to evaluate (RFC 9110 §13.1.1): the HEAD goes through.
    status, headers, body = await get(client, edge, "/hp", method="HEAD", headers={"If-Match": "*"})
    assert (status, body) == (200, b"") and origin.seen[-1].method == "HEAD"
    assert headers["Content-Length"] == "10"


async def test_post_passes_through_and_invalidates_rfc9111_4_4(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/p", headers=CACHEABLE, body=b"v1")
    await get(client, edge, "/p")
    status, headers, _ = await get(client, edge, "/p", method="POST", data=b"form=1")
    assert status == 200 and "fwd=method" in headers["Cache-Status"]
    post = origin.seen[-1]
    assert (post.method, post.body) == ("POST", b"form=1")
    origin.script("/p", headers=CACHEABLE, body=b"v2")
    _, headers, body = await get(client, edge, "/p")
    assert body == b"v2" and "hit" not in headers["Cache-Status"]
    assert origin.fetches["/p"] == 3


async def test_put_passes_through_untouched(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    # The cache-tests client configures its server this way.
    origin.script("/config/abc", status=201, body=b"OK")
    payload = b'[{"response_headers": [["Cache-Control", "max-age=1"]]}]'
    status, _, body = await get(
        client, edge, "/config/abc", method="PUT", data=payload,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    assert (status, body) == (201, b"OK")
    seen = origin.seen[-1]
    assert (seen.method, seen.body) == ("PUT", payload)
    assert seen.headers["Content-Type"] == "application/json"
    await get(client, edge, "/config/abc", method="PUT", data=payload)
    assert origin.fetches["/config/abc"] == 2


async def test_forwarding_headers_to_origin_rfc9110_7_6(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/f", headers=CACHEABLE)
    await get(
        client, edge, "/f",
        headers={"Host": "cdn.example.com", "X-Forwarded-For": "192.0.2.1",
                 "Connection": "close, X-Secret", "X-Secret": "hop"},
    )  # fmt: skip
    seen = origin.seen[-1].headers
    assert seen["Host"] == origin.url.removeprefix("http://")
    assert seen["X-Forwarded-Host"] == "cdn.example.com"
    assert seen["X-Forwarded-For"] == "192.0.2.1, 127.0.0.1"
    assert seen["Via"] == "1.1 edge-test-1"
    assert "X-Secret" not in seen  # named in Connection: hop-by-hop (RFC 9110 §7.6.1)
    assert seen["Surrogate-Capability"] == 'georouter-edge="Surrogate/1.0"'


async def test_surrogate_control_is_obeyed_and_removed_edge_arch_1_0(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/sc", headers={"Cache-Control": "no-store", "Surrogate-Control": "max-age=60"})
    for _ in range(2):
        _, headers, _ = await get(client, edge, "/sc")
        assert "Surrogate-Control" not in headers
    assert "hit" in headers["Cache-Status"] and origin.fetches["/sc"] == 1


async def test_revalidation_304_updates_stored_headers_rfc9111_4_3_4(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/r", headers={"Cache-Control": "max-age=10", "X-Version": "1"},
                  body=b"body-1", etag='"e1"')  # fmt: skip
    await get(client, edge, "/r")
    clock.advance(20)
    origin.script("/r", headers={"Cache-Control": "max-age=10", "X-Version": "2"},
                  body=b"never sent", etag='"e1"')  # fmt: skip
    status, headers, body = await get(client, edge, "/r")
    assert (status, body) == (200, b"body-1")
    assert origin.seen[-1].headers["If-None-Match"] == '"e1"'
    assert headers["X-Version"] == "2"
    assert "fwd=stale" in headers["Cache-Status"] and "fwd-status=304" in headers["Cache-Status"]
    _, headers, _ = await get(client, edge, "/r")
    assert "hit" in headers["Cache-Status"] and headers["X-Version"] == "2"
    assert origin.fetches["/r"] == 2


async def test_client_conditional_answered_from_cache_rfc9110_13_1_2(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/c", headers=CACHEABLE, body=b"body", etag='"v"')
    await get(client, edge, "/c")
    status, headers, body = await get(client, edge, "/c", headers={"If-None-Match": '"v"'})
    assert (status, body) == (304, b"")
    assert headers["ETag"] == '"v"' and "hit" in headers["Cache-Status"]
    assert origin.fetches["/c"] == 1


async def test_stale_while_revalidate_one_background_refresh_rfc5861_3(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    swr = {"Cache-Control": "max-age=10, stale-while-revalidate=60"}
    origin.script("/s", headers=swr, body=b"old")
    await get(client, edge, "/s")
    clock.advance(15)
    gate = asyncio.Event()
    origin.script("/s", headers=swr, body=b"new", gate=gate)
    answers = await asyncio.gather(*(get(client, edge, "/s") for _ in range(10)))
    assert {body for _, _, body in answers} == {b"old"}
    assert all("hit" in h["Cache-Status"] for _, h, _ in answers)
    await poll(lambda: origin.fetches["/s"] == 2)
    gate.set()
    await poll(lambda: len(edge.proxy.coalescer) == 0)  # the background refresh ended
    _, headers, body = await get(client, edge, "/s")
    assert body == b"new" and "hit" in headers["Cache-Status"]
    assert origin.fetches["/s"] == 2  # exactly one refresh for ten stale answers


async def test_background_refresh_keeps_the_entry_on_5xx_within_stale_if_error_rfc5861_4(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    # The response step decides alike in the foreground and the background: a server
    # error within stale-if-error keeps the stale entry, even if the error is storable.
    fields = "max-age=10, stale-while-revalidate=60, stale-if-error=600"
    origin.script("/k", headers={"Cache-Control": fields}, body=b"old")
    await get(client, edge, "/k")
    clock.advance(15)
    origin.script("/k", status=503, headers={"Cache-Control": "max-age=60"}, body=b"down")
    status, headers, body = await get(client, edge, "/k")
    assert (status, body) == (200, b"old") and "stale-while-revalidate" in headers["Cache-Status"]
    await poll(lambda: origin.fetches["/k"] == 2 and len(edge.proxy.coalescer) == 0)
    status, _, body = await get(client, edge, "/k")
    assert (status, body) == (200, b"old")
    assert metric(edge.metrics, "edge_origin_errors_total", {"kind": "status_5xx"}) == 1


async def test_stale_if_error_on_500_rfc5861_4(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/e", headers={"Cache-Control": "max-age=10, stale-if-error=600"}, body=b"old")
    await get(client, edge, "/e")
    clock.advance(20)
    origin.script("/e", status=500, body=b"broken")
    status, headers, body = await get(client, edge, "/e")
    assert (status, body) == (200, b"old")
    assert "hit" in headers["Cache-Status"]
    assert edge.snapshot().status == "degraded"


async def test_stale_if_error_origin_down_rfc5861_4(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/d", headers={"Cache-Control": "max-age=10, stale-if-error=600"}, body=b"old")
    await get(client, edge, "/d")
    clock.advance(20)
    await origin.stop()
    status, _, body = await get(client, edge, "/d")
    assert (status, body) == (200, b"old")
    assert metric(edge.metrics, "edge_origin_errors_total", {"kind": "connect"}) == 1


async def test_stale_without_stale_if_error_is_502_when_origin_down(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession, clock: FakeClock
) -> None:
    origin.script("/m", headers={"Cache-Control": "max-age=10, must-revalidate"}, body=b"old")
    await get(client, edge, "/m")
    clock.advance(20)
    await origin.stop()
    status, headers, _ = await get(client, edge, "/m")
    assert status == 502  # RFC 9111 §5.2.2.2: must-revalidate forbids serving it stale
    assert "edge-test-1" in headers["Cache-Status"]


async def test_hundred_concurrent_misses_one_origin_fetch(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    origin.script("/hot", headers=CACHEABLE, body=b"x" * 5000, gate=gate)
    tasks = [asyncio.create_task(get(client, edge, "/hot")) for _ in range(100)]
    await poll(lambda: metric(edge.metrics, "edge_coalesced_waits_total") == 99)
    gate.set()
    answers = await asyncio.gather(*tasks)
    assert {(status, body) for status, _, body in answers} == {(200, b"x" * 5000)}
    assert origin.fetches["/hot"] == 1


async def test_coalescing_wait_is_bounded(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/slow", headers=CACHEABLE, delay_s=1.0)
    async with running_edge(origin.url, coalesce_wait_s=0.05) as edge:
        answers = await asyncio.gather(*(get(client, edge, "/slow") for _ in range(3)))
    assert [status for status, _, _ in answers] == [200, 200, 200]
    # Followers gave up waiting for the slow leader and fetched on their own.
    assert origin.fetches["/slow"] == 3


async def test_uncacheable_responses_are_not_shared_rfc9111_3(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    gate = asyncio.Event()
    origin.script("/me", headers={"Cache-Control": "private"}, body=b"alice's", gate=gate)
    tasks = [asyncio.create_task(get(client, edge, "/me")) for _ in range(5)]
    await poll(lambda: metric(edge.metrics, "edge_coalesced_waits_total") == 4)
    gate.set()
    answers = await asyncio.gather(*tasks)
    assert [status for status, _, _ in answers] == [200] * 5
    assert origin.fetches["/me"] == 5  # each waiter fetched its own copy
    reason = {"reason": "private"}
    assert metric(edge.metrics, "edge_uncacheable_responses_total", reason) == 5


async def test_only_if_cached_miss_is_504_rfc9111_5_2_1_7(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/o", headers=CACHEABLE)
    status, _, _ = await get(client, edge, "/o", headers={"Cache-Control": "only-if-cached"})
    assert status == 504 and origin.fetches["/o"] == 0


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
async def test_curl_sees_miss_then_hit(origin: ScriptedOrigin, edge: EdgeServer) -> None:
    origin.script("/curl", headers=CACHEABLE, body=b"via curl")
    outputs = []
    for _ in range(2):
        proc = await asyncio.create_subprocess_exec(
            "curl", "-sS", "-i", "--max-time", "10", f"http://{edge.content}/curl",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        stdout, _ = await proc.communicate()
        assert proc.returncode == 0
        outputs.append(stdout.decode())
    assert "fwd=" in outputs[0] and "via curl" in outputs[0]
    assert "cache-status: edge-test-1; hit" in outputs[1].lower()
    assert origin.fetches["/curl"] == 1


async def test_range_from_cache_206_rfc9110_14_2(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/r.bin", headers=CACHEABLE, body=b"0123456789")
    status, headers, body = await get(client, edge, "/r.bin", headers={"Range": "bytes=2-5"})
    assert (status, body) == (206, b"2345")  # a miss: filled whole, answered in part
    assert headers["Content-Range"] == "bytes 2-5/10"
    assert "Range" not in origin.seen[-1].headers
    status, headers, body = await get(client, edge, "/r.bin", headers={"Range": "bytes=-3"})
    assert (status, body) == (206, b"789") and "hit" in headers["Cache-Status"]
    assert origin.fetches["/r.bin"] == 1


async def test_unsatisfiable_range_is_416_rfc9110_15_5_17(
    origin: ScriptedOrigin, edge: EdgeServer, client: aiohttp.ClientSession
) -> None:
    origin.script("/r.bin", headers=CACHEABLE, body=b"0123456789")
    await get(client, edge, "/r.bin")
    status, headers, _ = await get(client, edge, "/r.bin", headers={"Range": "bytes=50-60"})
    assert status == 416 and headers["Content-Range"] == "bytes */10"
