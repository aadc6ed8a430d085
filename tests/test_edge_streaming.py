"""Event streams and streamed API answers, posts and comments (issue 12).

- A stream (text/event-stream, X-Accel-Buffering: no) and an uncacheable body of unknown
  length are relayed as they arrive: the first event reaches the client while the origin
  still holds the rest (it waits on an event the test sets only once the client has it).
- A stream is never stored and is judged by limits.stream_idle_timeout_s between reads,
  not by the ordinary read timeout.
- Request bodies stream to the origin (never held whole: the edge's peak RSS grows by far
  less than the body), bounded by limits.max_body_bytes (413, also mid-stream).
- Answers to requests with Authorization (RFC 9111 §3.5) or a Cookie (the edge's own
  policy) are not shared unless the origin says so; Set-Cookie is never stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge.config import STREAM_IDLE_TIMEOUT_S, load_config
from edge.errors import ConfigError
from tests.origin_app import LOOPBACK, ScriptedOrigin, _ServedApp, get, metric, running_edge
from tests.test_edge_process import spawn, stop

pytest_plugins = ("tests.edge_fixtures",)

# A test gives up here instead of hanging (an edge that holds the stream back deadlocks
# with an origin that waits for the client to see the first event).
GIVE_UP_S = 10.0
MiB = 1024 * 1024


@dataclass
class StreamOrigin(_ServedApp):
    """An origin that sends the head and a first event, then waits for ``release`` (set by
    the test) or sleeps ``quiet_s`` (scripted quiet), then sends a last event and ends."""

    headers: dict[str, str] = field(default_factory=dict)
    quiet_s: float = 0.0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/events", self._events)
        return app

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        response = web.StreamResponse(headers=self.headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        if self.quiet_s:
            await asyncio.sleep(self.quiet_s)  # a scripted quiet stream, not synchronisation
        else:
            await self.release.wait()
        await response.write(b"data: last\n\n")
        await response.write_eof()
        return response


SSE = {"Content-Type": "text/event-stream"}


@pytest.mark.parametrize(
    "headers",
    [
        SSE,
        {**SSE, "Cache-Control": "max-age=60"},  # a stream is never held back nor stored
        {"Content-Type": "application/x-ndjson", "X-Accel-Buffering": "no"},
        {"Content-Type": "application/json", "Cache-Control": "no-store"},  # no length
        {"Content-Type": "application/json", "Cache-Control": "private"},
    ],
    ids=["event-stream", "event-stream-max-age", "x-accel-buffering-no", "no-store", "private"],
)
async def test_first_event_reaches_the_client_before_the_stream_ends(
    headers: dict[str, str], client: aiohttp.ClientSession
) -> None:
    async with StreamOrigin(headers=headers) as origin, running_edge(origin.url) as edge:
        async with asyncio.timeout(GIVE_UP_S):
            async with client.get(f"http://{edge.content}/events") as resp:
                assert resp.status == 200
                assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
                origin.release.set()  # only now may the origin finish the stream
                assert await resp.read() == b"data: last\n\n"
        assert edge.cache.objects == 0


async def test_coalesced_stream_clients_each_get_the_first_event(
    client: aiohttp.ClientSession,
) -> None:
    # The first client leads the fetch; the second must not wait for its stream to end.
    async with StreamOrigin(headers=SSE) as origin, running_edge(origin.url) as edge:
        async with asyncio.timeout(GIVE_UP_S):
            url = f"http://{edge.content}/events"
            async with client.get(url) as one, client.get(url) as two:
                for resp in (one, two):
                    assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
                origin.release.set()
                for resp in (one, two):
                    assert await resp.read() == b"data: last\n\n"
        assert origin.requests == 2


async def test_stream_is_never_stored(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    # Even a whole, short event stream with a Content-Length and a public lifetime.
    headers = {**SSE, "Cache-Control": "public, max-age=600"}
    origin.script("/events", headers=headers, body=b"data: first\n\ndata: last\n\n")
    async with running_edge(origin.url) as edge:
        for _ in range(2):
            status, got, body = await get(client, edge, "/events")
            assert (status, body) == (200, b"data: first\n\ndata: last\n\n")
            assert "stored" not in got["Cache-Status"]
        assert origin.fetches["/events"] == 2
        assert edge.cache.objects == 0
        assert metric(edge.metrics, "edge_uncacheable_responses_total", {"reason": "stream"}) == 2


READ_TIMEOUT_S = 0.5
QUIET_S = 3 * READ_TIMEOUT_S


@pytest.mark.parametrize(
    ("headers", "cut"),
    [(SSE, False), ({"Content-Type": "application/json", "Cache-Control": "no-store"}, True)],
    ids=["event-stream-idle-timeout", "ordinary-read-timeout"],
)
async def test_quiet_stream_is_not_cut_by_the_read_timeout(
    headers: dict[str, str], cut: bool, client: aiohttp.ClientSession
) -> None:
    # Quiet for three read timeouts, well within the stream idle timeout: a stream lives,
    # an ordinary (not slow-by-design) body is cut once its head went out.
    async with (
        StreamOrigin(headers=headers, quiet_s=QUIET_S) as origin,
        running_edge(
            origin.url, origin_read_timeout_s=READ_TIMEOUT_S, stream_idle_timeout_s=30.0
        ) as edge,
    ):
        async with asyncio.timeout(GIVE_UP_S):
            async with client.get(f"http://{edge.content}/events") as resp:
                assert resp.status == 200
                assert await resp.content.readuntil(b"\n\n") == b"data: first\n\n"
                if cut:
                    with pytest.raises(aiohttp.ClientPayloadError):
                        await resp.read()
                else:
                    assert await resp.read() == b"data: last\n\n"
        read = {"limit": "read"}
        assert metric(edge.metrics, "edge_origin_timeouts_total", read) == (1 if cut else 0)


def test_stream_idle_timeout_default_and_toml(tmp_path: Path) -> None:
    assert STREAM_IDLE_TIMEOUT_S == 300.0
    path = tmp_path / "edge.toml"
    base = '[edge]\nname = "e"\norigin = "http://127.0.0.1:8000"\n'
    path.write_text(
        base + '[limits]\nstream_idle_timeout_s = 90\n[cache]\ncookie_requests = "rfc9111"\n'
    )
    cfg = load_config(path)
    assert cfg.limits.stream_idle_timeout_s == 90.0
    assert cfg.cache.cookie_requests == "rfc9111"
    path.write_text(base + '[cache]\ncookie_requests = "never"\n')
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "edge.toml: cache.cookie_requests: expected private-unless-public | rfc9111" in str(
        raised.value
    )
    path.write_text(base + "[limits]\nstream_idle_timeout_s = 0\n")
    with pytest.raises(ConfigError, match=r"limits\.stream_idle_timeout_s"):
        load_config(path)


# --- posts and comments: request bodies -------------------------------------------------


class SinkOrigin(_ServedApp):
    """Reads each upload chunk by chunk (never whole) and answers its size and SHA-256;
    ``complete`` counts uploads read to their end."""

    def __init__(self) -> None:
        self.complete = 0
        self.broken = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._sink)
        return app

    async def _sink(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        try:
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
        except (aiohttp.ClientPayloadError, ConnectionError, asyncio.CancelledError):
            self.broken += 1
            raise
        if not request.content.is_eof():
            self.broken += 1
        else:
            self.complete += 1
        return web.Response(status=201, text=f"{size} {digest.hexdigest()}")


UPLOAD_BYTES = 8 * MiB
PIECE = 64 * 1024


def piece(i: int) -> bytes:
    return bytes([i % 251]) * PIECE


async def upload(total: int) -> AsyncIterator[bytes]:
    for i in range(total // PIECE):
        yield piece(i)


def expected(total: int) -> str:
    digest = hashlib.sha256()
    for i in range(total // PIECE):
        digest.update(piece(i))
    return f"{total} {digest.hexdigest()}"


def rss_bytes(pid: int, field_name: str) -> int:
    """VmRSS (now) or VmHWM (peak) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field_name} not in /proc/{pid}/status")


