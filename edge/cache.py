"""The edge's sans-IO HTTP cache engine (RFC 9111 shared cache, RFC 5861, RFC 9211).

Theory of operation: the aiohttp handler (edge/proxy.py) drives this engine and
does all I/O; the engine never reads a clock (``now`` is passed in) and never
touches a socket.

    lookup(req, now)
      pass   -> forward to origin, never store: not GET/HEAD, request no-store
                without a usable entry, or If-Match / If-Unmodified-Since (only
                the origin evaluates those, RFC 9111 §4.3.2)
      miss   -> fetch (coalesced on ``key``)
      fresh  -> client_conditional() (304) else serve response_headers()
      stale  -> revalidate with ``revalidate_headers`` (they replace the client's
                own validators); if ``serve_stale_while_revalidate`` serve the
                entry now and revalidate once in the background; if the origin
                cannot be reached and ``stale_if_error`` serve the entry, else
                502/504 (no-cache / must-revalidate / proxy-revalidate / s-maxage
                forbid any stale use, RFC 9111 §4.2.4).
      only_if_cached and outcome != fresh -> 504 (RFC 9111 §5.2.1.7)

    respond(lookup, answer, now)   the response step (edge/response_step.py): the
      origin's answer to a miss or a revalidation -> Freshen (then update()),
      ServeStale, Store (then fill() with the whole body) or Pass

    after any unsafe request: invalidate(req, status, response headers) (§4.4)

Fills are fetched with GET, without the client's Range and preconditions, so a
HEAD request may drive a fill; never pass a HEAD response's (empty) body to
store(): a Content-Length that disagrees with the body is refused anyway.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal, Protocol

from multidict import CIMultiDict

from edge.directives import (
    EMPTY_CACHE_CONTROL,
    CacheControl,
    Headers,
    parse_cache_control,
    response_cache_control,
)
from edge.entry import ENTRY_OVERHEAD_BYTES, CacheEntry, Vary, conditional_headers, make_entry
from edge.eviction import make_policy
from edge.response_step import (
    Freshen,
    OriginAnswer,
    Pass,
    ResponseStep,
    ServeStale,
    Store,
    freshened,
    store_step,
)
from edge.rules import (
    edge_policy_reason,
    has_explicit_freshness,
    invalidation_targets,
    not_modified,
    selecting_value,
    storable_reason,
)
from edge.store import Store as EntryStore

__all__ = [
    "Cache",
    "Lookup",
    "LowerLevel",
    "Outcome",
    "RequestInfo",
    "client_conditional",
    "response_headers",
]

MiB = 1024 * 1024
Outcome = Literal["fresh", "stale", "miss", "pass"]
# Shared by every lookup that has no validators to send: no dict per hit.
_NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})


class LowerLevel(Protocol):
    """A level under the memory store (the disk): told of every store and removal so
    it keeps a copy of each stored response and drops what a purge or RFC 9111 §4.4
    invalidation drops. Memory evictions are not removals: the copy below stays."""

    def stored(self, host: str, target: str, entry: CacheEntry) -> None: ...

    def removed(self, host: str, target: str, vary: Vary) -> None: ...

    def removed_url(self, host: str, target: str) -> None: ...

    def removed_prefix(self, host: str, prefix: str) -> None: ...

    def removed_key(self, key: str, host: str | None) -> None: ...


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The parts of a client request the cache decides on."""

    method: str  # upper-case
    host: str  # lower-case, without default port
    target: str  # path + query exactly as received (the query is part of the key)
    headers: Headers


@dataclass(frozen=True, slots=True)
class Lookup:
    """What to do with a request, as decided by :meth:`Cache.lookup`.

    ``fwd`` is the RFC 9211 §2.2 forward reason for Cache-Status when the
    outcome is not ``fresh`` ("bypass", "method", "uri-miss", "vary-miss",
    "request", "stale"); ``only_if_cached`` means the client sent
    ``only-if-cached``: answer 504 unless the outcome is ``fresh``. A
    ``fresh`` outcome may be a stale entry the client accepted with max-stale
    (``detail`` says so).
    """

    outcome: Outcome
    request: RequestInfo
    key: str  # primary cache key, method-independent (GET and HEAD share it)
    entry: CacheEntry | None
    revalidate_headers: Mapping[str, str]  # If-None-Match / If-Modified-Since for `entry`
    # The defaults are a lookup that serves nothing stale.
    serve_stale_while_revalidate: bool = False  # serve `entry` now, refresh once in background
    stale_if_error: bool = False  # may serve `entry` if the origin fails (5xx/connect/timeout)
    detail: str | None = None  # why (for Cache-Status detail=)
    fwd: str | None = None
    only_if_cached: bool = False


