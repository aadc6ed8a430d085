"""The DNS path's armour: cookies (RFC 7873/9018) and response rate limiting around the
responder. Pure but for the injected clock; one `Guard` per process, kept across reloads.

The COOKIE option is cut from the query before the responder sees it (its shape cache then
never holds, nor serves, one client's cookie to another) and the answer's cookie is appended
to the response's OPT, which the responder always writes last. Without RRL, a query whose
bytes after the header nowhere hold the COOKIE option code (two octets), the common case,
costs one substring search; the others are parsed as far as their OPT.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from typing import Literal, Protocol

from georouter.config import RouterConfig
from georouter.cookies import OPTION_COOKIE, SECRET_BYTES, CookieSecrets, Verdict, check
from georouter.rrl import Limiter
from georouter.tallies import HotPathTallies
from georouter.wire import ECHOED_FLAGS, HEADER, QR, TC, encode_opt

log = logging.getLogger(__name__)

OPTION_ECS = 8
TYPE_OPT = 41
FORMERR, NXDOMAIN, BADCOOKIE = 1, 3, 23  # BADCOOKIE: RFC 7873 §8
MIN_UDP_PAYLOAD, MAX_UDP_PAYLOAD = 512, 1232  # as the responder's
_U16 = struct.Struct(">H")
_COOKIE_CODE = _U16.pack(OPTION_COOKIE)
_NX, _ERROR = b"\x00nxdomain", b"\x00error"  # response classes (no name starts with \0)
_VALID = ("valid", "renewed")
Transport = Literal["udp", "tcp"]


class Answering(Protocol):
    def respond(self, data: bytes, client_ip: str, transport: Transport) -> bytes | None: ...


def random_secrets() -> CookieSecrets:
    """A secret for this start only: cookies then survive neither a restart nor another router."""
    return CookieSecrets(os.urandom(SECRET_BYTES))


class Guard:
    """Cookies and RRL for one process: its share of the limit, the zone's cookie secrets."""

    @classmethod
    def of(cls, config: RouterConfig, tallies: HotPathTallies) -> Guard:
        """The guard a config asks for; its cookie secret must be set (random_secrets())."""
        assert config.cookies is not None, "config.cookies: set by the server at load"
        rrl = config.rrl
        share = 1.0 / config.router.dns_workers  # each worker holds 1/N (see rrl.py)
        return cls(config.cookies, None if rrl is None else Limiter(rrl, share), tallies)

    def __init__(
        self,
        secrets: CookieSecrets,
        limiter: Limiter | None,
        tallies: HotPathTallies,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secrets = secrets
        self._limiter = limiter
        self._log_only = limiter is not None and limiter.config.log_only
        self._rrl = tallies.rrl
        self._cookies = tallies.cookies
        self._clock = clock

    def respond(
        self, data: bytes, client_ip: str, transport: Transport, responder: Answering
    ) -> bytes | None:
        """The responder's answer, with its cookie, unless rate limiting drops or slips it."""
        if self._limiter is None and data.find(_COOKIE_CODE, HEADER.size) < 0:
            # No COOKIE option code anywhere after the header, so no cookie to check or
            # cut, and no limiter: the answer is the responder's (the common query).
            return responder.respond(data, client_ip, transport)
        return self._guarded(data, client_ip, transport, responder)

    def _guarded(
        self, data: bytes, client_ip: str, transport: Transport, responder: Answering
    ) -> bytes | None:
        verdict: Verdict | None = None
        ecs = False
        limit = MIN_UDP_PAYLOAD
        qend = _question_end(data)
        opt = _find_opt(data, qend) if qend and data[10:12] == b"\0\1" else None
        if opt is not None:
            rdata_at, end, cookie_at, cookie_end, ecs, payload = opt
            limit = min(max(payload, MIN_UDP_PAYLOAD), MAX_UDP_PAYLOAD)
            if cookie_at:
                now = int(self._clock())
                verdict = check(
                    data[cookie_at + 4 : cookie_end], _packed(client_ip), self._secrets, now
                )
                self._cookies[verdict.outcome] += 1
                if verdict.outcome == "malformed":  # RFC 7873 §5.2.2
                    return _reply(data, qend, 0, FORMERR, b"")
                size = end - rdata_at - (cookie_end - cookie_at)
                head = data[: rdata_at - 2] + _U16.pack(size)
                data = head + data[rdata_at:cookie_at] + data[cookie_end:]
        response = responder.respond(data, client_ip, transport)
        if response is None:
            return None
        exempt = verdict is not None and verdict.outcome in _VALID  # RFC 7873 §5.3 / BIND
        if self._limiter is not None and transport == "udp" and not exempt:
            action = self._limit(self._limiter, data, qend, response, client_ip, ecs)
            if action != "answer":
                return _limited(action, data, qend, verdict)
        if verdict is None:
            return response
        return _with_option(data, qend, response, verdict.option, limit, transport)

    def _limit(
        self, limiter: Limiter, data: bytes, qend: int, response: bytes, client: str, ecs: bool
    ) -> str:
        address = _packed(client)
        if limiter.exempt(address):
            return "answer"
        rcode = response[3] & 0xF
        if rcode == NXDOMAIN:
            klass, reason = _NX, "nxdomain"
        elif rcode or not qend:
            klass, reason = _ERROR, "error"
        else:
            klass, reason = data[12:qend].lower(), "answer"
        action = limiter.decide(address, klass, self._clock())
        if action == "answer":
            return action
        self._rrl["log_only" if self._log_only else action, reason, "yes" if ecs else "no"] += 1
        return "answer" if self._log_only else action


def _limited(action: str, data: bytes, qend: int, verdict: Verdict | None) -> bytes | None:
    """A slip: TC=1 (a real resolver retries over TCP), or with a client cookie BADCOOKIE
    and a server cookie (as BIND); a drop, or a slip without a question: nothing."""
    if action == "drop" or not qend:
        return None
    if verdict is not None:
        return _reply(data, qend, 0, BADCOOKIE, verdict.option)
    return _reply(data, qend, TC, 0, None)


def _packed(client_ip: str) -> bytes:
    if ":" in client_ip:
        return socket.inet_pton(socket.AF_INET6, client_ip)
    return socket.inet_aton(client_ip)


def _question_end(data: bytes) -> int:
    """Where the one uncompressed question ends; 0 if the query has no such question."""
    if len(data) < HEADER.size or data[4:6] != b"\0\1":
        return 0
    at = HEADER.size
    size = len(data)
    while at < size:
        length = data[at]
        if length == 0:
            at += 5
            return at if at <= size else 0
        if length > 63:
            return 0
        at += 1 + length
    return 0


def _find_opt(data: bytes, at: int) -> tuple[int, int, int, int, bool, int] | None:
    """The OPT after the question: (RDATA start, end, COOKIE start, COOKIE end, ECS?,
    payload size); None if the additional record is not a plain OPT (the responder judges)."""
    if data[at : at + 3] != b"\0\0\x29" or len(data) < at + 11:
        return None
    payload = int.from_bytes(data[at + 3 : at + 5])
    rdata_at = at + 11
    end = rdata_at + int.from_bytes(data[at + 9 : at + 11])
    if end > len(data):
        return None
    cookie_at = cookie_end = 0
    ecs = False
    at = rdata_at
    while at + 4 <= end:
        code, length = int.from_bytes(data[at : at + 2]), int.from_bytes(data[at + 2 : at + 4])
        if code == OPTION_COOKIE and not cookie_at:
            cookie_at, cookie_end = at, at + 4 + length
        ecs = ecs or code == OPTION_ECS
        at += 4 + length
    if cookie_end > end:
        return None
    return rdata_at, end, cookie_at, cookie_end, ecs, payload


def _reply(data: bytes, qend: int, flag: int, rcode: int, option: bytes | None) -> bytes:
    """A reply of header, question and (unless option is None) an OPT carrying option."""
    flags = QR | flag | (int.from_bytes(data[2:4]) & ECHOED_FLAGS) | (rcode & 0xF)
    opt = b"" if option is None else encode_opt(MAX_UDP_PAYLOAD, rcode, False, option)
    header = HEADER.pack(0, flags, 1 if qend else 0, 0, 0, 1 if opt else 0)
    return data[:2] + header[2:] + data[12:qend] + opt


def _with_option(
    data: bytes, qend: int, response: bytes, option: bytes, limit: int, transport: Transport
) -> bytes:
    """The response with option appended to its OPT (the last record), or truncated with
    only the question and the OPT if it no longer fits (RFC 7873 §5.2: always echo)."""
    opt_at = _last_record(response)
    if opt_at is None or response[opt_at + 1 : opt_at + 3] != b"\0\x29":
        return response
    if transport == "udp" and len(response) + len(option) > limit:
        return _reply(data, qend, TC, response[3] & 0xF, option)
    size = int.from_bytes(response[opt_at + 9 : opt_at + 11]) + len(option)
    return response[: opt_at + 9] + _U16.pack(size) + response[opt_at + 11 :] + option


def _last_record(message: bytes) -> int | None:
    """Where the message's last record starts (names may be compressed), if it parses."""
    _, _, qd, an, ns, ar = HEADER.unpack_from(message)
    at = HEADER.size
    last = None
    try:
        for index in range(qd + an + ns + ar):
            start = at
            while message[at] and message[at] < 0xC0:
                at += 1 + message[at]
            at += 2 if message[at] >= 0xC0 else 1
            if index < qd:
                at += 4
                continue
            last = start
            at += 10 + int.from_bytes(message[at + 8 : at + 10])
    except IndexError:
        return None
    return last
