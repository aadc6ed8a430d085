"""The fast path of a plain fresh hit: the request head read and the stored answer written
to the transport without aiohttp's request and response objects.

Why: a cache hit through aiohttp costs a request object, a header multidict, a task, a
response object and its header serialisation, every time; the profile of a 1 KiB hit showed
them at about two thirds of the CPU (docs/benchmarks.md, "The edge's hit path"). Here the head is
split once, the stored entry is looked up by host and target, and the answer's head is
rendered once per entry and Age value, then reused byte for byte.

A request takes this path only when nothing in it could change the answer, so the answer
is the one the full path (edge/proxy.py) would give:

    GET, HTTP/1.1, origin-form target, one Host, no body
    none of the fields the full path reads: conditionals and Range, Cache-Control,
    CDN-Loop, Upgrade, Want-*-Digest, the pre-warm mark, X-Forwarded-For (rate limits
    may trust it), Expect, Connection other than keep-alive
    a site for the Host, the same certificate as the TLS connection presented
    the site's filters and the rate limit pass (edge/gate.py's checks)
    a fresh entry in memory that varies on nothing and needs no revalidation

Everything else, and every head this parser is unsure of (a control byte, an odd field
name, a folded line), goes to aiohttp as received: `parse_plain_get` returning None is
always safe. The split is pure; `FastHits` does the bookkeeping the full path does (load,
popularity, metrics, the access log).
"""

from __future__ import annotations

import collections
import re
import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, cast

from aiohttp.http import SERVER_SOFTWARE
from aiohttp.web_response import REASON_PHRASES

from edge.access_log import MAX_PATH_CHARS
from edge.cache_status import cache_status
from edge.entry import CacheEntry
from edge.metrics import REQUEST_BUCKETS
from edge.relay import client_headers
from edge.sites import cache_host

if TYPE_CHECKING:
    from edge.access_log import AccessLog
    from edge.gate import Gate
    from edge.proxy import Proxy

__all__ = ["FastHits", "HeadLimits", "PlainGet", "could_be_plain", "parse_plain_get"]

# Fields whose presence sends a request down the full path (lower-case names).
_FULL_PATH_FIELDS = frozenset(
    {
        b"range", b"if-range", b"if-match", b"if-none-match", b"if-modified-since",
        b"if-unmodified-since", b"cache-control", b"cdn-loop", b"upgrade",
        b"want-repr-digest", b"want-content-digest", b"edge-prewarm", b"x-forwarded-for",
        b"expect", b"transfer-encoding", b"content-length", b"te", b"http2-settings",
        b"proxy-connection",
    }
)  # fmt: skip
# Bytes no head of this path has: controls other than CR, LF and HTAB (llhttp refuses
# most of them; the full path gives the verdict), and DEL.
_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Statuses whose answers have no content and no Content-Length (RFC 9110 §8.6): the full
# path's.
_NO_CONTENT = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class PlainGet:
    """A GET head the fast path may answer."""

    target: str  # origin-form, as sent
    host: str  # the Host field's value


_GET = b"GET /"


def could_be_plain(partial: bytes) -> bool:
    """Whether a head still arriving may become a plain GET: it starts as one and has no
    control byte, bare CR or bare LF so far (else aiohttp answers it now, 400)."""
    if not _GET.startswith(partial[:5]) or _CONTROL.search(partial) is not None:
        return False
    crlf = partial.count(b"\r\n")
    cr = partial.count(b"\r") - partial.endswith(b"\r")  # a CR may await its LF
    return partial.count(b"\n") == crlf and cr == crlf


@dataclass(frozen=True, slots=True)
class HeadLimits:
    """aiohttp's limits on a head (edge.limits): a head past one is the full path's, which
    answers 400."""

    max_line_bytes: int
    max_field_bytes: int
    max_headers: int


def parse_plain_get(head: bytes, limits: HeadLimits) -> PlainGet | None:
    """``head``: a request head up to, not including, its empty line. The request if it
    is a plain GET (module doc), else None."""
    if not head.startswith(b"GET /") or _CONTROL.search(head) is not None:
        return None
    lines = head.split(b"\r\n")
    if head.count(b"\n") != len(lines) - 1 or head.count(b"\r") != len(lines) - 1:
        return None  # a bare CR or LF
    if len(lines) - 1 > limits.max_headers or len(lines[0]) > limits.max_line_bytes:
        return None
    if any(len(line) > limits.max_field_bytes for line in lines[1:]):
        return None
    method_target, space, version = lines[0].rpartition(b" ")
    if not space or version != b"HTTP/1.1" or method_target.count(b" ") != 1:
        return None
    host: bytes | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name.replace(b"-", b"").isalnum():
            return None  # not a token we know, or obs-fold: the parser decides
        name = name.lower()
        if name in _FULL_PATH_FIELDS:
            return None
        if name == b"host":
            if host is not None:
                return None
            host = value.strip(b" \t")
        elif name == b"connection" and value.strip(b" \t").lower() != b"keep-alive":
            return None
    if not host:
        return None
    target = method_target[4:].decode("utf-8", "surrogateescape")
    return PlainGet(target, host.decode("latin-1"))


# CacheEntry.wire: the status line and fields without Age and Cache-Status, the prior
# caches' Cache-Status members, whether the entry has a Date, and the last Age rendered
# with its whole head.
_Wire = tuple[bytes, str, bool, int, bytes]


