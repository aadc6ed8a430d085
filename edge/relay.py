"""Moving response bytes to the client: from a stored entry, from the origin, or an error.

The relay holds no cache and decides nothing about storing: the proxy asks it to
prebuffer an origin body, then to send it whole or stream the rest, and stores what it
hands back.

Streaming (from the origin): the head is held back until the body has ended or
STREAM_PREBUFFER_BYTES have arrived. Small bodies are thus whole before the status line
goes out, so a broken one (bad chunking, shorter than its Content-Length) still becomes a
clean 502; a large one streams, and if it breaks after the head went out the client
connection is closed mid-body, the only honest signal left (RFC 9112 §8). A body to keep
is buffered as it streams; past max_object_bytes the buffer is dropped and the rest only
streams through. A broken body raises, so nothing broken or truncated is handed back.

Streams (event streams, X-Accel-Buffering: no) and uncacheable bodies of unknown length
(OriginResponse.at_once, edge/rules.py relayed_at_once) are not held back at all: the
head goes out at once and each chunk as it arrives, so the first event reaches the client
long before the stream ends; none of them is kept.

Request bodies go the other way as they arrive (UploadBody), never held whole, and are
cut past max_body_bytes.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import StreamReader, web
from multidict import CIMultiDict

from edge.cache import RequestInfo, client_conditional, response_headers
from edge.cache_status import cache_status
from edge.cdn_loop import from_our_cdn, loop_id, with_loop_id
from edge.digests import DigestAnswer, add_member, content_digest_of, plan_answer
from edge.directives import SURROGATE_CAPABILITY, Headers
from edge.entry import CacheEntry
from edge.fill import FillHead
from edge.load import CacheResult
from edge.metrics import EdgeMetrics
from edge.origin import OriginResponse
from edge.ranges import ByteRange, answer_range
from edge.rules import strip_hop_by_hop

STREAM_PREBUFFER_BYTES = 64 * 1024
# Want-*-Digest answers: bodies up to this are hashed on the loop (tens of µs), larger
# ones in a thread; at most COMPUTED_DIGESTS computed digests are remembered (LRU).
INLINE_DIGEST_BYTES = 256 * 1024
COMPUTED_DIGESTS = 4096
_NO_DIGEST_CHANGE = DigestAnswer()
# Set on a request once a streamed response's head went out.
_STARTED = web.RequestKey("edge.response", web.StreamResponse)
# Client preconditions and Range are answered by the edge from a full stored response;
# a fetch meant to fill the cache must not be narrowed by them (RFC 9111 §4.3.1, §3.3).
_CLIENT_ONLY = ("If-None-Match", "If-Modified-Since", "If-Match", "If-Unmodified-Since",
                "If-Range", "Range")  # fmt: skip
_NO_BODY_STATUSES = frozenset({204, 304})
# RFC 9110 §15.4.5: what a 304 carries of the stored response's fields.
_NOT_MODIFIED_FIELDS = frozenset(
    {"cache-control", "content-location", "date", "etag", "expires", "vary", "age",
     "last-modified", "via", "cache-status"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Reply:
    """A finished client response and what it counts as."""

    response: web.StreamResponse
    result: CacheResult
    stored: bool = False


@dataclass(frozen=True, slots=True)
class Prebuffered:
    """The start of an origin body: all of it when ``ended``, else ``rest`` follows."""

    head: bytes
    ended: bool
    rest: AsyncIterator[bytes]


# With the process's secret, marks this edge's own pre-warm fetch (edge/prewarmer.py):
# the edge's business alone, never sent to a parent or the origin.
PREWARM_HEADER = "Edge-Prewarm"


def origin_headers(request: web.Request, name: str, *, fill: bool) -> CIMultiDict[str]:
    """The request header fields to send to the origin (RFC 9110 §7.6).

    ``fill``: the fetch is meant to fill the cache, so the client's own preconditions
    and Range are not forwarded (the edge answers them from the full response).
    """
    headers = strip_hop_by_hop(request.headers)
    for field in ("Host", "Content-Length", PREWARM_HEADER, *(_CLIENT_ONLY if fill else ())):
        headers.popall(field, None)
    headers["X-Forwarded-Host"] = request.host
    peer = request.remote or "unknown"
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers.add("Via", f"{_protocol(request)} {name}")
    # RFC 8586 §2: name this node after those the request passed (edge/cdn_loop.py).
    headers["CDN-Loop"] = with_loop_id(headers.popall("CDN-Loop", []), loop_id(name))
    # Edge Architecture 1.0: tell the origin which Surrogate-Control target we answer to.
    headers.add("Surrogate-Capability", SURROGATE_CAPABILITY)
    return headers


def client_headers(
    headers: Headers, via: str, member: str, *, downstream: bool = False
) -> CIMultiDict[str]:
    """Response fields for the client: end-to-end only, plus Via and our Cache-Status.
    ``downstream``: the client is a node of ours (edge/cdn_loop.py from_our_cdn)."""
    return _for_client(strip_hop_by_hop(headers), via, member, downstream=downstream)


def downstream_node(request: web.Request) -> bool:
    """Is the request from a downstream node of ours (an edge filling from its shield)?"""
    return from_our_cdn(request.headers.getall("CDN-Loop", []))


def _origin_fields(
    request: web.Request, headers: Headers, via: str, member: str
) -> CIMultiDict[str]:
    """``client_headers`` of an origin answer relayed to ``request``: a HEAD answer (a
    HEAD miss is filled with a GET) has no content, so the GET's Content-Digest does not
    describe it (RFC 9530 Appendix B.2)."""
    out = client_headers(headers, via, member, downstream=downstream_node(request))
    if request.method == "HEAD":
        out.popall("Content-Digest", None)
    return out


def _for_client(
    out: CIMultiDict[str], via: str, member: str, *, downstream: bool
) -> CIMultiDict[str]:
    """``out``, a copy of end-to-end fields, changed in place into what the client gets."""
    if not downstream:
        # The surrogate fields are addressed to surrogates (Edge Architecture 1.0): the
        # edge is the last one before clients. A downstream node of ours gets them, so its
        # lifetimes and key purges match its parent's.
        out.popall("Surrogate-Control", None)
        out.popall("Surrogate-Key", None)
    out.add("Via", via)
    # RFC 9211 §2: each cache appends its member; the last is nearest the client.
    prior = out.popall("Cache-Status", [])
    out["Cache-Status"] = ", ".join([*prior, member])
    return out


async def send(
    request: web.Request, status: int, headers: CIMultiDict[str], body: bytes, reason: str = ""
) -> web.StreamResponse:
    """One complete response with a known body (HEAD and 204/304 get the head only).

    A HEAD answered by the origin comes with no body: its Content-Length stays the
    origin's (RFC 9110 §8.6), not the length of nothing."""
    response = _WholeResponse(status=status, reason=reason or None, headers=headers)
    if status not in _NO_BODY_STATUSES and status >= 200 and (body or request.method != "HEAD"):
        response.content_length = len(body)
    await response.prepare(request)
    if body and request.method != "HEAD" and status not in _NO_BODY_STATUSES:
        await response.write_eof(body)
    else:
        await response.write_eof()
    return response


