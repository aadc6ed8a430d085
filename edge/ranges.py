"""Byte ranges served from a complete stored response (RFC 9110 §14).

The cache keeps whole responses only; a Range request is answered from one:
206 with the selected part(s), 416 when nothing is satisfiable, or ``None``
meaning "serve the full 200" (no Range, a failed If-Range, an invalid or
unsupported range set, a method or status ranges do not apply to).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from edge.directives import Headers, split_list
from edge.rules import parse_http_date, strong_match

__all__ = [
    "MAX_RANGES",
    "ByteRange",
    "RangeAnswer",
    "answer_range",
    "early_length",
    "early_range",
    "parse_range",
    "satisfiable",
]

# RFC 9110 §14.2: a server MAY ignore a range set that is large or fragmented
# (a cheap amplification vector); beyond this many specs we serve the full 200.
MAX_RANGES: Final = 16
_SPEC = re.compile(r"([0-9]*)-([0-9]*)\Z")
_BOUNDARY_PREFIX: Final = "georouter-byteranges-"

Spec = tuple[int | None, int | None]  # (first, last); (None, n) is a suffix of n bytes


@dataclass(frozen=True, slots=True)
class ByteRange:
    """An inclusive byte range within a representation."""

    first: int
    last: int

    def content_range(self, length: int) -> str:
        return f"bytes {self.first}-{self.last}/{length}"


@dataclass(frozen=True, slots=True)
class RangeAnswer:
    """A ranged answer: its status, the fields to set on top of the stored
    ones (Content-Range, or Content-Type for multipart), and the body."""

    status: int  # 206 or 416
    headers: dict[str, str]
    body: bytes


def parse_range(value: str) -> list[Spec] | None:
    """RFC 9110 §14.1.1 ``bytes`` ranges-specifier; None if invalid or another unit."""
    unit, eq, ranges = value.partition("=")
    if not eq or unit.lower() != "bytes":
        return None
    specs: list[Spec] = []
    for member in split_list([ranges]):
        match = _SPEC.match(member)
        if match is None or match.group(0) == "-":
            return None
        first, last = (int(g) if g else None for g in match.groups())
        if first is not None and last is not None and last < first:
            return None  # §14.1.1: an invalid range-spec invalidates the whole set
        specs.append((first, last))
    return specs or None


def satisfiable(specs: list[Spec], length: int) -> list[ByteRange]:
    """The satisfiable ranges (§14.1.1) of a ``length``-byte representation,
    sorted and with overlapping or adjacent ones coalesced (§14.2 allows it)."""
    ranges: list[ByteRange] = []
    for first, last in specs:
        if first is None:
            if last and length:  # a suffix of 0 bytes, or of nothing, is unsatisfiable
                ranges.append(ByteRange(max(0, length - last), length - 1))
        elif first < length:
            ranges.append(ByteRange(first, length - 1 if last is None else min(last, length - 1)))
    ranges.sort(key=lambda r: r.first)
    merged: list[ByteRange] = []
    for r in ranges:
        if merged and r.first <= merged[-1].last + 1:
            merged[-1] = ByteRange(merged[-1].first, max(merged[-1].last, r.last))
        else:
            merged.append(r)
    return merged


def answer_range(
    method: str, req_headers: Headers, status: int, stored: Headers, body: bytes
) -> RangeAnswer | None:
    """The ranged answer to ``req_headers`` from a stored response, or None to
    send the full response (RFC 9110 §14.2, If-Range §13.1.5)."""
    value = req_headers.get("Range")
    if value is None or method != "GET" or status != 200:
        return None  # §14.2: Range is defined for GET only
    if not _if_range_holds(req_headers.get("If-Range"), stored):
        return None
    specs = parse_range(value)
    if specs is None or len(specs) > MAX_RANGES:
        return None
    ranges = satisfiable(specs, len(body))
    if not ranges:
        return RangeAnswer(416, {"Content-Range": f"bytes */{len(body)}"}, b"")
    if len(ranges) == 1:
        part = ranges[0]
        content_range = {"Content-Range": part.content_range(len(body))}
        return RangeAnswer(206, content_range, body[part.first : part.last + 1])
    return _multipart(ranges, stored.get("Content-Type"), body)


def _if_range_holds(value: str | None, stored: Headers) -> bool:
    """§13.1.5: the range applies only if the validator still matches (strongly)."""
    if value is None:
        return True
    value = value.strip(" \t")
    if value.startswith(('"', "W/")):
        etag = stored.get("ETag")
        return etag is not None and strong_match(value, etag.strip())
    last_modified = stored.get("Last-Modified")
    if last_modified is None:
        return False
    # An exact match with Last-Modified; both dates are read with the same
    # two-digit-year pivot, so any fixed reference time compares them fairly.
    when = parse_http_date(value, 0.0)
    return when is not None and when == parse_http_date(last_modified, 0.0)


def _multipart(ranges: list[ByteRange], content_type: str | None, body: bytes) -> RangeAnswer:
    """RFC 9110 §14.6 multipart/byteranges with a boundary absent from the body."""
    serial = 0
    while (boundary := f"{_BOUNDARY_PREFIX}{serial}").encode() in body:
        serial += 1
    parts: list[bytes] = []
    for r in ranges:
        head = f"\r\n--{boundary}\r\n"
        if content_type is not None:
            head += f"Content-Type: {content_type}\r\n"
        head += f"Content-Range: {r.content_range(len(body))}\r\n\r\n"
        parts += [head.encode("latin-1", "replace"), body[r.first : r.last + 1]]
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    headers = {"Content-Type": f"multipart/byteranges; boundary={boundary}"}
    return RangeAnswer(206, headers, b"".join(parts))


# Evaluated before Range (RFC 9110 §13.2.2): an early range would skip them.
_PRECONDITIONS = (
    "If-Match",
    "If-Unmodified-Since",
    "If-None-Match",
    "If-Modified-Since",
    "If-Range",
)


def early_range(method: str, req_headers: Headers) -> Spec | None:
    """The one range a request for an uncached object can be answered with before the
    whole object is in (the edge fills it in the background meanwhile), or None to
    answer as usual: not a GET, no Range, an If-Range or any other precondition (RFC
    9110 §13.2.2 evaluates them before Range, against the stored validators), an invalid
    set, or several ranges (multipart waits for the whole object)."""
    value = req_headers.get("Range")
    if value is None or method != "GET" or any(f in req_headers for f in _PRECONDITIONS):
        return None
    specs = parse_range(value)
    if specs is None or len(specs) != 1:
        return None
    return specs[0]


def early_length(status: int, headers: Headers, max_bytes: int) -> int | None:
    """The length of a fill's body if a range of it may be sent as it arrives: a 200
    with a Content-Length the store would take (else None: answer as usual)."""
    length = headers.get("Content-Length", "").strip()
    if status != 200 or not length.isdigit() or int(length) > max_bytes:
        return None
    return int(length)
