"""The fast path of a plain fresh hit (edge/fast_hit.py): its head parser against h11, and
a real edge answering alike with and without it, pipelined requests included."""

from __future__ import annotations

import asyncio
from email.utils import formatdate

import aiohttp
import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.fast_hit import HeadLimits, PlainGet, could_be_plain, parse_plain_get
from tests.origin_app import CACHEABLE, FakeClock, ScriptedOrigin, get, metric, running_edge

pytest_plugins = ("tests.edge_fixtures",)

FULL_PATH_FIELDS = (
    "Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since",
    "If-Unmodified-Since", "Cache-Control", "CDN-Loop", "Upgrade", "Want-Repr-Digest",
    "Want-Content-Digest", "Edge-Prewarm", "X-Forwarded-For", "Expect", "Transfer-Encoding",
    "Content-Length", "TE", "HTTP2-Settings", "Proxy-Connection",
)  # fmt: skip
LIMITS = HeadLimits(max_line_bytes=8190, max_field_bytes=8190, max_headers=100)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET /a?b=c HTTP/1.1\r\nHost: x.example", PlainGet("/a?b=c", "x.example")),
        (b"GET / HTTP/1.1\r\nhost:\tx:8080 \r\nAccept: */*", PlainGet("/", "x:8080")),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Keep-Alive", PlainGet("/", "x")),
        (b"GET / HTTP/1.1\r\nHost: x\r\nCookie: a=b", PlainGet("/", "x")),
        (b"HEAD / HTTP/1.1\r\nHost: x", None),  # HEAD drops Content-Digest: the full path
        (b"GET / HTTP/1.0\r\nHost: x", None),  # keep-alive rules differ
        (b"GET http://x/ HTTP/1.1\r\nHost: x", None),  # absolute-form
        (b"GET / HTTP/1.1", None),  # no Host
        (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y", None),
        (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close", None),
        (b"GET / HTTP/1.1\r\nHost: x\r\n folded", None),
        (b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1", None),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b", None),
        (b"GET / HTTP/1.1\nHost: x", None),  # bare LF
        (b"GET /a b HTTP/1.1\r\nHost: x", None),
    ],
)
def test_plain_get_examples(head: bytes, expected: PlainGet | None) -> None:
    assert parse_plain_get(head, LIMITS) == expected


@pytest.mark.parametrize("field", FULL_PATH_FIELDS)
def test_every_field_the_full_path_reads_sends_the_request_there(field: str) -> None:
    for name in (field, field.lower(), field.upper()):
        head = f"GET / HTTP/1.1\r\nHost: x\r\n{name}: 1".encode()
        assert parse_plain_get(head, LIMITS) is None


def test_heads_past_aiohttps_limits_are_its_own() -> None:
    small = HeadLimits(max_line_bytes=20, max_field_bytes=10, max_headers=2)
    assert parse_plain_get(b"GET /a HTTP/1.1\r\nHost: x\r\nA: 1", small) is not None
    assert parse_plain_get(b"GET /a HTTP/1.1\r\nHost: x\r\nA: 1\r\nB: 2", small) is None
    assert parse_plain_get(b"GET /a HTTP/1.1\r\nHost: x\r\nA: 123456789", small) is None
    assert parse_plain_get(b"GET /0123456789 HTTP/1.1\r\nHost: x", small) is None


@pytest.mark.parametrize(
    ("partial", "expected"),
    [
        (b"G", True), (b"GET /a HTTP/1.1\r", True), (b"GET /a HTTP/1.1\r\nHo", True),
        (b"POST", False), (b"GET http://x/", False), (b"GET /a HTTP/1.1\nHost", False),
        (b"GET /a HTTP/1.1\r\nHost: x\rY", False), (b"GET /\x01", False),
    ],
)  # fmt: skip
def test_a_head_still_arriving_waits_only_while_it_may_be_plain(
    partial: bytes, expected: bool
) -> None:
    assert could_be_plain(partial) is expected