async def test_upload_streams_to_the_origin_without_being_held_whole(tmp_path: Path) -> None:
    async with SinkOrigin() as origin:
        config = tmp_path / "edge.toml"
        config.write_text(
            f'[edge]\nname = "edge-eu-1"\norigin = "{origin.url}"\n'
            f'listen = "{LOOPBACK}:0"\ncontrol = "{LOOPBACK}:0"\n'
            '[limits]\nmax_body_bytes = "32M"\n'
        )
        edge = await spawn([sys.executable, "-m", "edge", "serve", "--config", str(config)])
        try:
            url = f"http://{edge.fields['content']}/posts"
            async with aiohttp.ClientSession() as client:
                async with client.post(url, data=b"warm") as resp:  # first request's imports
                    assert resp.status == 201
                peak_before = rss_bytes(edge.proc.pid, "VmHWM")
                async with asyncio.timeout(60), client.post(url, data=upload(UPLOAD_BYTES)) as resp:
                    assert resp.status == 201
                    assert await resp.text() == expected(UPLOAD_BYTES)
                grown = rss_bytes(edge.proc.pid, "VmHWM") - peak_before
        finally:
            await stop(edge)
    assert origin.complete == 2
    # Held whole, the body alone would add 8 MiB to the peak; streamed, a few buffers.
    assert grown < UPLOAD_BYTES // 4, f"peak RSS grew by {grown} bytes"


