"""RFC 9111 (HTTP Caching) and RFC 5861 rules for a shared cache, as pure functions.

Nothing here reads a clock or touches I/O: times are passed in as POSIX
seconds. Header arguments are multidict mappings (CIMultiDict / proxy); the
Cache-Control and Surrogate-Control directives they carry are parsed by
edge/directives.py. Date parsing is strict where the spec says invalid data must
not extend freshness (§4.2.1: invalid freshness information means stale).
"""

from __future__ import annotations

import calendar
import re
import time
from typing import Final
from urllib.parse import urljoin, urlsplit

from multidict import CIMultiDict

from edge.directives import (
    MAX_DELTA_SECONDS,
    CacheControl,
    Headers,
    parse_delta_seconds,
    split_list,
    unquote,
)

# RFC 9111 §4.2.2 leaves the heuristic to the cache; 10 % of the time since
# Last-Modified is the typical setting it names, capped so a file untouched
# for years is still rechecked daily.
HEURISTIC_FRACTION: Final = 0.1
HEURISTIC_MAX_S: Final = 24 * 3600.0

# RFC 9110 §15.1: statuses cacheable by default (heuristically cacheable).
# 206 is in the list but we store complete responses only.
HEURISTIC_STATUSES: Final = frozenset({200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501})
# Statuses this cache understands, for must-understand (RFC 9111 §5.2.2.3).
UNDERSTOOD_STATUSES: Final = frozenset(
    {200, 203, 204, 300, 301, 302, 303, 307, 308}
    | {400, 401, 403, 404, 405, 406, 410, 414, 451}
    | {500, 501, 502, 503, 504}
)
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

# RFC 9110 §7.6.1 hop-by-hop fields, plus the non-standard Proxy-Connection
# and the Proxy-* authentication fields that only concern the next hop.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authentication-info",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# RFC 9111 §3.2: fields a 304 must not overwrite because they describe the
# stored bytes themselves (the "stored response depends upon" exception).
NOT_UPDATED_BY_304: Final = frozenset(
    {"content-length", "content-encoding", "content-md5", "content-range", "etag",
     "content-digest", "repr-digest"}  # RFC 9530: they describe the stored bytes
)  # fmt: skip
# Media types whose bodies are open-ended by design (HTML Living Standard §9.2 event streams).
STREAM_MEDIA_TYPES: Final = frozenset({"text/event-stream"})
# Statuses whose responses have no body (RFC 9110 §6.4.1): never a stream.
_BODYLESS_STATUSES: Final = frozenset({204, 304})
# Request fields whose list members are case-insensitive and unordered for Vary.
_CASELESS_LISTS: Final = frozenset(
    {"accept", "accept-charset", "accept-encoding", "accept-language"}
)

_MONTHS: Final = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}  # "jan" -> 1
_WKDAY = r"(?:mon|tue|wed|thu|fri|sat|sun)"
_MONTH = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)"
_TIME = r"([0-9]{2}):([0-9]{2}):([0-9]{2})"
_IMF_FIXDATE = re.compile(rf"{_WKDAY}, ([0-9]{{2}}) {_MONTH} ([0-9]{{4}}) {_TIME} gmt\Z", re.I)
_RFC850 = re.compile(
    rf"(?:monday|tuesday|wednesday|thursday|friday|saturday|sunday), "
    rf"([0-9]{{2}})-{_MONTH}-([0-9]{{2}}) {_TIME} gmt\Z",
    re.I,
)
_ASCTIME = re.compile(rf"{_WKDAY} {_MONTH} ([0-9 ][0-9]) {_TIME} ([0-9]{{4}})\Z", re.I)


def parse_http_date(value: str, now: float) -> float | None:
    """RFC 9110 §5.6.7 HTTP-date (IMF-fixdate, rfc850, asctime) as POSIX seconds.

    ``now`` only resolves rfc850's two-digit year: a year more than 50 years
    ahead of ``now`` is the latest past year with the same last two digits.
    """
    value = value.strip(" \t")
    if m := _IMF_FIXDATE.match(value):
        day, mon, year, hh, mm, ss = m.groups()
    elif m := _RFC850.match(value):
        day, mon, yy, hh, mm, ss = m.groups()
        year = str(_full_year(int(yy), now))
    elif m := _ASCTIME.match(value):
        mon, day, hh, mm, ss, year = m.groups()
    else:
        return None
    return _timestamp(int(year), _MONTHS[mon.lower()], int(day), int(hh), int(mm), int(ss))


