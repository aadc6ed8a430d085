"""Cache-Control (RFC 9111 §5.2) and Surrogate-Control directives, and the field-value
pieces they are made of: lists (RFC 9110 §5.6.1), quoted strings (§5.6.4) and
delta-seconds (RFC 9111 §1.2.2).

Parsing is deliberately forgiving of case and quoting (RFC 9111 §5.2: accept both
token and quoted-string arguments); an argument that is not a valid delta-seconds
reads as 0, so invalid freshness information never extends freshness (§4.2.1).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from edge.cache_status import CACHE_NAME

Headers = CIMultiDict[str] | CIMultiDictProxy[str]

# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2^31.
MAX_DELTA_SECONDS: Final = 2**31
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_DIGITS = re.compile(r"[0-9]+\Z")


def split_list(values: Iterable[str]) -> list[str]:
    """RFC 9110 §5.6.1 list members of all field lines, commas inside quotes kept."""
    members: list[str] = []
    for value in values:
        start, quoted, escaped = 0, False, False
        for i, ch in enumerate(value):
            if escaped:
                escaped = False
            elif quoted and ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = not quoted
            elif ch == "," and not quoted:
                members.append(value[start:i])
                start = i + 1
        members.append(value[start:])
    return [m for m in (m.strip(" \t") for m in members) if m]


def unquote(value: str) -> str:
    """The content of an RFC 9110 §5.6.4 quoted-string, or ``value`` unchanged."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def parse_delta_seconds(value: str) -> int | None:
    """RFC 9111 §1.2.2 delta-seconds (saturating at 2^31), or None if invalid."""
    if not _DIGITS.match(value):
        return None
    return MAX_DELTA_SECONDS if len(value) > 10 else min(int(value), MAX_DELTA_SECONDS)


@dataclass(frozen=True, slots=True)
class CacheControl:
    """Parsed Cache-Control directives (RFC 9111 §5.2): lower-case name -> argument."""

    directives: Mapping[str, str | None]

    def __contains__(self, name: object) -> bool:
        return name in self.directives

    def seconds(self, name: str) -> int | None:
        """A delta-seconds argument; None if absent, 0 if invalid (§4.2.1: treat as stale)."""
        if name not in self.directives:
            return None
        value = self.directives[name]
        parsed = None if value is None else parse_delta_seconds(value)
        return 0 if parsed is None else parsed

    def fields(self, name: str) -> frozenset[str] | None:
        """The field-name list of a qualified no-cache/private; None if unqualified."""
        value = self.directives.get(name)
        if value is None:
            return None
        return frozenset(f.lower() for f in split_list([value]))


EMPTY_CACHE_CONTROL: Final = CacheControl({})


def parse_cache_control(headers: Headers) -> CacheControl:
    """Cache-Control of all field lines; the first occurrence of a directive wins
    (§4.2.1), except that an unqualified no-cache/private beats a qualified one
    (the most restrictive directive is honoured)."""
    lines = headers.getall("Cache-Control", [])
    if not lines:
        return EMPTY_CACHE_CONTROL
    directives: dict[str, str | None] = {}
    for member in split_list(lines):
        name, eq, raw = member.partition("=")
        name = name.lower()
        if not _TOKEN.match(name):
            continue  # e.g. "max-age =1": not a directive we can trust
        value = unquote(raw) if eq else None
        if name not in directives:
            directives[name] = value
        elif value is None and name in ("no-cache", "private"):
            directives[name] = None
    return CacheControl(directives)


# Surrogate-Control (W3C Edge Architecture Specification 1.0): a CDN's own
# Cache-Control. We answer to untargeted directives and to ";georouter-edge",
# which the proxy advertises upstream in Surrogate-Capability.
SURROGATE_TARGET: Final = CACHE_NAME
SURROGATE_CAPABILITY: Final = f'{SURROGATE_TARGET}="Surrogate/1.0"'


def parse_surrogate_control(headers: Headers) -> CacheControl | None:
    """Surrogate-Control directives addressed to this cache (targeted ones win
    over untargeted ones); None when there are none."""
    lines = headers.getall("Surrogate-Control", [])
    if not lines:
        return None
    targeted: dict[str, str | None] = {}
    general: dict[str, str | None] = {}
    for member in split_list(lines):
        directive, semi, target = member.partition(";")
        if semi and target.strip(" \t") != SURROGATE_TARGET:
            continue
        name, eq, raw = directive.partition("=")
        name = name.lower()
        if _TOKEN.match(name):
            (targeted if semi else general).setdefault(name, unquote(raw) if eq else None)
    merged = general | targeted
    return CacheControl(merged) if merged else None


def response_cache_control(headers: Headers) -> CacheControl:
    """The directives this cache obeys: Surrogate-Control addressed to it
    replaces Cache-Control entirely (that is its purpose), else Cache-Control."""
    surrogate = parse_surrogate_control(headers)
    return parse_cache_control(headers) if surrogate is None else surrogate
