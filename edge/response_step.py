"""The edge cache's response step: what the origin's answer to a fill or a revalidation means.

Theory of operation (RFC 9111 §3, §4.2.4, §4.3.3, §4.3.4; RFC 5861 §4). The request step
(``Cache.lookup``) sent a miss or a stale entry to the origin; ``Cache.respond(lookup,
answer, now)`` turns the answer's head into one of these decisions, and the proxy carries
it out (the relay only moves the bytes):

    304 to a revalidation      -> Freshen: serve the stored response updated with the
                                  304's fields (§4.3.4); it replaces the stored one unless
                                  the new fields forbid storing it
    5xx, stale-if-error allows -> ServeStale: serve the stale entry and keep it (§4.3.3,
                                  §4.2.4, RFC 5861 §4)
    storable (§3)              -> Store: relay the answer; store the body once it is whole
    otherwise                  -> Pass: relay the answer, store nothing; ``reason`` says why

Storability is decided once, on the head; filling the store then only checks that the
body is complete (§3.3).
"""

from __future__ import annotations

from dataclasses import dataclass

from multidict import CIMultiDict

from edge.directives import CacheControl, Headers, response_cache_control
from edge.entry import CacheEntry, Vary, make_entry
from edge.rules import selecting_value, storable_reason, stored_headers, update_headers, vary_names

__all__ = [
    "Freshen",
    "OriginAnswer",
    "Pass",
    "ResponseStep",
    "ServeStale",
    "Store",
    "freshened",
    "kept_fields",
    "store_step",
    "surrogate_keys",
]


@dataclass(frozen=True, slots=True)
class OriginAnswer:
    """The head of the origin's answer, as the response step sees it."""

    status: int
    headers: Headers
    request_time: float  # when the request went out (RFC 9111 §4.2.3)


@dataclass(frozen=True, slots=True)
class Freshen:
    """A 304 validated the stale entry (§4.3.4): serve ``entry``, the stored response
    updated with the 304's fields; ``keep`` False when those fields now forbid storing
    it (e.g. a new no-store), so the old one leaves the store."""

    entry: CacheEntry
    keep: bool


@dataclass(frozen=True, slots=True)
class ServeStale:
    """The origin failed (5xx) within stale-if-error: serve ``entry`` and keep it."""

    entry: CacheEntry
    detail: str  # Cache-Status detail, e.g. "origin-503"


@dataclass(frozen=True, slots=True)
class Store:
    """A storable answer (§3): relay it and store its body once whole. Everything but
    the body is decided here, so storing it parses nothing again."""

    fwd: str  # Cache-Status fwd (RFC 9211 §2.2)
    host: str
    target: str
    status: int
    headers: CIMultiDict[str]  # the fields the entry keeps (§3.1)
    received: Headers  # as received: its Date and Age give the entry's age
    vary: Vary
    surrogate_keys: tuple[str, ...]
    cc: CacheControl
    length: str | None  # the declared Content-Length: a shorter body is incomplete (§3.3)
    request_time: float
    response_time: float


@dataclass(frozen=True, slots=True)
class Pass:
    """Relay the answer and store nothing; ``reason`` is the §3 token (the
    edge_uncacheable_total label): method, status, no-store, private, ..."""

    fwd: str  # Cache-Status fwd (RFC 9211 §2.2)
    reason: str


ResponseStep = Freshen | ServeStale | Store | Pass


def store_step(
    host: str,
    target: str,
    req_headers: Headers,
    answer: OriginAnswer,
    *,
    now: float,
    cc: CacheControl,
    fwd: str,
) -> Store:
    """The Store decision for a storable ``answer`` to a request for host+target."""
    headers = answer.headers
    names = vary_names(headers) or ()
    length = headers.get("Content-Length")
    return Store(
        fwd=fwd,
        host=host,
        target=target,
        status=answer.status,
        headers=kept_fields(headers, cc),
        received=headers,
        vary=tuple((name, selecting_value(req_headers, name)) for name in names),
        surrogate_keys=surrogate_keys(headers),
        cc=cc,
        length=None if length is None else length.strip(),
        request_time=answer.request_time,
        response_time=now,
    )


def freshened(
    entry: CacheEntry,
    answer: OriginAnswer,
    now: float,
    *,
    req_headers: Headers,
    req_cc: CacheControl,
) -> Freshen:
    """§4.3.4: ``entry`` updated with a 304's fields (§3.2)."""
    merged = update_headers(entry.headers, answer.headers)
    cc = response_cache_control(merged)
    # The 304's fields pass the same filter as a stored response's (§3.1): no field
    # no-cache="..." or private="..." names is kept, and its Surrogate-Key tags
    # replace the entry's rather than reach clients.
    fresh = make_entry(
        status=entry.status,
        headers=kept_fields(merged, cc),
        body=entry.body,
        vary=entry.vary,
        keys=surrogate_keys(answer.headers) or entry.surrogate_keys,
        cc=cc,
        received=answer.headers,  # the 304's own Date and Age give the new age
        request_time=answer.request_time,
        response_time=now,
    )
    reason = storable_reason("GET", req_headers, req_cc, fresh.status, merged, cc)
    return Freshen(entry=fresh, keep=reason is None)


def kept_fields(headers: Headers, cc: CacheControl) -> CIMultiDict[str]:
    """The fields an entry keeps (§3.1); Age is regenerated on every use (§5.1)."""
    kept = stored_headers(headers, cc)
    kept.popall("Age", None)
    return kept


def surrogate_keys(headers: Headers) -> tuple[str, ...]:
    """The purge tags of a response (space-separated, in any number of fields)."""
    return tuple(k for line in headers.getall("Surrogate-Key", []) for k in line.split())