def _full_year(yy: int, now: float) -> int:
    this_year = time.gmtime(max(now, 0.0)).tm_year
    year = this_year - this_year % 100 + yy
    return year - 100 if year > this_year + 50 else year


def _timestamp(year: int, month: int, day: int, hh: int, mm: int, ss: int) -> float | None:
    if year < 1 or not (1 <= day <= calendar.monthrange(year, month)[1]):
        return None
    if hh > 23 or mm > 59 or ss > 60:
        return None
    return float(calendar.timegm((year, month, day, hh, mm, ss, 0, 0, 0)))


def header_date(headers: Headers, name: str, now: float) -> float | None:
    """The first ``name`` field line parsed as an HTTP-date (None if absent/invalid)."""
    value = headers.get(name)
    return None if value is None else parse_http_date(value, now)


def parse_age(headers: Headers) -> int:
    """RFC 9111 §5.1 Age in seconds: 0 if absent.

    Deliberately conservative: Age is a singleton non-negative integer, and a
    value we cannot trust (a list, several lines, a sign, a fraction, a
    parameter) counts as 2^31, i.e. stale. §5.1 suggests the first member or
    ignoring it; treating it as stale only costs a revalidation (§4.2.1
    encourages that for invalid freshness information) and never serves a
    response older than its origin intended. It is also the one rule that meets
    11 of http-cache-tests' 12 age-parse tests: the twelfth, age-parse-prefix
    ("0,7200" must be fresh), contradicts age-parse-dup-0 ("0, 0" must be stale)
    and its own title.
    """
    lines = headers.getall("Age", [])
    if not lines:
        return 0
    parsed = parse_delta_seconds(lines[0].strip(" \t")) if len(lines) == 1 else None
    return MAX_DELTA_SECONDS if parsed is None else parsed


def corrected_initial_age(headers: Headers, request_time: float, response_time: float) -> float:
    """RFC 9111 §4.2.3 corrected_initial_age (apparent age vs Age + response delay)."""
    date = header_date(headers, "Date", response_time)
    apparent_age = max(0.0, response_time - date) if date is not None else 0.0
    response_delay = max(0.0, response_time - request_time)
    return max(apparent_age, parse_age(headers) + response_delay)


def freshness_lifetime(
    status: int, headers: Headers, cc: CacheControl, response_time: float
) -> float:
    """RFC 9111 §4.2.1 for a shared cache: s-maxage > max-age > Expires > heuristic."""
    explicit = cc.seconds("s-maxage")
    if explicit is None:
        explicit = cc.seconds("max-age")
    if explicit is not None:
        return float(explicit)
    date = header_date(headers, "Date", response_time)
    date = response_time if date is None else date
    if "Expires" in headers:
        expires = header_date(headers, "Expires", response_time)
        return 0.0 if expires is None else max(0.0, expires - date)
    if status in HEURISTIC_STATUSES or "public" in cc:
        last_modified = header_date(headers, "Last-Modified", response_time)
        if last_modified is not None:
            # §4.2.2: a fraction of the time since the last change.
            return min(max(0.0, date - last_modified) * HEURISTIC_FRACTION, HEURISTIC_MAX_S)
    return 0.0


def has_explicit_freshness(headers: Headers, cc: CacheControl) -> bool:
    """§3: the response names its own freshness (max-age, s-maxage or Expires)."""
    return "max-age" in cc or "s-maxage" in cc or "Expires" in headers


