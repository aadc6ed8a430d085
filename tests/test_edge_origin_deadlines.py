"""An origin that trickles cannot hold a request: a deadline for the whole response head
(limits.origin_head_timeout_s) and a rate floor for bodies (limits.origin_min_bytes_per_s
over limits.origin_min_rate_window_s), each answered 504, or the stale copy when
stale-if-error allows, or a cut connection once the head went out (RFC 9110 §15.6.5).
Event streams are slow by design and get no floor.

The origins here send their bytes on a schedule: scripted slowness, not synchronisation.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edge.config import ORIGIN_MIN_RATE_WINDOW_S, ORIGIN_READ_TIMEOUT_S, Limits, load_config
from edge.errors import ConfigError, OriginError
from edge.metrics import EdgeMetrics
from edge.origin import OriginClient
from edge.relay import STREAM_PREBUFFER_BYTES
from tests.origin_app import LOOPBACK, FakeClock, ScriptedOrigin, get, metric, running_edge
from tests.test_edge_process import spawn, stop

pytest_plugins = ("tests.edge_fixtures",)

HEAD_TIMEOUT_S = 1.0
# Rate limits small enough to show in a test: 1000 bytes/s judged over 0.5 s of waiting.
FLOOR = {"origin_min_bytes_per_s": 1000, "origin_min_rate_window_s": 0.5}
# A deadline is "kept" if the answer comes this soon after it: generous, for a busy machine.
MARGIN_S = 2.0
# A test gives up here: long before any trickle below would have finished on its own.
GIVE_UP_S = 6.0


@dataclass(frozen=True)
class Answer:
    """One response as timed pieces: the first at once, each next one ``every_s`` later."""

    pieces: Sequence[bytes]
    every_s: float = 0.0


def at_once(payload: bytes) -> Answer:
    return Answer([payload])


def trickled(payload: bytes, every_s: float, *, start: int = 0) -> Answer:
    """``payload[:start]`` at once, then the rest one byte every ``every_s``."""
    return Answer(
        [payload[:start], *(payload[i : i + 1] for i in range(start, len(payload)))], every_s
    )


class TimedOrigin:
    """A TCP origin answering the n-th request with ``answers[n]`` (the last one repeats),
    its pieces on their schedule; it keeps each connection for further requests."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = answers
        self.requests = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> TimedOrigin:
        self._server = await asyncio.start_server(self._serve, LOOPBACK, 0)
        self.url = f"http://{LOOPBACK}:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for writer in self._writers:
            writer.close()
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")  # requests without a body
                answer = self.answers[min(self.requests, len(self.answers) - 1)]
                self.requests += 1
                for i, piece in enumerate(answer.pieces):
                    if i:
                        await asyncio.sleep(answer.every_s)
                    writer.write(piece)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the edge closed the connection
        writer.close()


def response(body: bytes, *fields: str) -> bytes:
    head = "".join(f"{field}\r\n" for field in (*fields, f"Content-Length: {len(body)}"))
    return f"HTTP/1.1 200 OK\r\n{head}\r\n".encode() + body


@asynccontextmanager
async def timed(limit_s: float = GIVE_UP_S) -> AsyncIterator[None]:
    """Fail the test (instead of hanging) if the block takes longer than ``limit_s``."""
    try:
        async with asyncio.timeout(limit_s):
            yield
    except TimeoutError:
        pytest.fail(f"no answer within {limit_s} s: the origin held the request")


async def test_trickled_head_is_504_within_the_head_deadline_rfc9110_15_6_5(
    client: aiohttp.ClientSession,
) -> None:
    # 70-odd bytes at one every 0.5 s: each read is quick, the head takes half a minute.
    payload = response(b"ok", "Cache-Control: max-age=60")
    async with (
        TimedOrigin(trickled(payload, 0.5)) as origin,
        running_edge(origin.url, origin_head_timeout_s=HEAD_TIMEOUT_S) as edge,
    ):
        started = time.monotonic()
        async with timed():
            status, headers, _ = await get(client, edge, "/slow-head")
        assert time.monotonic() - started < HEAD_TIMEOUT_S + MARGIN_S
        assert status == 504 and "detail=origin-timeout" in headers["Cache-Status"]
        assert metric(edge.metrics, "edge_origin_errors_total", {"kind": "timeout"}) == 1
        assert metric(edge.metrics, "edge_origin_timeouts_total", {"limit": "head"}) == 1


