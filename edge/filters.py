"""Request filters: what the edge refuses before the cache or an origin sees a request.

Pure: a request's method, target and header fields in, the rules it breaks out. A small set
in the spirit of the OWASP Core Rule Set at paranoia level 1 (rule ids in brackets), each
with a bounded id that labels its metric and can be put in logging-only mode:

    method      the site's `methods` do not include it                     -> 405
    overlong    the request target is longer than armour.max_url_bytes     -> 414
    nul         a NUL byte, raw or %00, in the target (CRS 920270)         -> 400
    traversal   a `.` or `..` path segment, raw or percent-encoded, with `/`, `\\`,
                %2f or %5c as separators (CRS 930100, 930110)              -> 400
    slash       an encoded slash or backslash (%2f, %5c) or a raw backslash in the
                path: origins disagree on what it means                    -> 400
    crlf        CR or LF, raw or %0d/%0a, in the target, or CR, LF or NUL in a
                header value (CRS 921130-921160: header injection)         -> 400

A dot-segment is refused rather than normalised: RFC 3986 §5.2.4 has the client remove
them before sending and every browser and curl does, so one that arrives is an attack or
a broken client, and resolving it here while an origin resolves it differently is exactly
the confusion traversal attacks rely on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

RuleId = Literal["method", "overlong", "nul", "traversal", "slash", "crlf"]
RULES: tuple[RuleId, ...] = ("method", "overlong", "nul", "traversal", "slash", "crlf")
STATUS: dict[RuleId, int] = {
    "method": 405, "overlong": 414, "nul": 400, "traversal": 400, "slash": 400, "crlf": 400,
}  # fmt: skip
# A site accepts every method unless its `methods` list says otherwise: an origin's own
# methods (WebDAV, M-SEARCH, …) pass, and RFC 9111 §4.4 invalidation sees them. This is the
# list we recommend for a site that serves a web app (CRS's allowed_methods plus the rest
# of a REST API's).
RECOMMENDED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_METHODS: tuple[str, ...] = ()  # () : any method
MAX_URL_BYTES = 8190  # as aiohttp's request line limit (nginx large_client_header_buffers 8k)

_NUL = re.compile(r"\x00|%00")
_CRLF = re.compile(r"[\r\n]|%0[ad]", re.IGNORECASE)
_ENCODED_SLASH = re.compile(r"%2f|%5c|\\", re.IGNORECASE)
# A path segment that is `.` or `..` once %2e is decoded, between any of the separators.
_DOT_SEGMENT = re.compile(r"(?:^|/|\\|%2f|%5c)(?:\.|%2e){1,2}(?=$|/|\\|%2f|%5c)", re.IGNORECASE)
_BAD_VALUE = re.compile(r"[\r\n\x00]")


@dataclass(frozen=True, slots=True)
class FilterPolicy:
    """What one request is checked against: its site's methods and the edge's settings."""

    methods: frozenset[str]
    max_url_bytes: int = MAX_URL_BYTES
    log_only: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The rules a request broke (each counted) and the answer, if one of them refuses it."""

    matched: tuple[RuleId, ...]
    refused_by: RuleId | None

    @property
    def status(self) -> int:
        return 0 if self.refused_by is None else STATUS[self.refused_by]


PASS = Verdict((), None)


def inspect(
    method: str, target: str, headers: Iterable[tuple[str, str]], policy: FilterPolicy
) -> Verdict:
    """The verdict on one request; ``target`` is the raw request target (path and query)."""
    matched = tuple(_matches(method, target, headers, policy))
    if not matched:
        return PASS
    refused = next((rule for rule in matched if rule not in policy.log_only), None)
    return Verdict(matched, refused)


def _matches(
    method: str, target: str, headers: Iterable[tuple[str, str]], policy: FilterPolicy
) -> Iterable[RuleId]:
    if policy.methods and method not in policy.methods:
        yield "method"
    if len(target.encode("utf-8", "surrogateescape")) > policy.max_url_bytes:
        yield "overlong"
        return  # the rest would scan an attacker's megabyte
    path = target.partition("?")[0]
    if _NUL.search(target):
        yield "nul"
    if _DOT_SEGMENT.search(path):
        yield "traversal"
    if _ENCODED_SLASH.search(path):
        yield "slash"
    if _CRLF.search(target) or any(_BAD_VALUE.search(value) for _, value in headers):
        yield "crlf"
