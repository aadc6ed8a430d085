"""Where an origin response ends (RFC 9112 §6.3): bytes past it are dropped, never parsed
as another response, and the connection is not reused; the edge still answers."""

from __future__ import annotations

import logging

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.framing import MAX_TRACKED_HEAD_BYTES, MalformedResponse, ResponseFraming
from tests.origin_app import RawOrigin, get, metric, running_edge

pytest_plugins = ("tests.edge_fixtures",)

HEAD = b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 5\r\n\r\n"


def feed_all(framing: ResponseFraming, pieces: list[bytes]) -> tuple[bytes, bool]:
    kept, dropped = b"", False
    for piece in pieces:
        part, lost = framing.feed(piece)
        kept, dropped = kept + part, dropped or lost
    return kept, dropped


def test_body_past_content_length_is_dropped_rfc9112_6_3() -> None:
    framing = ResponseFraming(head_only=False)
    assert framing.feed(HEAD + b"hello, and more") == (HEAD + b"hello", True)
    assert framing.ended
    assert framing.feed(b"HTTP/1.1 200 OK\r\n") == (b"", True)  # never a second response


def test_exact_body_ends_without_dropping_rfc9112_6_3() -> None:
    framing = ResponseFraming(head_only=False)
    assert framing.feed(HEAD + b"hel") == (HEAD + b"hel", False)
    assert not framing.ended
    assert framing.feed(b"lo") == (b"lo", False)
    assert framing.ended and framing.feed(b"") == (b"", False)


@pytest.mark.parametrize(
    ("head", "head_only"),
    [
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", False),  # RFC 9110 §15.4.5
        (b"HTTP/1.1 204 No Content\r\n\r\n", False),  # RFC 9110 §15.3.5
        (HEAD, True),  # RFC 9110 §9.3.2: the answer to HEAD has no body
    ],
)
def test_bodiless_responses_end_at_the_head_rfc9112_6_3(head: bytes, head_only: bool) -> None:
    framing = ResponseFraming(head_only=head_only)
    assert framing.feed(head + b"stray") == (head, True)


def test_interim_response_is_followed_by_the_final_one_rfc9110_15_2() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    framing = ResponseFraming(head_only=False)
    assert framing.feed(interim + HEAD[:20]) == (interim + HEAD[:20], False)
    assert framing.feed(HEAD[20:] + b"helloX") == (HEAD[20:] + b"hello", True)


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n",  # until close
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
)
def test_other_framings_pass_through_for_the_parser(head: bytes) -> None:
    framing = ResponseFraming(head_only=False)
    data = head + b"0123456789" * 3
    assert framing.feed(data) == (data, False)
    assert framing.feed(b"more") == (b"more", False)


def test_an_oversized_head_is_refused() -> None:
    framing = ResponseFraming(head_only=False)
    huge = b"HTTP/1.1 200 OK\r\nX: " + b"a" * MAX_TRACKED_HEAD_BYTES
    with pytest.raises(MalformedResponse, match="head larger than"):
        framing.feed(huge)


BARE_LF_HEADS = [
    b"HTTP/1.1 200 OK\nContent-Length: 5\n\n",
    b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\n",  # the empty line alone
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n",
]


@pytest.mark.parametrize("head", BARE_LF_HEADS)
@pytest.mark.parametrize("cut", [1, 15, 16, 17, 30, 1000])
def test_a_bare_lf_in_the_head_is_refused_rfc9112_2_2(head: bytes, cut: int) -> None:
    framing = ResponseFraming(head_only=False)
    wire = head + b"hello"
    with pytest.raises(MalformedResponse, match="bare LF"):
        feed_all(framing, [wire[:cut], wire[cut:]])


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(HEAD) + 12), max_size=6))
def test_crlf_split_anywhere_and_lf_in_the_body_pass(cuts: list[int]) -> None:
    body = b"a\nb\n\nc\r\n"
    wire = HEAD.replace(b"Length: 5", b"Length: %d" % len(body)) + body
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    assert feed_all(ResponseFraming(head_only=False), pieces) == (wire, False)


@given(
    body=st.binary(max_size=300),
    excess=st.binary(max_size=50),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=6),
)
def test_any_split_keeps_exactly_the_response(body: bytes, excess: bytes, cuts: list[int]) -> None:
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    wire = response + excess
    points = sorted({min(c, len(wire)) for c in cuts})
    pieces = [wire[a:b] for a, b in zip([0, *points], [*points, len(wire)], strict=True)]
    kept, dropped = feed_all(ResponseFraming(head_only=False), pieces)
    assert kept == response
    assert dropped == bool(excess)


async def test_body_longer_than_content_length_is_served_and_not_reused_rfc9112_6_3(
    client: aiohttp.ClientSession,
) -> None:
    # What http-cache-tests' headers-store-Content-Length origin does: Content-Length: 5
    # and a longer body, on a keep-alive connection.
    async with RawOrigin(HEAD + b"hello, world", keep_alive=True) as raw:
        async with running_edge(raw.url) as edge:
            for path in ("/a", "/b", "/a"):
                status, headers, body = await get(client, edge, path)
                assert (status, body) == (200, b"hello")
            assert "hit" in headers["Cache-Status"]
        # Each origin response left excess behind: no connection carried a second one.
        assert raw.requests == 2 and raw.connections == 2


async def test_bare_lf_response_is_502_invalid_and_never_stored_rfc9112_2_2(
    client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    bare = b"HTTP/1.1 200 OK\nCache-Control: max-age=60\nContent-Length: 5\n\nhello"
    async with RawOrigin(bare) as raw, running_edge(raw.url) as edge:
        for _ in range(2):
            status, _, _ = await get(client, edge, "/a")
            assert status == 502
        assert raw.requests == 2 and edge.cache.objects == 0  # asked again: nothing stored
        assert metric(edge.metrics, "edge_origin_errors_total", {"kind": "invalid"}) == 2
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
