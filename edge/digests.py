"""Digest fields (RFC 9530): parse them strictly, verify a body against them, answer Want-*.

Theory of operation. ``Content-Digest`` covers the content of one message; ``Repr-Digest``
the whole selected representation (RFC 9530 §2, §3). Both are Structured Field
dictionaries (RFC 8941 §3.2) whose member values are byte sequences; ``parse_dictionary``
is a complete RFC 8941 §4.2.2 parser, and a field that fails it is ignored whole (§4.2).
Only ``sha-256`` and ``sha-512`` (the registry's "standard" algorithms) are verified; other
members are ignored, as §2 allows. A member of a known algorithm whose value is not a byte
sequence is ignored too; one of the wrong length is compared as it is (so it mismatches).

What is checked against which bytes (``expected_digests``):
- Content-Digest: the content as received, for any response with content (not HEAD,
  not 1xx/204/304). The edge never changes a content-coding (its origin client does
  not decompress), so these are the bytes it sends on.
- Repr-Digest: the same bytes, but only when they are the whole representation: a GET
  answered with anything but 206. Representation data includes its content-coding
  (RFC 9110 §8.1), so for a full response both fields cover the same bytes, gzip or not
  (RFC 9530 Appendix B.1, B.5); on a 206 Repr-Digest describes bytes the edge does not
  have, and is passed on unchecked.

``DigestCheck`` hashes incrementally (one hashlib object per algorithm, shared by both
fields), so a large body is never held whole for its check. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal

from multidict import CIMultiDict

from edge.directives import Headers

MutableHeaders = CIMultiDict[str]

__all__ = [
    "ALGORITHMS",
    "DigestAnswer",
    "DigestCheck",
    "Expected",
    "SFError",
    "add_member",
    "content_digest_of",
    "expected_digests",
    "parse_dictionary",
    "plan_answer",
    "serialize_digests",
    "wanted_algorithm",
]

# RFC 9530 §5 registry, status "standard": the only members the edge verifies or sends.
ALGORITHMS: Final[dict[str, Callable[[], hashlib._Hash]]] = {
    "sha-256": hashlib.sha256,
    "sha-512": hashlib.sha512,
}
DIGEST_FIELDS: Final = ("Content-Digest", "Repr-Digest")
_NO_CONTENT_STATUSES: Final = frozenset({204, 304})
MAX_FIELD_BYTES: Final = 8192  # a digest field longer than this is not parsed (ignored)

Field = Literal["content", "repr"]
BareItem = int | float | str | bytes | bool
Parameters = dict[str, BareItem]
Item = tuple[BareItem, Parameters]
Member = Item | tuple[list[Item], Parameters]


class SFError(ValueError):
    """A field value that is not a valid RFC 8941 structure."""


# RFC 8941 §3.1.2 key, §3.3.4 token, §3.3.5 base64 alphabet.
_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")
_TOKEN = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]*)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/=]*")


def parse_dictionary(value: str) -> dict[str, Member]:
    """RFC 8941 §4.2.2: a dictionary; raises SFError if ``value`` is not one."""
    parser = _Parser(value.strip(" "))
    out: dict[str, Member] = {}
    while not parser.at_end():
        key = parser.key()
        if parser.peek() == "=":
            parser.pos += 1
            member = parser.item_or_inner_list()
        else:
            member = (True, parser.parameters())
        out[key] = member  # §4.2.2: a later duplicate replaces the earlier one
        parser.skip_ows()
        if parser.at_end():
            return out
        parser.expect(",")
        parser.skip_ows()
        if parser.at_end():
            raise SFError("trailing comma")
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        if not text.isascii():
            raise SFError("not ASCII")
        self.text = text
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        return self.text[self.pos : self.pos + 1]

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise SFError(f"expected {char!r} at {self.pos}")
        self.pos += 1

    def skip_ows(self) -> None:
        while self.peek() in (" ", "\t") and not self.at_end():
            self.pos += 1

    def skip_sp(self) -> None:
        while self.peek() == " ":
            self.pos += 1

    def match(self, pattern: re.Pattern[str], what: str) -> str:
        found = pattern.match(self.text, self.pos)
        if found is None or not found.group(0):
            raise SFError(f"expected {what} at {self.pos}")
        self.pos = found.end()
        return found.group(0)

    def key(self) -> str:
        return self.match(_KEY, "a key")

    def item_or_inner_list(self) -> Member:
        if self.peek() == "(":
            return self.inner_list()
        return self.item()

    def item(self) -> Item:
        return self.bare_item(), self.parameters()

    def inner_list(self) -> tuple[list[Item], Parameters]:
        self.expect("(")
        items: list[Item] = []
        while True:
            self.skip_sp()
            if self.peek() == ")":
                self.pos += 1
                return items, self.parameters()
            items.append(self.item())
            if self.peek() not in (" ", ")"):
                raise SFError(f"bad inner list at {self.pos}")

    def parameters(self) -> Parameters:
        params: Parameters = {}
        while self.peek() == ";":
            self.pos += 1
            self.skip_sp()
            key = self.key()
            value: BareItem = True
            if self.peek() == "=":
                self.pos += 1
                value = self.bare_item()
            params[key] = value
        return params

    def bare_item(self) -> BareItem:
        char = self.peek()
        if char == "-" or char.isdigit():
            return self.number()
        if char == '"':
            return self.string()
        if char == ":":
            return self.byte_sequence()
        if char == "?":
            return self.boolean()
        if char == "*" or (char.isalpha()):
            return self.match(_TOKEN, "a token")
        raise SFError(f"no item at {self.pos}")

    def number(self) -> int | float:
        text = self.match(_NUMBER, "a number")
        digits, _, fraction = text.lstrip("-").partition(".")
        if "." not in text:
            if len(digits) > 15:
                raise SFError("integer too long")
            return int(text)
        if len(digits) > 12 or not 1 <= len(fraction) <= 3:
            raise SFError("bad decimal")
        return float(text)

    def string(self) -> str:
        self.expect('"')
        out: list[str] = []
        while not self.at_end():
            char = self.text[self.pos]
            self.pos += 1
            if char == "\\":
                escaped = self.peek()
                if escaped not in ('"', "\\") or not escaped:
                    raise SFError("bad escape")
                out.append(escaped)
                self.pos += 1
            elif char == '"':
                return "".join(out)
            elif not " " <= char <= "~":
                raise SFError("bad string character")
            else:
                out.append(char)
        raise SFError("unterminated string")

    def byte_sequence(self) -> bytes:
        self.expect(":")
        found = _BASE64.match(self.text, self.pos)
        assert found is not None  # the pattern matches the empty string
        self.pos = found.end()
        self.expect(":")
        encoded = found.group(0)
        # §4.2.7: parsers SHOULD NOT fail when "=" padding is missing.
        padded = encoded.rstrip("=") + "=" * (-len(encoded.rstrip("=")) % 4)
        try:
            return base64.b64decode(padded, validate=True)
        except binascii.Error as exc:
            raise SFError(f"bad base64: {exc}") from None

    def boolean(self) -> bool:
        self.expect("?")
        char = self.peek()
        if char not in ("0", "1"):
            raise SFError("bad boolean")
        self.pos += 1
        return char == "1"


def digest_members(headers: Headers, name: str) -> dict[str, bytes]:
    """The sha-256/sha-512 members of digest field ``name``; {} if absent or invalid."""
    lines = headers.getall(name, [])
    value = ", ".join(lines)
    if not value or len(value) > MAX_FIELD_BYTES:
        return {}
    try:
        members = parse_dictionary(value)
    except SFError:
        return {}  # RFC 8941 §4.2: a field that fails parsing is ignored
    return {
        algorithm: member[0]
        for algorithm, member in members.items()
        if algorithm in ALGORITHMS and isinstance(member[0], bytes)
    }


@dataclass(frozen=True, slots=True)
class Expected:
    """One digest the body must match: which field said so, its algorithm and value."""

    field: Field
    algorithm: str
    value: bytes


def expected_digests(method: str, status: int, headers: Headers) -> tuple[Expected, ...]:
    """The digests a received body must match (see the module docstring for which)."""
    if method == "HEAD" or status < 200 or status in _NO_CONTENT_STATUSES:
        return ()
    found = [
        Expected("content", alg, value)
        for alg, value in digest_members(headers, "Content-Digest").items()
    ]
    if method == "GET" and status != 206:
        found += [
            Expected("repr", alg, value)
            for alg, value in digest_members(headers, "Repr-Digest").items()
        ]
    return tuple(found)


class DigestCheck:
    """An incremental check of a body against ``expected`` (one hash per algorithm)."""

    def __init__(self, expected: Iterable[Expected]) -> None:
        self.expected = tuple(expected)
        self._hashes = {e.algorithm: ALGORITHMS[e.algorithm]() for e in self.expected}

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashes.values():
            hasher.update(chunk)

    def mismatches(self) -> tuple[Expected, ...]:
        """The expectations the bytes fed so far do not meet (call once, at the end)."""
        computed = {alg: h.digest() for alg, h in self._hashes.items()}
        return tuple(e for e in self.expected if computed[e.algorithm] != e.value)


def content_digest_of(algorithm: str, body: bytes) -> bytes:
    """The ``algorithm`` digest of ``body``."""
    hasher = ALGORITHMS[algorithm]()
    hasher.update(body)
    return hasher.digest()


def serialize_digests(members: Iterable[tuple[str, bytes]]) -> str:
    """A digest field value (RFC 8941 §4.1.2 dictionary of byte sequences)."""
    return ", ".join(f"{alg}=:{base64.b64encode(value).decode()}:" for alg, value in members)


def wanted_algorithm(headers: Headers, name: str) -> str | None:
    """The algorithm a Want-Repr-Digest / Want-Content-Digest field ``name`` prefers
    among those the edge supports (RFC 9530 §4: integer weights 0-10, 0 meaning "not
    acceptable"); None if absent, invalid, or nothing the edge supports is wanted."""
    value = ", ".join(headers.getall(name, []))
    if not value or len(value) > MAX_FIELD_BYTES:
        return None
    try:
        members = parse_dictionary(value)
    except SFError:
        return None
    weights = {
        alg: weight
        for alg, (weight, _params) in members.items()
        if alg in ALGORITHMS
        and isinstance(weight, int)
        and not isinstance(weight, bool)
        and 0 < weight <= 10
    }
    if not weights:
        return None
    # Highest weight first; on a tie the stronger sha-512.
    return max(weights, key=lambda alg: (weights[alg], alg == "sha-512"))


@dataclass(frozen=True, slots=True)
class DigestAnswer:
    """What the digest fields of an answer from a stored response need (RFC 9530 §2-§4).

    ``drop_content``: the stored Content-Digest describes the whole stored content, not
    this answer's (a 206/416, a HEAD), so it must not be sent as it is. ``repr`` and
    ``content``: the algorithm the client wants a Repr-Digest / Content-Digest in that the
    answer does not carry yet (the edge adds it, computed from the stored body for the
    representation, from the answer's own content otherwise)."""

    drop_content: bool = False
    repr: str | None = None
    content: str | None = None


_NOTHING: Final = DigestAnswer()


def plan_answer(
    method: str, req_headers: Headers, stored: Headers, *, partial: bool
) -> DigestAnswer:
    """The digest fields an answer from a stored response needs; ``partial``: a 206 or
    416 (its content is not the stored content)."""
    drop = partial or method == "HEAD"
    wants = "Want-Repr-Digest" in req_headers or "Want-Content-Digest" in req_headers
    if not drop and not wants:
        return _NOTHING  # the common hit: nothing parsed
    want_repr = wanted_algorithm(req_headers, "Want-Repr-Digest")
    if want_repr is not None and want_repr in digest_members(stored, "Repr-Digest"):
        want_repr = None
    want_content = wanted_algorithm(req_headers, "Want-Content-Digest")
    if not drop and want_content in digest_members(stored, "Content-Digest"):
        want_content = None
    return DigestAnswer(drop_content=drop, repr=want_repr, content=want_content)


def add_member(headers: MutableHeaders, name: str, algorithm: str, value: bytes) -> None:
    """Add one member to digest field ``name`` of ``headers`` (keeping those it has)."""
    prior = headers.popall(name, [])
    headers[name] = ", ".join([*prior, serialize_digests([(algorithm, value)])])