class Cache:
    """A bytes-bounded shared HTTP cache; sans-IO, one instance per edge."""

    def __init__(
        self,
        capacity_bytes: int = 256 * MiB,
        policy: str = "sieve",
        max_object_bytes: int = 64 * MiB,
        on_evict: Callable[[int], None] | None = None,
        *,
        cookies_private: bool = True,
    ) -> None:
        """``policy`` is "lru", "sieve" or "s3fifo"; ``on_evict(n)`` is called
        with the number of entries evicted to make room for a store; with
        ``cookies_private`` answers to requests with a Cookie are stored only if the
        origin says public or s-maxage (rules.edge_policy_reason)."""
        self._cookies_private = cookies_private
        self._store: EntryStore[CacheEntry] = EntryStore(
            capacity_bytes, make_policy(policy), max_object_bytes, on_evict
        )
        self.lower: LowerLevel | None = None  # the disk level, if configured

    @property
    def objects(self) -> int:
        """Stored responses (all variants)."""
        return len(self._store)

    @property
    def bytes(self) -> int:
        """Bytes charged against capacity."""
        return self._store.bytes

    def lookup(self, req: RequestInfo, now: float) -> Lookup:
        """Decide how to answer ``req`` (RFC 9111 §4, §5.2.1; RFC 5861)."""
        key = req.host + req.target
        if req.method not in ("GET", "HEAD"):
            return _pass(req, key, "method", None)
        if "If-Match" in req.headers or "If-Unmodified-Since" in req.headers:
            return _pass(req, key, "request", "precondition")  # §4.3.2: not for a cache
        req_cc = _request_cc(req)
        entry, fwd = self._select(req)
        only = "only-if-cached" in req_cc
        if entry is None:
            if "no-store" in req_cc:
                return _pass(req, key, "request", "request-no-store")
            return Lookup(
                outcome="miss",
                request=req,
                key=key,
                entry=None,
                revalidate_headers=_NO_HEADERS,
                fwd=fwd,
                only_if_cached=only,
            )
        self._store.touch((req.host, req.target, entry.vary))
        age = entry.current_age(now)
        staleness = age - entry.freshness_lifetime
        forced = _forced_revalidation(entry, req_cc, age, staleness)
        if forced is None and staleness < 0:
            return Lookup(
                outcome="fresh",
                request=req,
                key=key,
                entry=entry,
                revalidate_headers=_NO_HEADERS,
                only_if_cached=only,
            )
        if forced is None and not entry.no_stale and _max_stale_allows(req_cc, staleness):
            return Lookup(
                outcome="fresh",
                request=req,
                key=key,
                entry=entry,
                revalidate_headers=_NO_HEADERS,
                detail="max-stale",
                only_if_cached=only,
            )
        if "no-store" in req_cc:
            return _pass(req, key, "request", "request-no-store")
        return Lookup(
            outcome="stale",
            request=req,
            key=key,
            entry=entry,
            revalidate_headers=conditional_headers(entry),
            serve_stale_while_revalidate=(
                forced is None and _within(entry.stale_while_revalidate, staleness, entry)
            ),
            stale_if_error=_stale_if_error(entry, req_cc, staleness),
            detail=forced,
            fwd="stale" if forced is None else "request",
            only_if_cached=only,
        )

    def fresh_plain(self, host: str, target: str, now: float) -> CacheEntry | None:
        """``lookup``'s fresh entry for a GET with no field it reads (edge/fast_hit.py),
        if the newest variant varies on nothing and needs no revalidation; else None."""
        newest = self._store.newest(host, target)
        if newest is None:
            return None
        variant, entry = newest
        if entry.vary or entry.no_cache or entry.current_age(now) >= entry.freshness_lifetime:
            return None
        self._store.touch((host, target, variant))
        return entry

    def respond(self, lookup: Lookup, answer: OriginAnswer, now: float) -> ResponseStep:
        """The response step: what the origin's ``answer`` to the fill or revalidation
        ``lookup`` asked for means (RFC 9111 §3, §4.3.3, §4.3.4; RFC 5861 §4).

        ``now`` is when the answer's head arrived. Nothing is stored here: the shell
        carries a Freshen out with update() and a Store with fill().
        """
        req, entry = lookup.request, lookup.entry
        if entry is not None and answer.status == 304:
            return freshened(entry, answer, now, req_headers=req.headers, req_cc=_request_cc(req))
        if entry is not None and answer.status >= 500 and lookup.stale_if_error:
            # §4.3.3 / RFC 5861 §4: a stale response beats a server error.
            return ServeStale(entry=entry, detail=f"origin-{answer.status}")
        fwd = "stale" if entry is not None else lookup.fwd or "miss"
        return self._store_or_pass(req, answer, now, fwd)

    def fill(self, step: Store, body: builtins.bytes) -> CacheEntry | None:
        """Store the whole body of a Store decision (replacing the variant it matches);
        None if incomplete (Content-Length disagrees) or too large."""
        if step.length is not None and step.length != str(len(body)):
            return None  # §3.3: never keep an incomplete response
        entry = make_entry(
            status=step.status,
            headers=step.headers,
            body=body,
            vary=step.vary,
            keys=step.surrogate_keys,
            cc=step.cc,
            received=step.received,
            request_time=step.request_time,
            response_time=step.response_time,
        )
        slot = (step.host, step.target, step.vary)
        if not self._store.put(slot, entry, entry.size, step.surrogate_keys):
            return None
        if self.lower is not None:
            self.lower.stored(step.host, step.target, entry)
        return entry

    def promote(self, host: str, target: str, entry: CacheEntry) -> bool:
        """Put an entry read from the level below back in memory (a disk hit)."""
        return self._store.put((host, target, entry.vary), entry, entry.size, entry.surrogate_keys)

    def update(self, req: RequestInfo, step: Freshen) -> None:
        """Carry out a Freshen: its entry replaces the stored variant, or the stored
        variant leaves the store if the updated fields forbid storing it."""
        fresh = step.entry
        slot = (req.host, req.target, fresh.vary)
        if not step.keep or not self._store.put(slot, fresh, fresh.size, fresh.surrogate_keys):
            self._store.remove(slot)
            if self.lower is not None:
                self.lower.removed(req.host, req.target, fresh.vary)
        elif self.lower is not None:
            self.lower.stored(req.host, req.target, fresh)

    def storable(self, req: RequestInfo, status: int, headers: Headers) -> str | None:
        """None if the response may be stored (RFC 9111 §3), else a reason token:
        method, status, partial, no-store, private, authorization, vary-star,
        stream, set-cookie, cookie, too-large, no-validator-or-freshness."""
        return self._unstorable(req, status, headers, response_cache_control(headers))

    def _store_or_pass(
        self, req: RequestInfo, answer: OriginAnswer, now: float, fwd: str
    ) -> Store | Pass:
        cc = response_cache_control(answer.headers)
        reason = self._unstorable(req, answer.status, answer.headers, cc)
        if reason is not None:
            return Pass(fwd=fwd, reason=reason)
        return store_step(req.host, req.target, req.headers, answer, now=now, cc=cc, fwd=fwd)

    def _unstorable(
        self, req: RequestInfo, status: int, headers: Headers, cc: CacheControl
    ) -> str | None:
        method = "GET" if req.method == "HEAD" else req.method  # fills are GETs
        reason = storable_reason(method, req.headers, _request_cc(req), status, headers, cc)
        if reason is None:
            reason = edge_policy_reason(
                status, req.headers, headers, cc, cookies_private=self._cookies_private
            )
        if reason is not None:
            return reason
        length = headers.get("Content-Length", "")
        if length.isdigit() and not self._store.fits(int(length) + ENTRY_OVERHEAD_BYTES):
            return "too-large"
        if not _worth_storing(headers, cc):
            return "no-validator-or-freshness"
        return None

    def store(
        self,
        req: RequestInfo,
        status: int,
        headers: Headers,
        body: builtins.bytes,
        request_time: float,
        response_time: float,
    ) -> CacheEntry | None:
        """Store a complete response (replacing the variant it matches); None if
        not storable, incomplete (Content-Length disagrees) or too large."""
        answer = OriginAnswer(status=status, headers=headers, request_time=request_time)
        step = self._store_or_pass(req, answer, response_time, "miss")
        return self.fill(step, body) if isinstance(step, Store) else None

    def freshen(
        self,
        req: RequestInfo,
        entry: CacheEntry,
        not_modified_headers: Headers,
        request_time: float,
        response_time: float,
    ) -> CacheEntry:
        """Update ``entry`` from a 304 (RFC 9111 §4.3.4, fields per §3.2) and
        return the entry to serve; it replaces the stored one, or leaves the
        store if the updated fields forbid storing it (e.g. a new no-store)."""
        answer = OriginAnswer(status=304, headers=not_modified_headers, request_time=request_time)
        step = freshened(
            entry, answer, response_time, req_headers=req.headers, req_cc=_request_cc(req)
        )
        self.update(req, step)
        return step.entry

    def invalidate(self, req: RequestInfo, status: int, response_headers: Headers) -> int:
        """RFC 9111 §4.4: an unsafe request with a non-error response
        invalidates the target URI and same-host Location/Content-Location.
        Returns the number of entries removed."""
        targets = invalidation_targets(req.host, req.target, req.method, status, response_headers)
        if self.lower is not None:
            for target in targets:
                self.lower.removed_url(req.host, target)
        return sum(self._store.remove_url(req.host, target) for target in targets)

    def purge_url(self, host: str, target: str) -> int:
        """Remove every variant stored for host+target; returns the count."""
        if self.lower is not None:
            self.lower.removed_url(host.lower(), target)
        return self._store.remove_url(host.lower(), target)

    def purge_prefix(self, host: str, prefix: str) -> int:
        """Remove every entry of ``host`` whose target starts with ``prefix``."""
        if self.lower is not None:
            self.lower.removed_prefix(host.lower(), prefix)
        return self._store.remove_prefix(host.lower(), prefix)

    def purge_key(self, key: str, host: str | None = None) -> int:
        """Remove every entry tagged with surrogate key ``key`` (Surrogate-Key header);
        only those of ``host`` if given (a fleet purge's "site")."""
        if self.lower is not None:
            self.lower.removed_key(key, None if host is None else host.lower())
        if host is None:
            return self._store.remove_tag(key)
        slots = [slot for slot in self._store.tagged(key) if slot[0] == host.lower()]
        return sum(self._store.remove(slot) for slot in slots)

    def _select(self, req: RequestInfo) -> tuple[CacheEntry | None, str]:
        """§4.1: the newest stored variant whose selecting fields match ``req``."""
        variants = self._store.variants(req.host, req.target)
        if not variants:
            return None, "uri-miss"
        for _, entry in variants:
            if all(selecting_value(req.headers, n) == v for n, v in entry.vary):
                return entry, "miss"
        return None, "vary-miss"


