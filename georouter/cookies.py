"""DNS cookies (RFC 7873) with interoperable server cookies (RFC 9018). Pure: `now` is given.

A COOKIE option holds an 8-byte client cookie, optionally followed by the server cookie the
client last got from us. Ours is RFC 9018's: version 1, three reserved octets, a 32-bit
timestamp and SipHash-2-4(client cookie | version | reserved | timestamp | client IP) keyed
by a 128-bit secret shared by every router of the zone, so any of them verifies what another
issued. The first secret generates; `previous_secrets` only verify (rotation, RFC 9018 §4.4).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Literal

from siphashc import siphash

OPTION_COOKIE = 10  # RFC 7873 §4
CLIENT_COOKIE_BYTES = 8
SERVER_COOKIE_BYTES = 16  # RFC 9018 §4.2
MIN_SERVER_COOKIE_BYTES, MAX_SERVER_COOKIE_BYTES = 8, 32  # RFC 7873 §4
SECRET_BYTES = 16  # SipHash-2-4 takes a 128-bit key
VERSION = 1
MAX_AGE_S = 3600  # RFC 9018 §4.3: older than one hour is invalid
MAX_FUTURE_S = 300  # ... and so is more than five minutes in the future
REISSUE_AFTER_S = 1800  # ... and a valid one older than half an hour is replaced
_HEAD = struct.Struct(">B3xI")  # version, reserved, timestamp
_OPTION = struct.Struct(">HH")

# valid: our server cookie, verified; renewed: valid but old (a fresh one goes back);
# client_only: no server cookie yet; bad: a server cookie we did not make or that expired;
# malformed: a length RFC 7873 §5.2.2 forbids (FORMERR).
Outcome = Literal["valid", "renewed", "client_only", "bad", "malformed"]
OUTCOMES: tuple[Outcome, ...] = ("valid", "renewed", "client_only", "bad", "malformed")


@dataclass(frozen=True, slots=True)
class CookieSecrets:
    current: bytes
    previous: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: Outcome
    option: bytes  # the COOKIE option for the response (client | fresh server), or b""


def server_cookie(client: bytes, address: bytes, secret: bytes, now: int) -> bytes:
    """RFC 9018 §4.2: 16 bytes for this client cookie and packed client address."""
    head = _HEAD.pack(VERSION, now & 0xFFFFFFFF)
    digest = siphash(secret, client + head + address)
    return head + digest.to_bytes(8, "little")


def check(data: bytes, address: bytes, secrets: CookieSecrets, now: int) -> Verdict:
    """What a query's COOKIE option data means (RFC 7873 §5.2), and the option to answer."""
    size = len(data)
    if size != CLIENT_COOKIE_BYTES and not (
        CLIENT_COOKIE_BYTES + MIN_SERVER_COOKIE_BYTES
        <= size
        <= CLIENT_COOKIE_BYTES + MAX_SERVER_COOKIE_BYTES
    ):
        return Verdict("malformed", b"")
    client = data[:CLIENT_COOKIE_BYTES]
    if size == CLIENT_COOKIE_BYTES:
        return Verdict("client_only", _fresh(client, address, secrets, now))
    given = data[CLIENT_COOKIE_BYTES:]
    if len(given) != SERVER_COOKIE_BYTES or given[0] != VERSION:
        return Verdict("bad", _fresh(client, address, secrets, now))
    stamp = _HEAD.unpack_from(given)[1]
    age = (now - stamp + 2**31) % 2**32 - 2**31  # serial arithmetic (RFC 1982)
    if -MAX_FUTURE_S <= age <= MAX_AGE_S:
        for secret in (secrets.current, *secrets.previous):
            if server_cookie(client, address, secret, stamp) == given:
                if age > REISSUE_AFTER_S or secret is not secrets.current:
                    return Verdict("renewed", _fresh(client, address, secrets, now))
                return Verdict("valid", _OPTION.pack(OPTION_COOKIE, size) + data)
    return Verdict("bad", _fresh(client, address, secrets, now))


def _fresh(client: bytes, address: bytes, secrets: CookieSecrets, now: int) -> bytes:
    """The COOKIE option with a server cookie made now by the current secret."""
    cookie = client + server_cookie(client, address, secrets.current, now)
    return _OPTION.pack(OPTION_COOKIE, len(cookie)) + cookie
