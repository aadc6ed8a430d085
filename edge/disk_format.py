"""The on-disk record of one stored response: a checked header, the entry's fields, the body.

    magic "GEO1" | meta length (u32) | body length (u64) | blake2b-256 of meta+body | meta | body

``meta`` is JSON: the slot (host, target, Vary) and every CacheEntry field but the body,
so a restart rebuilds the entry without parsing the response again. The index scan at
start reads only the header and meta and checks the file's length (a torn write is
shorter); the digest is checked whenever the body is read, so a flipped byte anywhere
is found before anything is served. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Final

from multidict import CIMultiDict

from edge.entry import CacheEntry, Vary

__all__ = [
    "HEADER_BYTES",
    "CorruptRecord",
    "RecordHead",
    "decode_entry",
    "encode_entry",
    "encode_meta",
    "parse_head",
    "record_header",
    "record_name",
]

MAGIC: Final = b"GEO1"
_HEADER: Final = struct.Struct(">4sIQ32s")
HEADER_BYTES: Final = _HEADER.size
MAX_META_BYTES: Final = 1024 * 1024  # headers are bounded far below this by the edge's limits


class CorruptRecord(ValueError):
    """A record that must not be served: torn, truncated, altered or not ours."""


@dataclass(frozen=True, slots=True)
class RecordHead:
    """What the index needs of a record: its slot, tags, and sizes."""

    host: str
    target: str
    vary: Vary
    surrogate_keys: tuple[str, ...]
    meta: dict[str, Any]
    body_length: int
    file_bytes: int


def record_name(host: str, target: str, vary: Hashable) -> str:
    """The file name of a slot: a hash, so any URL maps to a safe, fixed-length name."""
    key = json.dumps([host, target, vary], separators=(",", ":")).encode()
    return hashlib.blake2b(key, digest_size=16).hexdigest()


def encode_meta(host: str, target: str, entry: CacheEntry) -> bytes:
    """The meta part of ``entry``'s record (cheap: no body bytes touched)."""
    return json.dumps(
        {
            "host": host,
            "target": target,
            "vary": entry.vary,
            "status": entry.status,
            "headers": list(entry.headers.items()),
            "response_time": entry.response_time,
            "corrected_initial_age": entry.corrected_initial_age,
            "freshness_lifetime": entry.freshness_lifetime,
            "surrogate_keys": entry.surrogate_keys,
            "size": entry.size,
            "no_cache": entry.no_cache,
            "no_stale": entry.no_stale,
            "stale_while_revalidate": entry.stale_while_revalidate,
            "stale_if_error": entry.stale_if_error,
        },
        separators=(",", ":"),
    ).encode()


def record_header(meta: bytes, body: bytes) -> bytes:
    """The header that goes before ``meta`` and ``body`` (hashes the body: off the loop)."""
    digest = hashlib.blake2b(meta, digest_size=32)
    digest.update(body)
    return _HEADER.pack(MAGIC, len(meta), len(body), digest.digest())


def encode_entry(host: str, target: str, entry: CacheEntry) -> bytes:
    """The whole record for ``entry`` stored under host+target."""
    meta = encode_meta(host, target, entry)
    return record_header(meta, entry.body) + meta + entry.body


def parse_head(prefix: bytes, file_bytes: int) -> RecordHead:
    """The head of a record from its first bytes (header + meta at least) and the file's
    length; raises CorruptRecord if it is not a whole record of ours."""
    if len(prefix) < HEADER_BYTES:
        raise CorruptRecord("shorter than a header")
    magic, meta_len, body_len, _ = _HEADER.unpack_from(prefix)
    if magic != MAGIC or meta_len > MAX_META_BYTES:
        raise CorruptRecord("not a record")
    if file_bytes != HEADER_BYTES + meta_len + body_len:
        raise CorruptRecord("length differs (torn or truncated)")
    if len(prefix) < HEADER_BYTES + meta_len:
        raise CorruptRecord("meta cut short")
    meta = _meta(prefix[HEADER_BYTES : HEADER_BYTES + meta_len])
    return RecordHead(
        host=meta["host"],
        target=meta["target"],
        vary=meta["vary"],
        surrogate_keys=meta["surrogate_keys"],
        meta=meta,
        body_length=body_len,
        file_bytes=file_bytes,
    )


def decode_entry(record: bytes) -> tuple[str, str, CacheEntry]:
    """host, target and the entry of a whole record; raises CorruptRecord unless the
    length and the digest agree."""
    if len(record) < HEADER_BYTES:
        raise CorruptRecord("shorter than a header")
    _, meta_len, _, expected = _HEADER.unpack_from(record)
    head = parse_head(record, len(record))
    if hashlib.blake2b(record[HEADER_BYTES:], digest_size=32).digest() != expected:
        raise CorruptRecord("digest mismatch")
    m = head.meta
    entry = CacheEntry(
        status=m["status"],
        headers=CIMultiDict((str(k), str(v)) for k, v in m["headers"]),
        body=record[HEADER_BYTES + meta_len :],
        response_time=m["response_time"],
        corrected_initial_age=m["corrected_initial_age"],
        freshness_lifetime=m["freshness_lifetime"],
        vary=head.vary,
        surrogate_keys=head.surrogate_keys,
        size=m["size"],
        no_cache=m["no_cache"],
        no_stale=m["no_stale"],
        stale_while_revalidate=m["stale_while_revalidate"],
        stale_if_error=m["stale_if_error"],
    )
    return head.host, head.target, entry


def _meta(raw: bytes) -> dict[str, Any]:
    try:
        meta = json.loads(raw)
        meta["vary"] = tuple((str(n), None if v is None else str(v)) for n, v in meta["vary"])
        meta["surrogate_keys"] = tuple(str(k) for k in meta["surrogate_keys"])
        if not isinstance(meta["host"], str) or not isinstance(meta["target"], str):
            raise TypeError("host/target")
    except (ValueError, TypeError, KeyError) as exc:
        raise CorruptRecord(f"bad meta: {exc}") from None
    return dict(meta)
