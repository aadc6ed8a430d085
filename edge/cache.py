"""The edge's sans-IO HTTP cache engine (RFC 9111 shared cache, RFC 5861, RFC 9211).

Theory of operation: the aiohttp handler (edge/proxy.py) drives this engine and
does all I/O; the engine never reads a clock (``now`` is passed in) and never
touches a socket.

    lookup(req, now)
      pass   -> forward to origin, never store (not GET/HEAD, or request no-store)
      miss   -> fetch (coalesced on ``key``); storable() on the response headers
                decides whether to buffer; store() the full body
      fresh  -> client_conditional() (304/412) else serve response_headers()
      stale  -> revalidate with ``revalidate_headers``; on 304 freshen(), on a
                full response store(); if ``serve_stale_while_revalidate`` serve
                the entry now and revalidate once in the background; if the
                origin fails and ``stale_if_error`` serve the entry, else 504
                (must-revalidate / proxy-revalidate / s-maxage forbid stale).
      only_if_cached and outcome != fresh -> 504 (RFC 9111 §5.2.1.7)

    after any unsafe request: invalidate(req, status, response headers) (§4.4)
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = [
    "CACHE_NAME",
    "Cache",
    "CacheEntry",
    "Headers",
    "Lookup",
    "Outcome",
    "RequestInfo",
    "cache_status",
    "strip_hop_by_hop",
]

MiB = 1024 * 1024
CACHE_NAME = "georouter-edge"

Headers = CIMultiDict[str] | CIMultiDictProxy[str]
Outcome = Literal["fresh", "stale", "miss", "pass"]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """The parts of a client request the cache decides on."""

    method: str  # upper-case
    host: str  # lower-case, without default port
    target: str  # path + query exactly as received (the query is part of the key)
    headers: Headers


@dataclass(slots=True)
class CacheEntry:
    """One stored response (a full 200-class body; never a 206 partial)."""

    status: int
    headers: CIMultiDict[str]  # as stored: hop-by-hop and no-cache/private="field" fields removed
    body: bytes
    request_time: float
    response_time: float
    corrected_initial_age: float  # RFC 9111 §4.2.3
    freshness_lifetime: float  # RFC 9111 §4.2.1
    vary: tuple[tuple[str, str | None], ...]  # selecting header name -> normalised value
    surrogate_keys: tuple[str, ...]
    size: int  # bytes charged against the store's capacity


@dataclass(frozen=True, slots=True)
class Lookup:
    """What to do with a request, as decided by :meth:`Cache.lookup`.

    ``fwd`` is the RFC 9211 §2.2 forward reason for Cache-Status when the
    outcome is not ``fresh`` ("bypass", "method", "uri-miss", "vary-miss",
    "miss", "request", "stale"); ``only_if_cached`` means the client sent
    ``only-if-cached``: answer 504 unless the outcome is ``fresh``.
    """

    outcome: Outcome
    key: str  # primary cache key, method-independent (GET and HEAD share it)
    entry: CacheEntry | None
    revalidate_headers: dict[str, str]  # If-None-Match / If-Modified-Since for `entry`
    serve_stale_while_revalidate: bool  # serve `entry` now, refresh once in background
    stale_if_error: bool  # may serve `entry` if the origin fails (5xx/connect/timeout)
    detail: str | None  # why (for Cache-Status detail=)
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
    ) -> None:
        """``policy`` is "lru", "sieve" or "s3fifo"; ``on_evict(n)`` is called
        with the number of entries evicted to make room for a store."""
        raise NotImplementedError

    @property
    def objects(self) -> int:
        """Stored responses (all variants)."""
        raise NotImplementedError

    @property
    def bytes(self) -> int:
        """Bytes charged against capacity."""
        raise NotImplementedError

    def lookup(self, req: RequestInfo, now: float) -> Lookup:
        """Decide how to answer ``req`` (RFC 9111 §4, §5.2.1; RFC 5861)."""
        raise NotImplementedError

    def storable(self, req: RequestInfo, status: int, headers: Headers) -> str | None:
        """None if the response may be stored (RFC 9111 §3), else a reason token:
        method, status, no-store, private, authorization, vary-star, too-large,
        partial, no-validator-or-freshness. Called on the response headers
        before the body streams, so the proxy knows whether to buffer."""
        raise NotImplementedError

    def store(
        self,
        req: RequestInfo,
        status: int,
        headers: Headers,
        body: builtins.bytes,
        request_time: float,
        response_time: float,
    ) -> CacheEntry | None:
        """Store a full response (replacing the variant it matches); None if
        not storable or too large for the store."""
        raise NotImplementedError

    def freshen(
        self,
        req: RequestInfo,
        entry: CacheEntry,
        not_modified_headers: Headers,
        request_time: float,
        response_time: float,
    ) -> CacheEntry:
        """Update ``entry`` from a 304 (RFC 9111 §4.3.4) and return the entry to serve."""
        raise NotImplementedError

    def client_conditional(self, req: RequestInfo, entry: CacheEntry) -> int | None:
        """304 or 412 for the client's own preconditions against ``entry``
        (RFC 9111 §4.3.2, RFC 9110 §13.2.2 precedence), else None."""
        raise NotImplementedError

    def response_headers(self, entry: CacheEntry, now: float) -> CIMultiDict[str]:
        """Stored headers plus Age (RFC 9111 §4.2.3, §5.1); the proxy adds
        Cache-Status and Via."""
        raise NotImplementedError

    def invalidate(self, req: RequestInfo, status: int, response_headers: Headers) -> int:
        """RFC 9111 §4.4: an unsafe request with a non-error response
        invalidates the target URI and same-host Location/Content-Location.
        Returns the number of entries removed."""
        raise NotImplementedError

    def purge_url(self, host: str, target: str) -> int:
        """Remove every variant stored for host+target; returns the count."""
        raise NotImplementedError

    def purge_prefix(self, host: str, prefix: str) -> int:
        """Remove every entry of ``host`` whose target starts with ``prefix``."""
        raise NotImplementedError

    def purge_key(self, key: str) -> int:
        """Remove every entry tagged with surrogate key ``key`` (Surrogate-Key header)."""
        raise NotImplementedError


def cache_status(
    outcome_token: str,
    *,
    fwd: str | None = None,
    stored: bool = False,
    detail: str | None = None,
    ttl: float | None = None,
    fwd_status: int | None = None,
) -> str:
    """This cache's RFC 9211 §2 Cache-Status member, e.g. 'georouter-edge; hit; ttl=372'.

    ``outcome_token`` is "hit" or "fwd" (then ``fwd`` names the reason).
    """
    raise NotImplementedError


def strip_hop_by_hop(headers: Headers) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop fields (RFC 9110 §7.6.1)."""
    raise NotImplementedError