def client_conditional(req: RequestInfo, entry: CacheEntry) -> int | None:
    """304 when the client's If-None-Match (or, without it, If-Modified-Since)
    is satisfied by ``entry`` (RFC 9111 §4.3.2, RFC 9110 §13.2.2), else None.

    Never 412: If-Match / If-Unmodified-Since are not evaluated by a cache
    (§4.3.2); lookup() passes such requests to the origin instead.
    """
    if req.method not in ("GET", "HEAD") or not 200 <= entry.status < 300:
        return None  # RFC 9110 §13.2.1: preconditions only guard 2xx answers
    if "If-None-Match" not in req.headers and "If-Modified-Since" not in req.headers:
        return None
    return 304 if not_modified(req.headers, entry.headers, entry.response_time) else None


def response_headers(entry: CacheEntry, now: float) -> CIMultiDict[str]:
    """Stored headers plus Age (RFC 9111 §4.2.3, §5.1); the relay adds
    Cache-Status and Via."""
    headers = entry.headers.copy()
    headers["Age"] = str(entry.age(now))
    return headers


def _pass(req: RequestInfo, key: str, fwd: str, detail: str | None) -> Lookup:
    return Lookup(
        outcome="pass",
        request=req,
        key=key,
        entry=None,
        revalidate_headers=_NO_HEADERS,
        detail=detail,
        fwd=fwd,
    )