_NAMES = st.sampled_from(
    ["Host", "host", "Accept", "User-Agent", "Connection", "Cookie", "X-A", "Bad Name",
     "", "X_Y", *FULL_PATH_FIELDS]
)  # fmt: skip
_VALUES = st.binary(max_size=12).map(lambda b: b.replace(b"\r\n", b""))
_LINES = st.tuples(_NAMES, st.sampled_from([b":", b": ", b" :", b":\t"]), _VALUES).map(
    lambda t: t[0].encode() + t[1] + t[2]
)
_REQUEST_LINES = st.tuples(
    st.sampled_from([b"GET", b"HEAD", b"get", b"POST"]),
    st.one_of(st.just(b"/"), st.binary(max_size=10).map(lambda b: b"/" + b)),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1"]),
).map(lambda t: b" ".join(t))


@given(_REQUEST_LINES, st.lists(_LINES, max_size=5), st.sampled_from([b"\r\n", b"\n"]))
def test_what_the_fast_path_takes_h11_reads_the_same_rfc9112_3(
    line: bytes, fields: list[bytes], newline: bytes
) -> None:
    """Every head parse_plain_get accepts is a valid HTTP/1.1 GET to h11, with the same
    target and Host, and none of the fields the full path reads."""
    head = newline.join([line, *fields])
    plain = parse_plain_get(head, LIMITS)
    if plain is None:
        return
    server = h11.Connection(h11.SERVER)
    server.receive_data(head + b"\r\n\r\n")
    event = server.next_event()
    assert isinstance(event, h11.Request)
    assert (event.method, event.http_version) == (b"GET", b"1.1")
    assert event.target.decode("utf-8", "surrogateescape") == plain.target
    names = [name.decode() for name, _ in event.headers]
    assert [v for n, v in event.headers if n == b"host"] == [plain.host.encode("latin-1")]
    assert not {f.lower() for f in FULL_PATH_FIELDS} & set(names)
    connection = [v for n, v in event.headers if n == b"connection"]
    assert connection in ([], [b"keep-alive"])


def _comparable(headers: aiohttp.typedefs.LooseHeaders) -> list[tuple[str, str]]:
    return sorted((k.lower(), v) for k, v in dict(headers).items())


