"""Where an origin response ends on the wire (RFC 9112 §6.3), so nothing past it is parsed,
and which response heads are refused before the parser sees them (RFC 9112 §2.2).

An origin that sends more body than its Content-Length announces leaves bytes on the
connection that belong to no response. RFC 9112 §6.3: a client "MAY discard the remaining
data" and "MUST NOT process, cache, or forward such extra data as a separate response".
aiohttp's parser (llhttp) reads straight on past the end of a response and parses the
excess as the next status line, failing the response that was fine ("Bad status line").
So the origin client counts each response's bytes with a ResponseFraming and feeds the
parser no further than the response's end; the excess is dropped and the connection is
never reused.

A head whose lines end in a bare LF, or that is larger than MAX_TRACKED_HEAD_BYTES, raises
MalformedResponse: the origin client answers 502 (an `invalid` origin error) and nothing
is stored. RFC 9112 §2.2 lets a recipient accept a bare LF, but does not require it, and
the edge is a cache: where a head ends and how its lines split is exactly where two
parsers can disagree (response splitting, RFC 9112 §11.2), and a copy stored from a
misread frame is served to every client until it expires. Refusing is the one reading
that cannot be wrong, and a bare LF is a broken origin to fix (every HTTP server library
writes CRLF). A 64 KiB head is far past any real one (nginx refuses an upstream head over
proxy_buffer_size, 4-8 KiB, with 502 "upstream sent too big header"; Varnish's
http_resp_size is 32 KiB).

Only framings that can be counted from the head are followed: no body (a HEAD request,
204, 304) and Content-Length. Chunked responses, bodies read until close, and a head this
reader cannot place (conflicting Content-Length, no status line) pass through untouched,
for the parser to judge.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_TRACKED_HEAD_BYTES", "MalformedResponse", "ResponseFraming"]

MAX_TRACKED_HEAD_BYTES: Final = 64 * 1024
_END_OF_HEAD: Final = b"\r\n\r\n"
_STATUS = re.compile(rb"HTTP/\d\.\d ([1-5]\d\d)(?: |\r\n)")
_BARE_LF = re.compile(rb"(?<!\r)\n")
_FIELD = re.compile(rb"\r\n(content-length|transfer-encoding)[ \t]*:[ \t]*([^\r]*)", re.I)
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class MalformedResponse(ValueError):
    """The origin's response head is refused before parsing (the client gets 502)."""


class ResponseFraming:
    """Follows one response (after one request) through the bytes that arrive for it."""

    def __init__(self, *, head_only: bool) -> None:
        """``head_only``: the request was HEAD, so the response has no body (RFC 9110 §9.3.2)."""
        self._head_only = head_only
        self._head = b""  # the head so far, while it is being read
        self._left: int | None = None  # body bytes still due, once counted
        self._following = True  # False: a framing this reader leaves to the parser
        self.ended = False  # the response is complete: any further byte is excess

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """The part of ``data`` that belongs to the response, and whether bytes past its
        end were dropped; a head with a bare LF or over the size limit raises
        MalformedResponse."""
        if self.ended:
            return b"", bool(data)
        if not self._following:
            return data, False
        if self._left is None:
            return self._feed_head(data)
        return self._feed_body(data, 0)

    def _feed_head(self, data: bytes) -> tuple[bytes, bool]:
        start = len(self._head)
        self._head += data
        end = self._head.find(_END_OF_HEAD)
        # Only the new bytes are searched (from one back: a CR may end the previous piece).
        if _BARE_LF.search(self._head, max(start - 1, 0), end if end >= 0 else len(self._head)):
            raise MalformedResponse("bare LF line ending in the response head (RFC 9112 §2.2)")
        if end < 0:
            if len(self._head) > MAX_TRACKED_HEAD_BYTES:
                raise MalformedResponse(f"response head larger than {MAX_TRACKED_HEAD_BYTES} bytes")
            return data, False
        head, self._head = self._head[: end + 2], b""
        body_at = end + len(_END_OF_HEAD) - start  # where the body starts within data
        status = self._framing(head)
        if status is not None and status < 200 and self._following:
            # An interim response: the final one follows (RFC 9110 §15.2).
            kept, dropped = self._feed_head(data[body_at:])
            return data[:body_at] + kept, dropped
        if not self._following:
            return data, False
        return self._feed_body(data, body_at)

    def _framing(self, head: bytes) -> int | None:
        """Count the final response's body if its head says how (sets ``_left``, or stops
        following); returns the status code."""
        status = _STATUS.match(head)
        if status is None:
            self._following = False
            return None
        code = int(status.group(1))
        if code == 101:
            self._following = False  # another protocol follows (RFC 9110 §15.2.2)
        if code < 200:
            return code
        length = _content_length(head)
        if self._head_only or code in _NO_BODY_STATUSES:
            self._left = 0
        elif length is not None:
            self._left = length
        else:
            self._following = False  # chunked, until close, or for the parser to reject
        return code

    def _feed_body(self, data: bytes, start: int) -> tuple[bytes, bool]:
        assert self._left is not None
        end = start + self._left
        self._left = max(0, end - len(data))
        if self._left == 0:
            self.ended = True
        return data[:end], len(data) > end


def _content_length(head: bytes) -> int | None:
    """The body length a head announces by Content-Length alone (RFC 9112 §6.3), if any."""
    values: set[bytes] = set()
    for name, value in _FIELD.findall(head):
        if name.lower() == b"transfer-encoding":
            return None  # chunked or otherwise coded: not countable from the head
        values.update(v.strip(b" \t") for v in value.split(b","))
    if len(values) != 1:
        return None
    (value,) = values
    return int(value) if value.isdigit() else None