class _WholeResponse(web.StreamResponse):
    """A response whose whole body is at hand: its head waits for the body, so both leave
    in one write (one send call per hit instead of two)."""

    _send_headers_immediately = False


class Relay:
    """Writes client responses for one edge and counts the bytes."""

    def __init__(self, name: str, metrics: EdgeMetrics, max_object_bytes: int) -> None:
        self.name = name
        self.metrics = metrics
        self.max_object_bytes = max_object_bytes
        self._vias: dict[tuple[int, int], str] = {}  # by HTTP version: built once, not per hit
        # Digests computed for Want-Repr-Digest/Want-Content-Digest, by stored entry.
        self._digests: OrderedDict[tuple[object, ...], bytes] = OrderedDict()

    async def entry(
        self,
        request: web.Request,
        req: RequestInfo,
        entry: CacheEntry,
        result: CacheResult,
        now: float,
        detail: str | None = None,
        *,
        fwd: str | None = None,
        fwd_status: int | None = None,
    ) -> Reply:
        """Answer from a stored response: client conditionals, then Range, then the body."""
        if fwd is not None:
            member = cache_status(self.name, "fwd", fwd=fwd, fwd_status=fwd_status, stored=True)
        else:
            # RFC 9211 §2.5 ttl: the lifetime left, counted with the Age being sent.
            ttl = entry.freshness_lifetime - entry.age(now)
            member = cache_status(self.name, "hit", detail=detail, ttl=ttl)
        return await self.stored(request, req, entry, now, member, result)

    async def stored(
        self,
        request: web.Request,
        req: RequestInfo,
        entry: CacheEntry,
        now: float,
        member: str,
        result: CacheResult,
    ) -> Reply:
        """Answer from a stored response with Cache-Status ``member``."""
        # The stored fields are end-to-end already (hop-by-hop ones were not stored).
        downstream = downstream_node(request)
        headers = _for_client(
            response_headers(entry, now), self._via(request), member, downstream=downstream
        )
        if downstream and entry.surrogate_keys:  # parsed out when stored: give them back
            headers["Surrogate-Key"] = " ".join(entry.surrogate_keys)
        condition = client_conditional(req, entry)
        if condition == 304:
            kept = CIMultiDict((k, v) for k, v in headers.items() if _kept_in_304(k))
            return Reply(await send(request, 304, kept, b""), result)
        if condition is not None:
            return Reply(await self._send_counted(request, condition, headers, b""), result)
        ranged = answer_range(req.method, req.headers, entry.status, entry.headers, entry.body)
        status, body = entry.status, entry.body
        if ranged is not None:
            status, body = ranged.status, ranged.body
        plan = plan_answer(req.method, req.headers, entry.headers, partial=ranged is not None)
        if plan != _NO_DIGEST_CHANGE:
            content = b"" if req.method == "HEAD" else body
            await self._digest_fields(req, entry, headers, plan, content)
        if ranged is not None:  # RFC 9110 §14.2: 206 or 416 from the full stored body
            headers.update(ranged.headers)
        return Reply(await self._send_counted(request, status, headers, body), result)

    async def _digest_fields(
        self,
        req: RequestInfo,
        entry: CacheEntry,
        headers: CIMultiDict[str],
        plan: DigestAnswer,
        content: bytes,
    ) -> None:
        """RFC 9530 §2-§4 on an answer from a stored response: a stored Content-Digest
        leaves a partial or HEAD answer; a wanted digest the answer lacks is added (the
        stored body's digest is computed once per entry and algorithm, then remembered)."""
        if plan.drop_content:
            headers.popall("Content-Digest", None)
        if plan.repr is not None:
            value = await self._stored_digest(req, entry, plan.repr)
            add_member(headers, "Repr-Digest", plan.repr, value)
        if plan.content is not None:
            if plan.drop_content:  # this answer's own content: a slice, or none at all
                value = await _digest_off_loop(plan.content, content)
            else:
                value = await self._stored_digest(req, entry, plan.content)
            add_member(headers, "Content-Digest", plan.content, value)

    async def _stored_digest(self, req: RequestInfo, entry: CacheEntry, algorithm: str) -> bytes:
        key = (req.host, req.target, entry.vary, entry.response_time, len(entry.body), algorithm)
        value = self._digests.get(key)
        if value is None:
            value = await _digest_off_loop(algorithm, entry.body)
            self._digests[key] = value
            if len(self._digests) > COMPUTED_DIGESTS:
                self._digests.popitem(last=False)
        else:
            self._digests.move_to_end(key)
        return value

    async def error(
        self, request: web.Request, status: int, result: CacheResult, detail: str
    ) -> Reply:
        """An answer the edge makes itself (502/504, only-if-cached)."""
        member = cache_status(self.name, "fwd", fwd="miss", detail=detail)
        plain = CIMultiDict({"Content-Type": "text/plain"})
        headers = client_headers(plain, self._via(request), member)
        headers["Cache-Control"] = "no-store"
        body = f"{status} {detail}\n".encode()
        return Reply(await self._send_counted(request, status, headers, body), result)

    async def prebuffer(self, resp: OriginResponse) -> Prebuffered:
        """Read the start of an origin body (up to STREAM_PREBUFFER_BYTES); nothing of a
        stream, whose head goes out at once."""
        chunks = resp.chunks()
        if resp.at_once:
            return Prebuffered(b"", False, chunks)
        head, ended = await _prebuffer(chunks)
        return Prebuffered(head, ended, chunks)

    async def send_whole(
        self,
        request: web.Request,
        resp: OriginResponse,
        member: str,
        result: CacheResult,
        body: bytes,
    ) -> Reply:
        """Relay an origin response whose whole ``body`` has arrived."""
        headers = _origin_fields(request, resp.headers, self._via(request), member)
        return Reply(
            await self._send_counted(request, resp.status, headers, body, resp.reason), result
        )

    async def stream(
        self,
        request: web.Request,
        resp: OriginResponse,
        start: Prebuffered,
        member: str,
        result: CacheResult,
        *,
        keep: bool,
    ) -> tuple[Reply, bytes | None]:
        """Relay an origin response from its prebuffered start to its end; with ``keep``,
        also the whole body if it fits max_object_bytes (else None)."""
        headers = _origin_fields(request, resp.headers, self._via(request), member)
        buffer: list[bytes] | None = [start.head] if keep else None
        buffered = len(start.head)
        response = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        request[_STARTED] = response
        await response.prepare(request)
        await self._write(request, response, start.head)
        async for chunk in start.rest:
            await self._write(request, response, chunk)
            buffered += len(chunk)
            if buffer is not None and buffered <= self.max_object_bytes:
                buffer.append(chunk)
            else:
                buffer = None  # too large to keep: stream the rest through
        await response.write_eof()
        return Reply(response, result), None if buffer is None else b"".join(buffer)

    async def early_range(
        self,
        request: web.Request,
        head: FillHead,
        ranges: list[ByteRange],
        read: Callable[[int, int], AsyncIterator[bytes]],
    ) -> Reply:
        """A 206 (or 416) for a range of an object still arriving (edge/fill.py): the
        part's bytes are sent as ``read`` yields them (RFC 9110 §14.2, §15.3.7)."""
        assert head.length is not None
        headers = client_headers(
            head.headers, self._via(request), head.member, downstream=downstream_node(request)
        )
        # Both describe the whole content, not this part (RFC 9530 Appendix B.3).
        headers.popall("Content-Length", None)
        headers.popall("Content-Digest", None)
        if not ranges:
            headers["Content-Range"] = f"bytes */{head.length}"
            return Reply(await self._send_counted(request, 416, headers, b""), "miss")
        part = ranges[0]
        headers["Content-Range"] = part.content_range(head.length)
        response = web.StreamResponse(status=206, headers=headers)
        response.content_length = part.last - part.first + 1
        request[_STARTED] = response
        await response.prepare(request)
        async for piece in read(part.first, part.last):
            await self._write(request, response, piece)
        await response.write_eof()
        return Reply(response, "miss")

    async def read_limited(self, resp: OriginResponse) -> bytes | None:
        """The whole body if it fits max_object_bytes, else None (read to the end anyway)."""
        parts: list[bytes] | None = []
        size = 0
        async for chunk in resp.chunks():
            size += len(chunk)
            if parts is not None and size <= self.max_object_bytes:
                parts.append(chunk)
            else:
                parts = None
        return None if parts is None else b"".join(parts)

    def started(self, request: web.Request) -> bool:
        """True once a streamed response's head went out (no error status possible)."""
        return _STARTED in request

    def abort(self, request: web.Request) -> Reply:
        response = request[_STARTED]
        if request.transport is not None:
            request.transport.close()
        return Reply(response, "error")

    async def _send_counted(
        self,
        request: web.Request,
        status: int,
        headers: CIMultiDict[str],
        body: bytes,
        reason: str = "",
    ) -> web.StreamResponse:
        response = await send(request, status, headers, body, reason)
        if request.method != "HEAD":
            self.metrics.bytes_served.inc(len(body))
        return response

    async def _write(self, request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        if request.method != "HEAD" and data:
            await response.write(data)
            self.metrics.bytes_served.inc(len(data))

    def _via(self, request: web.Request) -> str:
        via = self._vias.get(request.version)
        if via is None:
            via = self._vias[request.version] = f"{_protocol(request)} {self.name}"
        return via


async def _digest_off_loop(algorithm: str, body: bytes) -> bytes:
    """The digest of ``body``; a large one is hashed in a worker thread (hashlib releases
    the GIL), so the event loop keeps serving meanwhile."""
    if len(body) <= INLINE_DIGEST_BYTES:
        return content_digest_of(algorithm, body)
    return await asyncio.to_thread(content_digest_of, algorithm, body)


async def _prebuffer(chunks: AsyncIterator[bytes]) -> tuple[bytes, bool]:
    """Read up to STREAM_PREBUFFER_BYTES; (bytes, True) if the body ended within them."""
    parts: list[bytes] = []
    size = 0
    while size < STREAM_PREBUFFER_BYTES:
        try:
            chunk = await anext(chunks)
        except StopAsyncIteration:
            return b"".join(parts), True
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts), False


class BodyTooLarge(Exception):
    """A request body went past max_body_bytes while it streamed to the origin."""


class UploadBody:
    """A client's request body, streamed to the origin chunk by chunk as it arrives (never
    held whole) and cut past ``limit`` bytes: the origin then sees a truncated body and a
    closed connection, never a complete one, and ``too_large`` tells the proxy to answer
    413 (RFC 9110 §15.5.14)."""

    def __init__(self, content: StreamReader, limit: int) -> None:
        self._content = content
        self._limit = limit
        self.too_large = False

    async def chunks(self) -> AsyncIterator[bytes]:
        size = 0
        async for chunk in self._content.iter_any():
            size += len(chunk)
            if size > self._limit:
                self.too_large = True
                raise BodyTooLarge(f"request body over {self._limit} bytes")
            yield chunk


def narrowed(req: RequestInfo) -> bool:
    """Does the client ask for less than the full response (Range, a precondition)?"""
    return any(field in req.headers for field in _CLIENT_ONLY)


def _kept_in_304(field: str) -> bool:
    return field.lower() in _NOT_MODIFIED_FIELDS


def _protocol(request: web.Request) -> str:
    return f"{request.version.major}.{request.version.minor}"