def storable_reason(
    method: str,
    req_headers: Headers,
    req_cc: CacheControl,
    status: int,
    headers: Headers,
    cc: CacheControl,
) -> str | None:
    """RFC 9111 §3 for a shared cache: None if the response may be stored, else why."""
    if method != "GET":
        return "method"  # HEAD answers have no body to keep; others are never cached here
    if "no-store" in req_cc:
        return "no-store"  # §5.2.1.5
    if status == 206:
        return "partial"  # we keep complete responses only (§3.3 allows not to)
    if status < 200 or status == 304:
        return "status"
    if "must-understand" in cc:
        if status not in UNDERSTOOD_STATUSES:
            return "status"  # §5.2.2.3: unknown status + must-understand: do not store
    elif "no-store" in cc:
        return "no-store"  # §5.2.2.5
    if "private" in cc and cc.fields("private") is None:
        return "private"  # §5.2.2.7: unqualified private binds a shared cache
    if "Authorization" in req_headers and not (
        "public" in cc or "s-maxage" in cc or "must-revalidate" in cc
    ):
        return "authorization"  # §3.5
    if vary_names(headers) is None:
        return "vary-star"  # §4.1: Vary: * never matches, storing it is pointless
    if not (has_explicit_freshness(headers, cc) or status in HEURISTIC_STATUSES or "public" in cc):
        return "status"  # §3: no explicit freshness and not heuristically cacheable
    return None


def is_stream(status: int, headers: Headers) -> bool:
    """Is this response a stream: slow by design, relayed as it arrives, never stored, and
    judged by an idle timeout between reads rather than by a rate floor?

    Two signs: an event stream (its media type), or ``X-Accel-Buffering: no`` (the origin
    asks proxies not to buffer it, as nginx honours; the field is passed on, so a proxy
    further along honours it too).
    """
    if status < 200 or status in _BODYLESS_STATUSES:
        return False
    if media_type(headers) in STREAM_MEDIA_TYPES:
        return True
    return headers.get("X-Accel-Buffering", "").strip().lower() == "no"


def relayed_at_once(status: int, headers: Headers, cc: CacheControl) -> bool:
    """Is the head sent at once and each chunk as it arrives (no holding back)? Streams,
    and bodies of unknown length (no Content-Length) that the origin forbids a shared
    cache to store (no-store, unqualified private): streamed API answers, which the edge
    could never keep, so holding them back buys nothing. Unlike streams these keep the
    ordinary read timeout and rate floor: they are not slow by design."""
    if is_stream(status, headers):
        return True
    if status < 200 or status in _BODYLESS_STATUSES or "Content-Length" in headers:
        return False
    no_store = "no-store" in cc and "must-understand" not in cc
    return no_store or ("private" in cc and cc.fields("private") is None)


def media_type(headers: Headers) -> str:
    """The Content-Type's type/subtype, lower-case, without parameters (RFC 9110 §8.3.1)."""
    return headers.get("Content-Type", "").partition(";")[0].strip().lower()


def edge_policy_reason(
    status: int, req_headers: Headers, headers: Headers, cc: CacheControl, *, cookies_private: bool
) -> str | None:
    """The edge's own limits on storing, past RFC 9111 §3: None if it may store, else why.

    - ``stream``: streams are never stored (see is_stream).
    - ``set-cookie``: a response that sets a cookie is personal, and so may be its body;
      like nginx and Varnish's built-in VCL the edge does not store it, unless the origin
      names the field in no-cache="Set-Cookie" or private="Set-Cookie" (§5.2.2.4,
      §5.2.2.7: the field is then dropped from the stored copy and the rest is shared).
    - ``cookie`` (with ``cookies_private``): an answer to a request with a Cookie is not
      shared unless the origin says public or s-maxage, as §3.5 has it for Authorization:
      a deliberate deviation from RFC 9111 (which lets a shared cache store it) for a
      social platform, whose pages are personal to the logged-in user.
    """
    if is_stream(status, headers):
        return "stream"
    if "Set-Cookie" in headers and not _names_field(cc, "set-cookie"):
        return "set-cookie"
    if cookies_private and "Cookie" in req_headers and not ("public" in cc or "s-maxage" in cc):
        return "cookie"
    return None


def _names_field(cc: CacheControl, field: str) -> bool:
    return field in (cc.fields("no-cache") or ()) or field in (cc.fields("private") or ())


def stored_headers(headers: Headers, cc: CacheControl) -> CIMultiDict[str]:
    """The fields to keep (§3.1): without hop-by-hop fields and without the
    fields named by no-cache="..." and private="..." (§5.2.2.4, §5.2.2.7)."""
    drop = set(connection_fields(headers))
    drop.update(cc.fields("no-cache") or ())
    drop.update(cc.fields("private") or ())
    drop.add("surrogate-key")  # our purge tags are parsed out, not shown to clients
    drop.add("set-cookie")  # never stored, never served to another user (edge_policy_reason)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def connection_fields(headers: Headers) -> frozenset[str]:
    """Hop-by-hop field names: the fixed set plus those Connection names (§7.6.1)."""
    named = (name.lower() for name in split_list(headers.getall("Connection", [])))
    return HOP_BY_HOP.union(named)