async def test_fast_and_full_path_answer_alike(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    origin.clock = clock
    origin.script("/p", headers={**CACHEABLE, "ETag": '"v1"', "Surrogate-Key": "k"})
    answers, start = [], clock.now
    for fast in (True, False):
        clock.now = start  # the same origin Date for both
        async with running_edge(origin.url, clock, fast_path=fast) as edge:
            await get(client, edge, "/p")  # the miss fills
            clock.advance(3)
            answers.append(await get(client, edge, "/p"))
            hits = metric(edge.metrics, "edge_fast_path_hits_total")
            assert hits == (1.0 if fast else 0.0)
            # Counted alike on both paths (the fast one folds its counts in when read).
            counts = [
                metric(edge.metrics, name, labels)
                for name, labels in (
                    ("edge_requests_total", {"cache": "hit", "method": "GET", "code": "200"}),
                    ("edge_site_requests_total", {"site": "default", "cache": "hit"}),
                    ("edge_cache_level_hits_total", {"level": "memory"}),
                    ("edge_request_duration_seconds_count", {"cache": "hit"}),
                    ("edge_request_duration_seconds_bucket", {"cache": "hit", "le": "0.0005"}),
                )
            ]
            assert counts == [1.0] * 5
            assert metric(edge.metrics, "edge_bytes_served_total") == 2 * len(b"origin body")
    (fast_status, fast_headers, fast_body), (full_status, full_headers, full_body) = answers
    assert (fast_status, fast_body) == (full_status, full_body) == (200, b"origin body")
    assert fast_headers["Age"] == "3" and "hit; ttl=57" in fast_headers["Cache-Status"]
    assert "Surrogate-Key" not in fast_headers
    assert _comparable(fast_headers) == _comparable(full_headers)


async def test_only_a_fresh_plain_hit_takes_the_fast_path(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    origin.clock = clock
    origin.script("/p", headers={"Cache-Control": "max-age=10"}, etag='"v1"')
    origin.script("/v", headers={**CACHEABLE, "Vary": "Accept-Encoding"})
    async with running_edge(origin.url, clock) as edge:
        fast = lambda: metric(edge.metrics, "edge_fast_path_hits_total")  # noqa: E731
        await get(client, edge, "/p")
        await get(client, edge, "/v")
        assert (await get(client, edge, "/p"))[0] == 200 and fast() == 1
        status, _, _ = await get(client, edge, "/p", headers={"If-None-Match": '"v1"'})
        assert status == 304 and fast() == 1  # RFC 9110 §13.1.2: the full path answers
        status, _, body = await get(client, edge, "/p", headers={"Range": "bytes=0-1"})
        assert (status, body, fast()) == (206, b"or", 1)
        assert (await get(client, edge, "/v"))[0] == 200 and fast() == 1  # it varies
        clock.advance(11)  # stale: revalidated by the full path (RFC 9111 §4.3)
        _, headers, _ = await get(client, edge, "/p")
        assert origin.fetches["/p"] == 2 and fast() == 1, headers
        assert (await get(client, edge, "/p"))[0] == 200 and fast() == 2
        purge = f"http://{edge.control}/purge"
        auth = {"Authorization": "Bearer t0ken"}
        url = f"http://{edge.content}/p"
        async with client.post(purge, json={"url": url}, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
        await get(client, edge, "/p")  # purged: a miss
        assert origin.fetches["/p"] == 3 and fast() == 2


class Answers:
    """Responses read off one connection with h11, in order (the requests are written raw)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader
        self._h11 = h11.Connection(h11.CLIENT)
        self._expect()

    def _expect(self) -> None:
        self._h11.send(h11.Request(method="GET", target="/", headers=[("Host", "x")]))
        self._h11.send(h11.EndOfMessage())

    async def read(self, count: int) -> list[tuple[int, bytes]]:
        answers: list[tuple[int, bytes]] = []
        status, body = 0, b""
        while len(answers) < count:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                self._h11.receive_data(await asyncio.wait_for(self._reader.read(65536), 5))
            elif isinstance(event, h11.Response):
                status, body = event.status_code, b""
            elif isinstance(event, h11.Data):
                body += bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                answers.append((status, body))
                self._h11.start_next_cycle()
                self._expect()
        return answers


async def test_pipelined_hits_and_misses_answer_in_order_rfc9112_9_3_2(
    origin: ScriptedOrigin,
) -> None:
    origin.script("/hit", headers=CACHEABLE, body=b"cached")
    origin.script("/miss", headers={"Cache-Control": "no-store"}, body=b"fetched", delay_s=0.05)
    head = b"GET %s HTTP/1.1\r\nHost: cdn.example\r\n\r\n"
    async with running_edge(origin.url) as edge:
        fast = lambda: metric(edge.metrics, "edge_fast_path_hits_total")  # noqa: E731
        reader, writer = await asyncio.open_connection(edge.content.host, edge.content.port)
        try:
            answers = Answers(reader)
            writer.write(head % b"/hit")  # fills
            assert await answers.read(1) == [(200, b"cached")]
            writer.write(head % b"/hit")
            assert await answers.read(1) == [(200, b"cached")] and fast() == 1
            writer.write(head % b"/miss")  # aiohttp's, alone: the fast path resumes after it
            assert await answers.read(1) == [(200, b"fetched")]
            # Split in the middle of the head, as a slow client sends it.
            writer.write(b"GET /hit HTTP/1.1\r\nHo")
            await writer.drain()
            await asyncio.sleep(0.01)
            writer.write(b"st: cdn.example\r\n\r\n")
            assert await answers.read(1) == [(200, b"cached")] and fast() == 2
            # In one write: a hit, a slow miss, a hit, a hit. The fast path answers the
            # first; the rest go to aiohttp, in order, and the connection stays with it.
            writer.write(head % b"/hit" + head % b"/miss" + head % b"/hit" + head % b"/hit")
            assert await answers.read(4) == [
                (200, b"cached"),
                (200, b"fetched"),
                *[(200, b"cached")] * 2,
            ]
            assert fast() == 3
        finally:
            writer.close()
        labels = {"cache": "hit", "method": "GET", "code": "200"}
        assert metric(edge.metrics, "edge_requests_total", labels) == 5


async def test_a_stored_answer_without_date_gets_one_on_both_paths_rfc9110_6_6_1(
    client: aiohttp.ClientSession,
) -> None:
    async def undated_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(undated_origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for fast in (True, False):
            async with running_edge(f"http://127.0.0.1:{port}", fast_path=fast) as edge:
                await get(client, edge, "/u")
                status, headers, body = await get(client, edge, "/u")
                assert (status, body) == (200, b"hi")
                assert len(headers.getall("Date")) == 1 and headers["Date"].endswith(" GMT")
                assert metric(edge.metrics, "edge_fast_path_hits_total") == float(fast)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_stored_204_is_the_full_paths_without_content_length_rfc9110_8_6(
    origin: ScriptedOrigin, client: aiohttp.ClientSession
) -> None:
    origin.script("/empty", status=204, headers=CACHEABLE, body=b"")
    async with running_edge(origin.url) as edge:
        await get(client, edge, "/empty")
        status, headers, _ = await get(client, edge, "/empty")
        assert status == 204 and "hit" in headers["Cache-Status"]
        assert "Content-Length" not in headers
        assert metric(edge.metrics, "edge_fast_path_hits_total") == 0


RAW_ANSWERS = {
    "utf8-field": b"HTTP/1.1 200 OK\r\nX-Name: caf\xc3\xa9 \xe2\x82\xac\r\n"
    b"Content-Type: text/plain\r\n",
    "unknown-status": b"HTTP/1.1 299 Whatever\r\n",
    "no-content-type": b"HTTP/1.1 200 OK\r\n",
}


@pytest.mark.parametrize("kind", sorted(RAW_ANSWERS))
async def test_unusual_stored_answers_alike_on_both_paths(
    kind: str, client: aiohttp.ClientSession
) -> None:
    date = formatdate(usegmt=True)

    async def raw_origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            RAW_ANSWERS[kind]
            + f"Date: {date}\r\nCache-Control: max-age=60\r\nContent-Length: 4\r\n\r\nbody".encode()
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(raw_origin, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answers = []
    try:
        for fast in (True, False):
            async with running_edge(f"http://127.0.0.1:{port}", fast_path=fast) as edge:
                await get(client, edge, "/r")
                url = f"http://{edge.content}/r"
                async with client.get(url) as resp:
                    raw = [(k.decode(), v) for k, v in resp.raw_headers]
                    answers.append((resp.status, resp.reason, sorted(raw), await resp.read()))
                hits = metric(edge.metrics, "edge_fast_path_hits_total")
                assert hits == float(fast)
    finally:
        server.close()
        await server.wait_closed()
    assert answers[0] == answers[1]


@pytest.mark.parametrize(
    "head",
    [
        b"GET /p HTTP/1.1\nHost: x\n\n",  # bare LF
        b"GET /p HTTP/1.1\r\nHost: x\r\n" + b"X-n: 1\r\n" * 150 + b"\r\n",  # > max_headers
    ],
)
async def test_heads_the_full_path_refuses_are_refused_at_once(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, head: bytes
) -> None:
    origin.script("/p", headers=CACHEABLE)
    async with running_edge(origin.url) as edge:
        await get(client, edge, "/p")  # cached: the fast path would have it
        reader, writer = await asyncio.open_connection(edge.content.host, edge.content.port)
        try:
            writer.write(head)
            answer = await asyncio.wait_for(reader.read(), 0.9)  # well before the 408
        finally:
            writer.close()
    assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), answer[:80]
