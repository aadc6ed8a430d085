"""aiohttp's server logger for the edge's ports: a malformed client request is a count and
one DEBUG line, not an ERROR traceback.

aiohttp answers a request its parser refuses (an HttpProcessingError: bad method, header or
chunk framing, a line over the limit) with 400 and closes the connection, then logs the
exception with its traceback at ERROR; any client could flood the log that way at no cost.
The request is the client's fault and already answered, so, like nginx (client errors at
`info`, below its default `error` level) and aiohttp itself for a first line that is not
HTTP (debug), it is logged below the edge's INFO level and counted in
edge_bad_requests_total{reason}. Any other exception keeps aiohttp's ERROR traceback.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
)
from prometheus_client import Counter

BadRequestReason = Literal["method", "request_line", "header", "framing", "too_large", "other"]
BAD_REQUEST_REASONS: tuple[BadRequestReason, ...] = (
    "method", "request_line", "header", "framing", "too_large", "other",
)  # fmt: skip
MAX_DETAIL_CHARS = 160  # of the parser's message in the log line (it quotes client bytes)

# The C and the pure-Python parser name the same defect differently; these words tell
# apart the cases that arrive as a plain BadHttpMessage.
_FRAMING_WORDS = ("chunk", "content-length", "transfer-encoding")
_TOO_LARGE_WORDS = ("too many", "too long", "too large", "more than")


def bad_request_reason(exc: HttpProcessingError) -> BadRequestReason:
    """The bounded label for a request aiohttp's parser refused."""
    text = str(exc.message).lower()
    if isinstance(exc, BadHttpMethod):
        return "method"
    if isinstance(exc, LineTooLong) or any(w in text for w in _TOO_LARGE_WORDS):
        return "too_large"
    if isinstance(exc, BadStatusLine | InvalidURLError):
        return "request_line"
    if any(w in text for w in _FRAMING_WORDS):
        return "framing"
    if isinstance(exc, InvalidHeader) or "header" in text:
        return "header"
    return "other"


class ServerLog(logging.Logger):
    """Pass as aiohttp's `logger=`: it calls exception() (and debug() for a first line that
    is not HTTP) with `exc_info=` the parser's error."""

    def __init__(self, bad_requests: Counter) -> None:
        super().__init__("edge.http")
        self.parent = logging.getLogger("edge")  # its handlers and level, as any edge logger
        self._bad_requests = bad_requests
        for reason in BAD_REQUEST_REASONS:  # every series exported from the start, at 0
            bad_requests.labels(reason)

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kw: Any) -> None:
        if not self._client_error(exc_info, args):
            super().exception(msg, *args, exc_info=exc_info, **kw)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        if not self._client_error(kw.get("exc_info"), args):
            super().debug(msg, *args, **kw)

    def _client_error(self, exc: object, args: tuple[object, ...]) -> bool:
        """Count and log `exc` if it is a client's malformed request; False otherwise."""
        if not isinstance(exc, HttpProcessingError):
            return False
        reason = bad_request_reason(exc)
        self._bad_requests.labels(reason).inc()
        if self.isEnabledFor(logging.DEBUG):
            detail = " ".join(str(exc.message).split())[:MAX_DETAIL_CHARS]
            peer = args[0] if args else None  # aiohttp passes request.remote
            super().debug("event=bad_request reason=%s peer=%s detail=%r", reason, peer, detail)
        return True