def _request_cc(req: RequestInfo) -> CacheControl:
    if "Cache-Control" not in req.headers:
        return EMPTY_CACHE_CONTROL  # the common case: no parsing on the hot path
    return parse_cache_control(req.headers)


def _forced_revalidation(
    entry: CacheEntry, req_cc: CacheControl, age: float, staleness: float
) -> str | None:
    """Why a (possibly fresh) entry must be revalidated before use, or None."""
    if entry.no_cache:
        return "no-cache"  # §5.2.2.4
    if "no-cache" in req_cc:
        return "request-no-cache"  # §5.2.1.4
    max_age = req_cc.seconds("max-age")
    if max_age is not None and age > max_age:
        return "request-max-age"  # §5.2.1.1
    min_fresh = req_cc.seconds("min-fresh")
    if min_fresh is not None and -staleness < min_fresh:
        return "request-min-fresh"  # §5.2.1.3
    return None


def _max_stale_allows(req_cc: CacheControl, staleness: float) -> bool:
    """§5.2.1.2: the client accepts this much staleness (no value: any)."""
    if "max-stale" not in req_cc:
        return False
    if req_cc.directives["max-stale"] is None:
        return True
    limit = req_cc.seconds("max-stale")
    return limit is not None and staleness <= limit


def _within(window: float | None, staleness: float, entry: CacheEntry) -> bool:
    return window is not None and not entry.no_stale and staleness <= window


def _stale_if_error(entry: CacheEntry, req_cc: CacheControl, staleness: float) -> bool:
    """RFC 5861 §4: the response's or the request's stale-if-error window."""
    request_window = req_cc.seconds("stale-if-error")
    window = entry.stale_if_error
    if request_window is not None:
        window = request_window if window is None else max(window, request_window)
    return _within(window, staleness, entry)


def _worth_storing(headers: Headers, cc: CacheControl) -> bool:
    """A response with no freshness, no validator and no stale-* allowance could
    never be reused: don't spend memory on it."""
    return (
        has_explicit_freshness(headers, cc)
        or "ETag" in headers
        or "Last-Modified" in headers
        or "stale-if-error" in cc
        or "stale-while-revalidate" in cc
    )