async def test_chunked_upload_over_max_body_bytes_is_cut_and_413_rfc9110_15_5_14(
    client: aiohttp.ClientSession,
) -> None:
    limit = 256 * 1024
    async with SinkOrigin() as origin, running_edge(origin.url, max_body_bytes=limit) as edge:
        url = f"http://{edge.content}/posts"
        async with asyncio.timeout(GIVE_UP_S):
            async with client.post(url, data=upload(4 * limit)) as resp:
                assert resp.status == 413
            async with client.post(url, data=upload(limit)) as resp:  # at the limit: passes
                assert (resp.status, await resp.text()) == (201, expected(limit))
            async with client.post(url, data=b"x" * (limit + 1)) as resp:  # declared: no fetch
                assert resp.status == 413
        assert origin.complete == 1  # the origin never took a cut body for a whole one


async def test_upload_keeps_its_content_length_and_invalidates_rfc9111_4_4(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/feed", headers={"Cache-Control": "max-age=60"}, body=b"feed")
    async with running_edge(origin.url) as edge:
        await get(client, edge, "/feed")
        assert edge.cache.objects == 1
        status, _, _ = await get(client, edge, "/feed", "POST", data=b"a comment")
        assert status == 200
        seen = origin.seen[-1]
        assert (seen.method, seen.body) == ("POST", b"a comment")
        assert seen.headers["Content-Length"] == "9"  # as declared, not re-chunked
        assert edge.cache.objects == 0  # the POST's 200 invalidated the stored feed
        await get(client, edge, "/feed")
        assert origin.fetches["/feed"] == 3


# --- who may see an answer: Authorization, Cookie, Set-Cookie ----------------------------


@dataclass(frozen=True)
class Share:
    request: dict[str, str]  # the first user's request fields
    response: str  # the origin's Cache-Control
    shared: bool  # is the second user (no credentials) served the stored answer?
    set_cookie: bool = False  # the origin's answer sets a cookie
    policy: str = "private-unless-public"


SHARES = {
    "auth_rfc9111_3_5": Share({"Authorization": "Bearer a"}, "max-age=60", shared=False),
    "auth_public_rfc9111_3_5": Share({"Authorization": "Bearer a"}, "public, max-age=60", True),
    "auth_s_maxage_rfc9111_3_5": Share({"Authorization": "Bearer a"}, "s-maxage=60", True),
    "auth_must_revalidate_rfc9111_3_5": Share(
        {"Authorization": "Bearer a"}, "max-age=60, must-revalidate", True
    ),
    "cookie": Share({"Cookie": "session=a"}, "max-age=60", shared=False),
    "cookie_must_revalidate": Share({"Cookie": "session=a"}, "max-age=60, must-revalidate", False),
    "cookie_public": Share({"Cookie": "session=a"}, "public, max-age=60", shared=True),
    "cookie_s_maxage": Share({"Cookie": "session=a"}, "s-maxage=60", shared=True),
    "cookie_policy_off": Share({"Cookie": "session=a"}, "max-age=60", True, policy="rfc9111"),
    "set_cookie": Share({}, "max-age=60", shared=False, set_cookie=True),
    "set_cookie_public": Share({}, "public, max-age=60", shared=False, set_cookie=True),
    "set_cookie_named_no_cache_rfc9111_5_2_2_4": Share(
        {}, 'no-cache="Set-Cookie", max-age=60', shared=True, set_cookie=True
    ),
    "set_cookie_named_private_rfc9111_5_2_2_7": Share(
        {}, 'private="Set-Cookie", max-age=60', shared=True, set_cookie=True
    ),
    "set_cookie_policy_off": Share(
        {"Cookie": "session=a"}, "public, max-age=60", False, set_cookie=True, policy="rfc9111"
    ),
}


@pytest.mark.parametrize("share", SHARES.values(), ids=SHARES.keys())
async def test_answers_are_shared_only_when_the_origin_says_so(
    share: Share, origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    headers = {"Cache-Control": share.response}
    if share.set_cookie:
        headers["Set-Cookie"] = "session=for-user-a"
    origin.script("/me", headers=headers, body=b"user a's page")
    async with running_edge(origin.url, cookie_requests=share.policy) as edge:
        status, first, _ = await get(client, edge, "/me", headers=share.request)
        assert status == 200
        assert ("Set-Cookie" in first) == share.set_cookie  # the first user gets it
        assert edge.cache.objects == (1 if share.shared else 0)
        status, second, _ = await get(client, edge, "/me")
        assert status == 200
        assert "Set-Cookie" not in second or not share.shared
        assert origin.fetches["/me"] == (1 if share.shared else 2)
        if share.shared:
            assert "Set-Cookie" not in second  # never stored, never another user's
