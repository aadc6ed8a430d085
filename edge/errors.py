"""Exception root of the edge, split by whose fault it is.

``ConfigError`` is local (a bad config file or flag: one line, exit code 2);
``OriginError`` is remote (the origin failed us: translated to 502/504 in one place,
the proxy's error answer).
"""

from __future__ import annotations

from typing import Literal

from cdn import errors as shared

OriginFailure = Literal["connect", "timeout", "invalid", "digest"]


class EdgeError(shared.CDNError):
    """Root of every error the edge raises on purpose."""


class ConfigError(EdgeError, shared.ConfigError):
    """A configuration file or flag is unusable: names the file, the key and the expectation.

    The shared TOML reader (cdn.tomltable) raises this class when the edge asks it to.
    """


class OriginError(EdgeError):
    """The origin could not be reached, was too slow, or sent a malformed response
    (``digest``: a body that does not match its RFC 9530 digest fields).

    ``kind`` is the edge_origin_errors label; ``status`` is what the client gets
    (RFC 9110 §15.6.3 502 Bad Gateway, §15.6.5 504 Gateway Timeout).
    """

    def __init__(self, kind: OriginFailure, message: str) -> None:
        super().__init__(f"origin {kind} error: {message}")
        self.kind: OriginFailure = kind
        self.message = message

    @property
    def status(self) -> int:
        return 504 if self.kind == "timeout" else 502
