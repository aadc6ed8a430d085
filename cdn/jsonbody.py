"""Bounded decoding of a JSON request body, for every JSON endpoint of both programs.

`json.loads` recurses once per nesting level, so a few kilobytes of `[[[[…` raise
RecursionError (an HTTP 500 and a traceback) rather than a ValueError. The size and the
nesting depth are therefore checked before decoding. The depth check costs two `bytes.count`
calls for an ordinary body: a body with no more openers than `max_depth` cannot be deeper.
Only a bracket-heavy body pays for the exact scan (strings removed by one regex, then a
running sum over the brackets left), all of it bounded by `max_bytes`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from itertools import accumulate
from typing import Any

__all__ = ["JsonBodyError", "decode_json_object", "nesting_depth", "read_limited"]

# A JSON string (RFC 8259 §7); brackets inside one do not nest.
_STRING = re.compile(rb'"[^"\\]*(?:\\[\s\S][^"\\]*)*"')
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


class JsonBodyError(ValueError):
    """The body is too large, too deeply nested, not UTF-8, not JSON or not an object."""


def decode_json_object(body: bytes, *, max_bytes: int, max_depth: int) -> dict[str, Any]:
    """The JSON object in `body`; every defect raises JsonBodyError with a one-line reason."""
    if len(body) > max_bytes:
        raise JsonBodyError(f"body larger than {max_bytes} bytes")
    # No more openers than max_depth: cannot be deeper, and the exact scan is skipped.
    openers = body.count(b"[") + body.count(b"{")
    if openers > max_depth and nesting_depth(body) > max_depth:
        raise JsonBodyError(f"JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(body)
    except UnicodeDecodeError as exc:
        raise JsonBodyError(f"not UTF-8 (byte {exc.start})") from None
    except ValueError as exc:  # json.JSONDecodeError is one
        raise JsonBodyError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise JsonBodyError("expected a JSON object")
    return value


def nesting_depth(body: bytes) -> int:
    """How deep arrays and objects nest in `body` (an upper bound if it is not valid JSON)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0)


async def read_limited(read: Callable[[int], Awaitable[bytes]], limit: int) -> bytes:
    """A body read with `read(n)` (e.g. aiohttp's request.content.read) up to limit + 1
    bytes, for an endpoint whose bound is above its application's client_max_size: the
    one byte more lets decode_json_object name the defect."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