async def test_head_deadline_serves_stale_if_error_rfc5861_4(
    client: aiohttp.ClientSession,
) -> None:
    clock = FakeClock()
    first = response(b"first", "Cache-Control: max-age=1, stale-if-error=600")
    later = response(b"later", "Cache-Control: max-age=60")
    async with (
        TimedOrigin(at_once(first), trickled(later, 0.5)) as origin,
        running_edge(origin.url, clock, origin_head_timeout_s=HEAD_TIMEOUT_S) as edge,
    ):
        assert (await get(client, edge, "/p"))[0] == 200
        clock.advance(10)  # stale, well within stale-if-error
        async with timed():
            status, headers, body = await get(client, edge, "/p")
        assert (status, body) == (200, b"first")
        assert "hit" in headers["Cache-Status"] and "origin-timeout" in headers["Cache-Status"]
        assert origin.requests == 2
        assert metric(edge.metrics, "edge_origin_timeouts_total", {"limit": "head"}) == 1


async def test_body_under_the_rate_floor_is_504_before_the_head_goes_out(
    client: aiohttp.ClientSession,
) -> None:
    payload = response(b"b" * 400, "Cache-Control: max-age=60")
    head_size = payload.index(b"\r\n\r\n") + 4
    # 20 bytes/s (each read quick), 1000 bytes/s asked: the whole body would take 20 s.
    async with (
        TimedOrigin(trickled(payload, 0.05, start=head_size)) as origin,
        running_edge(origin.url, **FLOOR) as edge,
    ):
        for attempt in (1, 2):
            async with timed():
                status, headers, _ = await get(client, edge, "/slow-body")
            assert status == 504 and "origin-timeout" in headers["Cache-Status"]
            assert origin.requests == attempt  # nothing was stored to answer from
        assert edge.cache.objects == 0
        assert metric(edge.metrics, "edge_origin_timeouts_total", {"limit": "rate"}) == 2


async def test_body_under_the_rate_floor_after_the_head_cuts_the_connection(
    client: aiohttp.ClientSession,
) -> None:
    # Past the pre-buffer the head went out: the client sees a cut, as for a broken body.
    payload = response(b"c" * (STREAM_PREBUFFER_BYTES * 4), "Cache-Control: max-age=60")
    fast = payload.index(b"\r\n\r\n") + 4 + STREAM_PREBUFFER_BYTES * 2
    async with (
        TimedOrigin(trickled(payload, 0.05, start=fast)) as origin,
        running_edge(origin.url, **FLOOR) as edge,
    ):
        async with timed(), client.get(f"http://{edge.content}/cut") as resp:
            assert resp.status == 200
            with pytest.raises(aiohttp.ClientPayloadError):
                await resp.read()
        assert edge.cache.objects == 0
        assert metric(edge.metrics, "edge_origin_timeouts_total", {"limit": "rate"}) == 1


