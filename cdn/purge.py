"""A fleet purge as router and edge exchange it: one definition for sender and receiver.

A purge names exactly one selector — {"url"}, {"prefix"} (absolute http(s) URLs) or
{"key"} (a Surrogate-Key tag) — with an optional "site" (the Host whose objects it
touches; for a URL selector it must be the URL's host) and, once a router has accepted
it, an "id". Ids are time-ordered (UUIDv7 layout, RFC 9562 §5.7), so a log sorts by id.
The router fans a purge out to each edge's PURGE_PATH and, for an edge it could not
reach, sends it again with its answer to that edge's next load report; the edge applies
each id once.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from cdn.errors import ReportError

PURGE_PATH = "/api/v1/purge"  # on the edge's control port: POST a Purge with its id
PurgeKind = Literal["url", "prefix", "key"]
PURGE_KINDS: tuple[PurgeKind, ...] = ("url", "prefix", "key")
MAX_SELECTOR_CHARS = 2048  # a URL, prefix or tag longer than this is a mistake
MAX_ID_CHARS = 64
_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_-]{0,63}")
_SITE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:\d{1,5})?")


class PurgeError(ReportError):
    """A purge request or message is malformed (the sender's fault: HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Purge:
    id: str  # "" until a router accepted it
    kind: PurgeKind
    value: str
    site: str | None = None

    def to_dict(self) -> dict[str, str]:
        out: dict[str, str] = {"id": self.id} if self.id else {}
        out[self.kind] = self.value
        if self.site is not None:
            out["site"] = self.site
        return out

    def with_id(self, purge_id: str) -> Purge:
        return Purge(purge_id, self.kind, self.value, self.site)

    @classmethod
    def from_dict(cls, raw: Any, *, need_id: bool) -> Purge:
        """Validate one purge object; every defect raises PurgeError naming the field."""
        if not isinstance(raw, dict):
            raise PurgeError("a purge must be a JSON object")
        kinds = [k for k in PURGE_KINDS if k in raw]
        unknown = set(raw) - {*PURGE_KINDS, "site", "id"}
        if len(kinds) != 1 or unknown:
            raise PurgeError('expected exactly one of "url", "prefix", "key" (and optional "site")')
        kind = kinds[0]
        value = raw[kind]
        if not isinstance(value, str) or not 0 < len(value) <= MAX_SELECTOR_CHARS:
            raise PurgeError(f"{kind}: expected a non-empty string of at most "
                             f"{MAX_SELECTOR_CHARS} characters")  # fmt: skip
        site = _site(raw.get("site"))
        if kind != "key":
            host = url_host(value)
            if site is not None and site.lower() != host:
                raise PurgeError(f"site: {site!r} is not the host of {kind} {value!r}")
        purge_id = raw.get("id", "")
        if need_id and (not isinstance(purge_id, str) or not _ID.fullmatch(purge_id)):
            raise PurgeError(f"id: expected a purge id, got {purge_id!r}")
        return cls(purge_id if need_id else "", kind, value, site)


def url_host(url: str) -> str:
    """The lower-case host[:port] of an absolute http(s) URL (PurgeError otherwise)."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "Invalid IPv6 URL": an unclosed "[" (RFC 3986 §3.2.2)
        raise PurgeError(f"expected an absolute http:// URL, got {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PurgeError(f"expected an absolute http:// URL, got {url!r}")
    return parts.netloc.rpartition("@")[2].lower()


def _site(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SITE.fullmatch(value):
        raise PurgeError(f"site: expected a host name, got {value!r}")
    return value


def new_purge_id(now_s: float, rng: random.Random) -> str:
    """A UUIDv7 (RFC 9562 §5.7): 48 bits of Unix milliseconds, then 74 random bits."""
    ms = int(now_s * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64)
    value |= (0b10 << 62) | rng.getrandbits(62)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
