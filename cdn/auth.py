"""The one bearer-token check of both control APIs (RFC 6750 over RFC 9110 §11).

Pure: the shells pass the request's `Authorization` header (as aiohttp gives it) and the
accepted tokens, the current one first, then any still honoured during a rotation.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

SCHEME = "bearer"  # compared case-insensitively: RFC 9110 §11.1
UNAUTHORIZED = "missing or wrong bearer token"


def credentials(authorization: str | None) -> bytes | None:
    """The b64token of an `Authorization: Bearer <token>` header (RFC 6750 §2.1), as bytes;
    None without the header, b"" with another scheme."""
    if authorization is None:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != SCHEME:
        return b""
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: this gets them back.
    return token.lstrip(" ").encode("utf-8", "surrogateescape")


def authorized(authorization: str | None, tokens: Iterable[str]) -> bool:
    """Whether the header carries one of `tokens`; an empty token never matches, so a
    program configured without one refuses every request rather than allowing any."""
    given = credentials(authorization)
    if not given:
        return False
    # Every token compared in constant time, none skipped, so timing tells nothing.
    matches = [hmac.compare_digest(given, t.encode()) for t in tokens if t]
    return any(matches)


def challenge(realm: str, authorization: str | None) -> str:
    """The `WWW-Authenticate` value of a 401 (RFC 6750 §3): error="invalid_token" when
    credentials were given but are wrong (§3.1), no error code when there were none."""
    value = f'Bearer realm="{realm}"'
    if authorization is not None:
        value += ', error="invalid_token"'
    return value