def strip_hop_by_hop(headers: Headers) -> CIMultiDict[str]:
    """A copy of ``headers`` without hop-by-hop fields (RFC 9110 §7.6.1)."""
    drop = connection_fields(headers)
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def update_headers(stored: Headers, received: Headers) -> CIMultiDict[str]:
    """RFC 9111 §3.2: replace stored fields by those of a 304 (or HEAD) response,
    except hop-by-hop ones and those describing the stored bytes."""
    drop = connection_fields(received) | NOT_UPDATED_BY_304
    incoming = CIMultiDict((k, v) for k, v in received.items() if k.lower() not in drop)
    merged = CIMultiDict((k, v) for k, v in stored.items() if k not in incoming)
    merged.extend(incoming)
    return merged


def vary_names(headers: Headers) -> tuple[str, ...] | None:
    """Lower-case field names listed in Vary (§4.1), None for ``Vary: *``."""
    names: list[str] = []
    for member in split_list(headers.getall("Vary", [])):
        if member == "*":
            return None
        name = member.lower()
        if name not in names:
            names.append(name)
    return tuple(names)


def selecting_value(req_headers: Headers, name: str) -> str | None:
    """§4.1 normalised value of a selecting request field: lines combined,
    whitespace around members removed; members of the Accept-* lists are
    case-folded and sorted (their order carries no meaning without q-values)."""
    lines = req_headers.getall(name, [])
    if not lines:
        return None
    members = split_list(lines)
    if name in _CASELESS_LISTS:
        members = sorted(m.lower().replace(" ", "") for m in members)
    return ",".join(members)


def weak_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 weak comparison (the W/ prefix is ignored on both sides)."""
    return _opaque(a) == _opaque(b)


def strong_match(a: str, b: str) -> bool:
    """RFC 9110 §8.8.3.2 strong comparison: both strong and identical."""
    return not _is_weak(a) and not _is_weak(b) and a == b


def _is_weak(tag: str) -> bool:
    return tag[:2] in ("W/", "w/")


def _opaque(tag: str) -> str:
    # Lenient about missing quotes: an unquoted tag names the same opaque value.
    return unquote(tag[2:] if _is_weak(tag) else tag)


def not_modified(req_headers: Headers, stored: Headers, response_time: float) -> bool:
    """RFC 9111 §4.3.2: would the stored response satisfy the client's
    If-None-Match (preferred) or If-Modified-Since as "not modified"?"""
    if_none_match = req_headers.getall("If-None-Match", [])
    if if_none_match:
        etag = stored.get("ETag")
        tags = split_list(if_none_match)
        if "*" in tags:
            return True
        return etag is not None and any(weak_match(t, etag) for t in tags)
    ims_value = req_headers.get("If-Modified-Since")
    if ims_value is None:
        return False
    ims = parse_http_date(ims_value, response_time)
    if ims is None:
        return False  # RFC 9110 §13.1.3: an invalid date is ignored
    modified = header_date(stored, "Last-Modified", response_time)
    if modified is None:
        modified = header_date(stored, "Date", response_time)
    return (response_time if modified is None else modified) <= ims


def invalidation_targets(
    host: str, target: str, method: str, status: int, headers: Headers
) -> list[str]:
    """RFC 9111 §4.4: targets to invalidate after an unsafe request (the request
    target, and same-origin Location / Content-Location) on a non-error status."""
    if method in SAFE_METHODS or not 200 <= status < 400:
        return []
    base = f"http://{host}{target if target.startswith('/') else '/'}"
    targets = [target]
    for name in ("Location", "Content-Location"):
        value = headers.get(name)
        if value is None:
            continue
        try:
            parts = urlsplit(urljoin(base, value.strip()))
        except ValueError:  # a Host that is no authority ("[") makes no URL: nothing to match
            continue
        if parts.netloc.lower() == host and parts.scheme in ("http", "https"):
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            if path not in targets:
                targets.append(path)
    return targets
