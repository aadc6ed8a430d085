"""Fuzz target: the edge's request-head path, from the bytes to the cache's decision.

The bytes go to aiohttp's `HttpRequestParser` (the C parser when built, as the edge runs
it) with the edge's limits (edge.config: max_line_bytes, max_field_bytes, max_headers) and
the arguments aiohttp's server passes; each parsed head then goes where the edge sends it:
`Cache.lookup` on a cache holding fresh, stale, Vary'd and no-cache entries, the 304 check
(`client_conditional`), `storable`, the RFC 9111 §4.4 invalidation targets of an unsafe
method, and the header rules (`parse_cache_control`, `strip_hop_by_hop`, `selecting_value`).
Properties: the parser raises nothing outside aiohttp's BadHttpMessage family, the cache
rules raise nothing at all, and a lookup's decision is consistent (its key is host +
target; fresh and stale outcomes carry an entry, miss and pass none).
"""

from __future__ import annotations

import asyncio
from collections.abc import Hashable, Sequence

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import BadHttpMessage
from aiohttp.http_parser import HttpRequestParser, RawRequestMessage
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestPayloadError
from multidict import CIMultiDict

from edge.cache import Cache, RequestInfo, client_conditional, response_headers
from edge.config import Limits
from edge.directives import parse_cache_control
from edge.proxy import cache_host
from edge.rules import invalidation_targets, selecting_value, strip_hop_by_hop
from fuzz.runner import FuzzFailure

HOST = "cdn.example.com"
NOW = 1_800_000_000.0
READ_BUFSIZE = 2**16  # aiohttp's DEFAULT_CHUNK_SIZE: the payload stream's high-water mark
MAX_HEAD_BYTES = 16384
LONG_AGO = "Mon, 01 Jan 2024 00:00:00 GMT"
STORED = {  # target -> response headers of an entry stored at NOW - 100 s
    "/a.jpg": {"Cache-Control": "max-age=3600", "ETag": '"a1"', "Last-Modified": LONG_AGO},
    "/stale": {"Cache-Control": "max-age=10, stale-while-revalidate=60, stale-if-error=600",
               "ETag": 'W/"s"'},
    "/v": {"Cache-Control": "max-age=3600", "Vary": "Accept-Encoding, Accept-Language"},
    "/nc": {"Cache-Control": "no-cache, max-age=3600", "Surrogate-Key": "k1 k2"},
    "/q?x=1": {"Cache-Control": "s-maxage=5, must-revalidate", "Date": LONG_AGO},
}  # fmt: skip
# An origin's answer to an unsafe method, naming same-host targets to invalidate (§4.4).
MOVED = CIMultiDict({"Location": "/moved", "Content-Location": "../a.jpg?x"})
STORABLE = CIMultiDict({"Cache-Control": "max-age=60", "Content-Length": "3", "Vary": "Accept"})
TOKENS = (
    b"\r\n", b"\r\n\r\n", b"\n", b" ", b":", b"\t", b"\x00", b"\x7f", b"\xff", b"%2e%2e/",
    b"%2F", b"/../", b"//", b"?", b"#", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b"HTTP/2.0",
    b"Host: ", b"Host: cdn.example.com:80\r\n", b"Host: [::1]\r\n", b"Content-Length: ",
    b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n", b"Cache-Control: ", b"max-age=",
    b"max-stale", b"min-fresh=", b"no-store", b"no-cache", b"only-if-cached", b"Pragma: ",
    b"If-None-Match: ", b'W/"a1"', b"*", b"If-Modified-Since: ", b"If-Match: ", b"Range: ",
    b"bytes=0-", b"Vary: ", b"Accept-Encoding: ", b"Connection: ", b"close", b"keep-alive",
    b"Upgrade: websocket\r\n", b"Expect: 100-continue\r\n", b"GET ", b"HEAD ", b"POST ",
    b"PURGE ", b"Authorization: ", b"Sun, 06 Nov 1994 08:49:37 GMT", b"9" * 20,
)  # fmt: skip