class FastHits:
    """Answers plain fresh hits for one edge; `answer` gives the bytes or None."""

    def __init__(
        self,
        proxy: Proxy,
        gate: Gate | None,
        access_log: AccessLog | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._proxy = proxy
        self._gate = gate
        self._access_log = access_log
        self._clock = clock
        self._via = f"1.1 {proxy.cfg.name}"
        limits = proxy.cfg.limits
        self.limits = HeadLimits(limits.max_line_bytes, limits.max_field_bytes, limits.max_headers)
        self._date_second = -1
        self._date_line = b""
        # Counted per hit in plain ints, folded into the metrics when they are read:
        # prometheus_client takes a lock per increment, which cost ~10 µs a hit here.
        self._hits: collections.Counter[tuple[str, int]] = collections.Counter()  # site, status
        self._bytes = 0
        self._durations = [0] * (len(REQUEST_BUCKETS) + 1)  # per bucket, +Inf last
        self._duration_sum = 0.0
        proxy.metrics.before_collect(self.fold)

    def answer(
        self, request: PlainGet, ssl_object: object, peer: str
    ) -> tuple[bytes, bytes] | None:
        """The response to ``request``, head and body, or None: the full path's.
        ``ssl_object``: the TLS connection's (None on plain TCP); ``peer``: its address."""
        proxy = self._proxy
        site = proxy.site_for(request.host, ssl_object)
        if isinstance(site, str):
            return None  # misdirected: the full path answers 421 and counts it
        gate = self._gate
        if gate is not None and not gate.passes_filters(request.target, site.methods):
            return None
        start = self._clock()
        entry = proxy.cache.fresh_plain(cache_host(site, request.host), request.target, start)
        if entry is None or entry.status in _NO_CONTENT:
            return None
        if gate is not None and not gate.within_rate(peer):
            return None
        try:
            head = self._head(entry, entry.age(start), start)
        except (UnicodeError, ValueError):  # a field aiohttp cannot write either: its answer
            return None
        self._count(request, site.name, entry, start, peer, len(head) + len(entry.body))
        return head, entry.body

    def _head(self, entry: CacheEntry, age: int, now: float) -> bytes:
        """The answer's head: the entry's fields rendered once (`CacheEntry.wire`), Age and
        Cache-Status once per Age value, Date per second if the entry has none."""
        wire = entry.wire
        if not wire:
            wire.extend(self._render(entry))
        static, prior, dated, last_age, last = cast(_Wire, wire)
        if last_age != age:
            member = cache_status(self._proxy.cfg.name, "hit", ttl=entry.freshness_lifetime - age)
            lines = f"Age: {age}\r\nCache-Status: {prior}{member}\r\n".encode()
            last = static + lines + (b"\r\n" if dated else b"")
            wire[3:] = (age, last)
        return last if dated else last + self._date(now) + b"\r\n"

    def _render(self, entry: CacheEntry) -> _Wire:
        # As Relay.stored and aiohttp's StreamResponse write them: the stored fields with
        # Via, Content-Length, and Server if missing; Age and Cache-Status (the prior
        # caches' members, then ours) follow per Age. Plain bytes, str and ints only: the
        # garbage collector has nothing more to track per entry.
        headers = client_headers(entry.headers, self._via, "")
        headers.popall("Cache-Status", None)
        headers.popall("Age", None)
        headers["Content-Length"] = str(len(entry.body))
        if entry.body:
            headers.setdefault("Content-Type", "application/octet-stream")  # RFC 9110 §8.3
        headers.setdefault("Server", SERVER_SOFTWARE)
        lines = [f"HTTP/1.1 {entry.status} {REASON_PHRASES.get(entry.status, '')}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers.items())
        prior = ", ".join(entry.headers.getall("Cache-Status", []))
        static = "".join(lines).encode()  # UTF-8, as aiohttp writes fields
        return static, f"{prior}, " if prior else "", "Date" in headers, -1, b""

    def fold(self) -> None:
        """Add the hits counted since the last fold to the edge's metrics."""
        metrics = self._proxy.metrics
        hits, self._hits = self._hits, collections.Counter()
        for (site, status), n in hits.items():
            metrics.requests.labels("hit", "GET", str(status)).inc(n)
            metrics.site_requests.labels(site, "hit").inc(n)
        total = hits.total()
        metrics.cache_level_hits.labels("memory").inc(total)
        metrics.fast_path_hits.inc(total)
        metrics.bytes_served.inc(self._bytes)
        self._bytes = 0
        # Histogram.observe per hit, in bulk: its bucket and sum values, as it adds them.
        duration = metrics.request_duration.labels("hit")
        for bucket, n in zip(duration._buckets, self._durations, strict=True):
            if n:
                bucket.inc(n)
        duration._sum.inc(self._duration_sum)
        self._durations = [0] * len(self._durations)
        self._duration_sum = 0.0

    def _date(self, now: float) -> bytes:
        second = int(now)
        if second != self._date_second:
            self._date_second = second
            self._date_line = f"Date: {formatdate(second, usegmt=True)}\r\n".encode()
        return self._date_line

    def _count(
        self, request: PlainGet, site: str, entry: CacheEntry, start: float, peer: str, sent: int
    ) -> None:
        """What Proxy.handle and the relay count for a hit."""
        proxy = self._proxy
        end = self._clock()
        proxy.tracker.begin(start)
        proxy.tracker.end(end, "hit")
        if proxy.hot is not None:
            proxy.hot.add(f"http://{request.host}{request.target}", end)
        self._hits[(site, entry.status)] += 1
        self._bytes += len(entry.body)
        took = max(0.0, end - start)
        self._durations[bisect_left(REQUEST_BUCKETS, took)] += 1  # `le`: a bound is in
        self._duration_sum += took
        if self._access_log is not None and self._access_log.wanted():
            self._access_log.write(
                client=peer, site=site, method="GET", path=request.target[:MAX_PATH_CHARS],
                status=entry.status, bytes=sent, cache="hit", origin_s=0.0,
                total_s=round(end - start, 6),
            )  # fmt: skip