def event_stream(media_type: str, events: int) -> Answer:
    """A chunked stream of ``events`` small events, 0.25 s apart (about 60 bytes/s)."""
    head = (
        f"HTTP/1.1 200 OK\r\nContent-Type: {media_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunks = [f"data: {i}\n\n".encode() for i in range(events)]
    framed = [b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks]
    return Answer([head, *framed, b"0\r\n\r\n"], every_s=0.25)


@pytest.mark.parametrize(
    ("media_type", "cut"),
    [("text/event-stream", False), ("Text/Event-Stream; charset=utf-8", False),
     ("text/plain", True)],
)  # fmt: skip
async def test_event_stream_is_slow_by_design_and_not_cut(
    media_type: str, cut: bool, client: aiohttp.ClientSession
) -> None:
    events = 8  # 2 s of events, four windows of the floor
    async with (
        TimedOrigin(event_stream(media_type, events)) as origin,
        running_edge(origin.url, **FLOOR) as edge,
    ):
        async with timed():
            status, _, body = await get(client, edge, "/events")
        if cut:
            assert status == 504
        else:
            assert status == 200
            assert body == b"".join(f"data: {i}\n\n".encode() for i in range(events))
        limit = {"limit": "rate"}
        assert metric(edge.metrics, "edge_origin_timeouts_total", limit) == (1 if cut else 0)


async def test_a_slow_reader_is_not_a_slow_origin(origin: ScriptedOrigin) -> None:
    # Only the time spent waiting on the origin counts against the floor: a consumer that
    # holds each chunk (a slow client, back-pressure) does not make the origin too slow.
    body = b"r" * (256 * 1024)
    origin.script("/big", body=body)
    limits = Limits(origin_min_bytes_per_s=1024 * 1024, origin_min_rate_window_s=0.2)
    client = OriginClient(origin.url, limits, EdgeMetrics(), time.time)
    await client.start()
    try:
        got = b""
        async with client.fetch("GET", "/big", {}) as resp:
            async for chunk in resp.chunks():
                got += chunk
                await asyncio.sleep(0.1)  # the slow reader, at well under 1 MiB/s
        assert got == body
    finally:
        await client.close()


async def test_origin_client_raises_a_timeout_origin_error() -> None:
    # The origin client's own contract: the proxy maps OriginError "timeout" to 504/stale.
    async with TimedOrigin(trickled(response(b"x"), 0.5)) as slow:
        limits = Limits(origin_head_timeout_s=0.5)
        client = OriginClient(slow.url, limits, EdgeMetrics(), time.time)
        await client.start()
        try:
            with pytest.raises(OriginError) as raised:
                async with timed(), client.fetch("GET", "/", {}):
                    pass
            assert raised.value.kind == "timeout" and raised.value.status == 504
            assert "head not complete within 0.5 s" in raised.value.message
        finally:
            await client.close()


# --- configuration -------------------------------------------------------------------


def test_defaults_judge_no_shorter_than_one_read() -> None:
    limits = Limits()
    # The head deadline outlasts connect + one read: only a trickle meets it first.
    assert limits.origin_head_timeout_s > (
        limits.origin_connect_timeout_s + limits.origin_read_timeout_s
    )
    assert ORIGIN_MIN_RATE_WINDOW_S >= ORIGIN_READ_TIMEOUT_S
    assert limits.origin_min_bytes_per_s > 0


BASE = '[edge]\nname = "e"\norigin = "http://127.0.0.1:8000"\n[limits]\n'


def test_limits_load_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        BASE + "origin_head_timeout_s = 3\norigin_min_bytes_per_s = 0\n"
        "origin_min_rate_window_s = 2.5\n"
    )
    limits = load_config(path).limits
    assert limits.origin_head_timeout_s == 3.0
    assert limits.origin_min_bytes_per_s == 0  # no floor
    assert limits.origin_min_rate_window_s == 2.5


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("origin_head_timeout_s = 0", "limits.origin_head_timeout_s: expected a number in (0,"),
        ("origin_head_timeout_s = 1e9", "limits.origin_head_timeout_s: expected a number in"),
        ('origin_head_timeout_s = "15s"', "limits.origin_head_timeout_s: expected a number"),
        (
            "origin_min_bytes_per_s = -1",
            "limits.origin_min_bytes_per_s: expected an integer in 0..",
        ),
        ("origin_min_bytes_per_s = 1.5", "limits.origin_min_bytes_per_s: expected an integer"),
        (
            "origin_min_rate_window_s = 0",
            "limits.origin_min_rate_window_s: expected a number in (0,",
        ),
        ("origin_min_rate_window = 5", "limits.origin_min_rate_window: unknown key"),
    ],
)
def test_bad_limits_are_one_line_naming_the_key(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(BASE + line + "\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert f"edge.toml: {message}" in str(raised.value)


# --- the real process ----------------------------------------------------------------


async def test_edge_process_answers_a_trickled_head_504_from_its_config(tmp_path: Path) -> None:
    payload = response(b"ok", "Cache-Control: max-age=60")
    async with TimedOrigin(trickled(payload, 0.5)) as origin:
        config = tmp_path / "edge.toml"
        config.write_text(
            f'[edge]\nname = "edge-eu-1"\norigin = "{origin.url}"\n'
            'listen = "127.0.0.1:0"\ncontrol = "127.0.0.1:0"\n'
            f"[limits]\norigin_head_timeout_s = {HEAD_TIMEOUT_S}\n"
        )
        edge = await spawn([sys.executable, "-m", "edge", "serve", "--config", str(config)])
        try:
            async with aiohttp.ClientSession() as client:
                started = time.monotonic()
                async with timed(), client.get(f"http://{edge.fields['content']}/x") as resp:
                    assert resp.status == 504
                assert time.monotonic() - started < HEAD_TIMEOUT_S + MARGIN_S
                async with client.get(f"http://{edge.fields['control']}/metrics") as resp:
                    text = await resp.text()
            assert 'edge_origin_timeouts_total{limit="head"} 1.0' in text
        finally:
            await stop(edge)
        assert any("event=origin_error kind=timeout" in line for line in edge.log)