class HttpTarget:
    """aiohttp's request parser with the edge's limits, then the edge's cache rules."""

    name = "http"
    max_len = MAX_HEAD_BYTES
    tokens: Sequence[bytes] = TOKENS

    def __init__(self, limits: Limits | None = None) -> None:
        self._limits = limits or Limits()
        self._loop = asyncio.new_event_loop()
        self._protocol = BaseProtocol(self._loop)
        self.cache = Cache(capacity_bytes=1 << 20)
        for target, fields in STORED.items():
            req = RequestInfo("GET", HOST, target, CIMultiDict({"Accept-Encoding": "gzip"}))
            headers = CIMultiDict(fields, **{"Content-Length": "2"})
            if self.cache.store(req, 200, headers, b"ok", NOW - 100, NOW - 100) is None:
                raise RuntimeError(f"the fuzz cache refused its entry {target}")

    def close(self) -> None:
        self._loop.close()

    def seeds(self) -> list[bytes]:
        return http_seeds()

    def check(self, data: bytes) -> Hashable:
        parser = HttpRequestParser(
            self._protocol,
            self._loop,
            READ_BUFSIZE,
            max_line_size=self._limits.max_line_bytes,
            max_field_size=self._limits.max_field_bytes,
            max_headers=self._limits.max_headers,
            payload_exception=RequestPayloadError,
            auto_decompress=True,
            max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
        )
        outcomes: list[Hashable] = []
        try:
            messages, _, _ = parser.feed_data(data)
            for message, _ in messages:
                outcomes.append(self._decide(message))
            parser.feed_eof()
        except BadHttpMessage as exc:
            outcomes.append(type(exc).__name__)
        return tuple(outcomes)

    def _decide(self, message: RawRequestMessage) -> Hashable:
        """What the edge's handler does with one head, up to the origin or the relay."""
        headers = message.headers
        req = RequestInfo(
            message.method, cache_host(headers.get("Host", "")), message.path, headers
        )
        parse_cache_control(headers)
        strip_hop_by_hop(headers)
        selecting_value(headers, "Accept-Encoding")
        if req.method not in ("GET", "HEAD"):
            invalidation_targets(req.host, req.target, req.method, 200, MOVED)
            return ("unsafe",)
        lookup = self.cache.lookup(req, NOW)
        if lookup.key != req.host + req.target:
            raise FuzzFailure(f"cache key {lookup.key!r} is not host + target")
        if (lookup.entry is None) != (lookup.outcome in ("miss", "pass")):
            raise FuzzFailure(f"outcome {lookup.outcome} with entry {lookup.entry!r}")
        conditional = None
        if lookup.entry is not None:
            conditional = client_conditional(req, lookup.entry)
            response_headers(lookup.entry, NOW)
        storable = self.cache.storable(req, 200, STORABLE)
        return lookup.outcome, lookup.fwd, lookup.detail, conditional, storable


def http_seeds() -> list[bytes]:
    """Valid request heads for the stored targets and others, with the request directives,
    validators and framing the edge acts on, some pipelined."""
    heads = []
    for target in (*STORED, "/", "/missing.png", "/a.jpg?v=2", "http://cdn.example.com/a.jpg"):
        heads.append(f"GET {target} HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
    fields = (
        "Cache-Control: max-age=0", "Cache-Control: no-cache", "Cache-Control: no-store",
        "Cache-Control: only-if-cached", "Cache-Control: max-stale=120, min-fresh=5",
        "Pragma: no-cache", 'If-None-Match: "a1", W/"s"', "If-None-Match: *",
        "If-Modified-Since: Tue, 02 Jan 2024 00:00:00 GMT", 'If-Match: "a1"',
        "If-Unmodified-Since: Sunday, 06-Nov-94 08:49:37 GMT", "Range: bytes=0-0",
        "Accept-Encoding: gzip", "Accept-Language: de, en;q=0.5", "Authorization: Bearer x",
        "Connection: keep-alive, X-Hop", "X-Hop: 1",
    )  # fmt: skip
    for i, field in enumerate(fields):
        target = list(STORED)[i % len(STORED)]
        heads.append(f"GET {target} HTTP/1.1\r\nHost: {HOST}:80\r\n{field}\r\n\r\n")
    heads.append(f"HEAD /a.jpg HTTP/1.0\r\nHost: {HOST}\r\n\r\n")
    heads.append(f"POST /a.jpg HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 3\r\n\r\nabc")
    heads.append(
        f"PUT /v HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n"
        "3\r\nabc\r\n0\r\n\r\n"
    )
    heads.append(f"PURGE /a.jpg HTTP/1.1\r\nHost: {HOST}\r\n\r\n")
    heads.append(
        f"GET /chat HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    heads.append(heads[0] + heads[6] + heads[-3])  # pipelined
    return [head.encode("latin-1") for head in heads]
