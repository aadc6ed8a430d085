"""A stored response and the reuse rules decided once, when it is stored (RFC 9111 §3, §4.2).

Lookups compare numbers and flags kept here instead of parsing Cache-Control, Date and
Age again on every hit.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Final

from multidict import CIMultiDict

from edge.directives import MAX_DELTA_SECONDS, CacheControl, Headers
from edge.rules import corrected_initial_age, freshness_lifetime

__all__ = ["ENTRY_OVERHEAD_BYTES", "CacheEntry", "Vary", "conditional_headers", "make_entry"]

# Bookkeeping charged per entry on top of body and header bytes (dicts, queues).
ENTRY_OVERHEAD_BYTES: Final = 256
# RFC 9111 §4.2.4: directives under which a stale response is never served.
_NO_STALE: Final = ("must-revalidate", "proxy-revalidate", "s-maxage")

Vary = tuple[tuple[str, str | None], ...]  # selecting header name -> normalised value


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """One stored response (a complete response; never a 206 partial).

    The last four fields are the response's reuse rules, decided once at
    store time so lookups do not parse Cache-Control again.
    """

    status: int
    headers: CIMultiDict[str]  # as stored: hop-by-hop, Age, no-cache/private="field" removed
    body: bytes
    response_time: float
    corrected_initial_age: float  # RFC 9111 §4.2.3
    freshness_lifetime: float  # RFC 9111 §4.2.1
    vary: Vary
    surrogate_keys: tuple[str, ...]
    size: int  # bytes charged against the store's capacity
    no_cache: bool = False  # §5.2.2.4: always revalidate before use
    no_stale: bool = False  # §4.2.4: no-cache/must-revalidate/proxy-revalidate/s-maxage
    stale_while_revalidate: float | None = None  # RFC 5861 §3 window, seconds
    stale_if_error: float | None = None  # RFC 5861 §4 window, seconds
    # The fast path's rendering of this entry for the wire (edge/fast_hit.py), made on its
    # first hit: kept with the entry, it lives and dies with it. Not copied by replace().
    wire: list[object] = field(default_factory=list, init=False, compare=False, repr=False)

    def current_age(self, now: float) -> float:
        """RFC 9111 §4.2.3 current_age at ``now``."""
        return self.corrected_initial_age + max(0.0, now - self.response_time)

    def age(self, now: float) -> int:
        """The Age field value at ``now``: whole seconds, at most 2^31 (RFC 9111 §5.1)."""
        return min(int(self.current_age(now)), MAX_DELTA_SECONDS)


def make_entry(
    *,
    status: int,
    headers: CIMultiDict[str],
    body: builtins.bytes,
    vary: Vary,
    keys: tuple[str, ...],
    cc: CacheControl,
    received: Headers,
    request_time: float,
    response_time: float,
) -> CacheEntry:
    """The entry for ``headers`` as stored; ``received`` (the response as it arrived,
    or the 304 that freshened it) gives the age (its Date and Age fields)."""
    no_cache = "no-cache" in cc and cc.fields("no-cache") is None
    header_bytes = sum(len(k) + len(v) + 4 for k, v in headers.items())
    swr = cc.seconds("stale-while-revalidate")
    sie = cc.seconds("stale-if-error")
    return CacheEntry(
        status=status,
        headers=headers,
        body=body,
        response_time=response_time,
        corrected_initial_age=corrected_initial_age(received, request_time, response_time),
        freshness_lifetime=freshness_lifetime(status, headers, cc, response_time),
        vary=vary,
        surrogate_keys=keys,
        # The fields count three times: as stored, and as the fast path renders them for
        # the wire (CacheEntry.wire: without and with Age and Cache-Status).
        size=len(body) + 3 * header_bytes + ENTRY_OVERHEAD_BYTES,
        no_cache=no_cache,
        no_stale=no_cache or any(d in cc for d in _NO_STALE),
        stale_while_revalidate=None if swr is None else float(swr),
        stale_if_error=None if sie is None else float(sie),
    )


def conditional_headers(entry: CacheEntry) -> dict[str, str]:
    """RFC 9111 §4.3.1: the stored validators as the conditional request fields."""
    found: dict[str, str] = {}
    etag = entry.headers.get("ETag")
    if etag is not None:
        found["If-None-Match"] = _quoted_etag(etag.strip())
    last_modified = entry.headers.get("Last-Modified")
    if last_modified is not None:
        found["If-Modified-Since"] = last_modified
    return found


def _quoted_etag(etag: str) -> str:
    # An origin that forgot the quotes still means an opaque tag; send it valid.
    if etag.startswith(('"', 'W/"', 'w/"')):
        return etag
    return f'"{etag}"'
