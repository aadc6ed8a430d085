"""WebSocket pass-through rules (RFC 6455), pure: what is an upgrade, who may open a tunnel,
which close code goes on the wire, when to ping and when a tunnel is idle.

The shell (edge/tunnel.py) holds the sockets and calls these; nothing here touches a
socket or a clock (``now`` is passed in).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from edge.directives import Headers, split_list

# RFC 6455 §7.4.1 codes, by meaning.
NORMAL = 1000
GOING_AWAY = 1001
NO_STATUS = 1005  # never on the wire: "no code was given"
ABNORMAL = 1006  # never on the wire: "closed without a Close frame"
INTERNAL_ERROR = 1011
TLS_FAILED = 1015  # never on the wire
# IANA-registered codes that may be sent (1004 reserved; 1005/1006/1015 local only).
_SENDABLE_PROTOCOL_CODES = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
# Codes counted under their own label; any other (applications' 3000-4999) is "other".
_LABELLED_CODES = frozenset({*_SENDABLE_PROTOCOL_CODES, NO_STATUS, ABNORMAL, TLS_FAILED})
WEBSOCKET_VERSION = "13"  # RFC 6455 §4.1, the only version
_KEY_BYTES = 16  # Sec-WebSocket-Key: base64 of 16 random bytes (§4.1 item 7)

Refusal = Literal["disabled", "draining", "limit"]
Initiator = Literal["client", "origin", "edge"]


@dataclass(frozen=True, slots=True)
class HandshakeProblem:
    """A client handshake the edge answers itself (RFC 6455 §4.2.2)."""

    status: int  # 400, or 426 with Sec-WebSocket-Version: 13
    detail: str


@dataclass(frozen=True, slots=True)
class Ending:
    """How a tunnel ended: who ended it, with what code (as heard) and reason."""

    by: Initiator
    code: int
    reason: str = ""


def wants_websocket(method: str, headers: Headers) -> bool:
    """An Upgrade to websocket with the Connection option that makes it one (RFC 9110 §7.8,
    RFC 6455 §4.1); an Upgrade without it is ignored, as §7.8 says."""
    if method != "GET" or "Upgrade" not in headers:
        return False
    upgrades = {token.lower() for token in split_list(headers.getall("Upgrade", []))}
    options = {token.lower() for token in split_list(headers.getall("Connection", []))}
    return "websocket" in upgrades and "upgrade" in options


def handshake_problem(version: tuple[int, int], headers: Headers) -> HandshakeProblem | None:
    """What is wrong with a client's opening handshake (RFC 6455 §4.2.1), if anything."""
    if version < (1, 1):
        return HandshakeProblem(400, "websocket-needs-http-1.1")
    if headers.get("Sec-WebSocket-Version", "").strip() != WEBSOCKET_VERSION:
        return HandshakeProblem(426, "websocket-version")  # §4.4: name the version we speak
    key = headers.get("Sec-WebSocket-Key", "").strip()
    try:
        if len(base64.b64decode(key, validate=True)) != _KEY_BYTES:
            raise ValueError(key)
    except (ValueError, binascii.Error):
        return HandshakeProblem(400, "websocket-key")
    return None


def offered_protocols(headers: Headers) -> tuple[str, ...]:
    """The client's Sec-WebSocket-Protocol offers, in its order of preference (§4.1 item 10)."""
    return tuple(split_list(headers.getall("Sec-WebSocket-Protocol", [])))


def refusal(
    *, enabled: bool, draining: bool, open_tunnels: int, max_tunnels: int
) -> Refusal | None:
    """Why a new tunnel may not open now, or None: the site's switch, a drain, the cap."""
    if not enabled:
        return "disabled"
    if draining:
        return "draining"
    if open_tunnels >= max_tunnels:
        return "limit"
    return None


REFUSAL_STATUS: dict[Refusal, int] = {
    "disabled": 403,  # RFC 6455 §4.2.2: a server that does not accept answers e.g. 403
    "draining": 503,  # the client reconnects, through DNS, to another edge
    "limit": 503,
}


def wire_code(code: int) -> int:
    """The code to close the other leg with, for a code heard on one (RFC 6455 §7.4).

    The heard code is mirrored where it may be sent; "no status" (1005, or 0 from a
    Close frame without a body) becomes a normal close; an abnormal end (1006) or a
    TLS failure (1015) is an unexpected condition, 1011; anything else not sendable too.
    """
    if code in (0, NO_STATUS):
        return NORMAL
    if code in _SENDABLE_PROTOCOL_CODES or 3000 <= code <= 4999:
        return code
    return INTERNAL_ERROR


def close_label(code: int) -> str:
    """A bounded metric label for a close code: registered codes by number, else "other"."""
    return str(code) if code in _LABELLED_CODES else "other"


def wire_reason(reason: str) -> bytes:
    """A close reason that fits a control frame: 123 bytes of UTF-8 at most (§5.5, §5.5.1)."""
    data = reason.encode()[:123]
    return data.decode(errors="ignore").encode()


@dataclass(frozen=True, slots=True)
class Keepalive:
    """What one leg needs now: ``idle`` (close the tunnel), ``ping``, and when to look again."""

    idle: bool
    ping: bool
    next_check: float


def keepalive(
    now: float, *, heard: float, pinged: float, idle_timeout_s: float, ping_interval_s: float
) -> Keepalive:
    """The keep-alive step for one leg: ``heard`` is when its last frame (of any kind,
    a pong included) arrived, ``pinged`` when the edge last pinged it (0: never).

    A leg silent for idle_timeout_s is idle. Quiet for ping_interval_s (since it was last
    heard or pinged), it gets a ping: a live peer answers with a pong (RFC 6455 §5.5.2), so a
    quiet chat stays open while a vanished peer is found. ping_interval_s 0: no pings.
    """
    idle_at = heard + idle_timeout_s
    if now >= idle_at:
        return Keepalive(idle=True, ping=False, next_check=now)
    if not ping_interval_s:
        return Keepalive(idle=False, ping=False, next_check=idle_at)
    ping_at = max(heard, pinged) + ping_interval_s
    ping = now >= ping_at
    if ping:
        ping_at = now + ping_interval_s
    return Keepalive(idle=False, ping=ping, next_check=min(idle_at, ping_at))


def soonest(checks: Iterable[Keepalive]) -> float:
    return min(check.next_check for check in checks)
