"""Response rate limiting with BIND's semantics (BIND ARM "Response Rate Limiting"). Pure.

Theory of operation: one account per (client prefix, response class); the class is the
answer's name and type, or NXDOMAIN, or error, so a flood of one answer (a reflection
attack's favourite) is limited while the same client's other answers are not. An account's
balance earns `responses_per_second` credits a second, at most one second's worth, and
every answer costs one; below zero the answer is limited, and the debt may reach `window_s`
seconds' worth, so a source must stay quiet for up to the window to be answered again. Every
`slip`-th limited answer is sent truncated (TC=1: a real resolver retries over TCP, which a
spoofer cannot); the rest are dropped. TCP is never limited (the shell only asks for UDP).

Several DNS workers share one UDP socket, and the kernel hands each datagram to one waiting
worker, so a source's queries spread evenly over them; each worker therefore enforces
`share` = 1/N of the rate and of the window: together they hold the configured limit, never
N times it, and an uneven spread only limits sooner (never later). No shared memory, no lock.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

RESPONSES_PER_SECOND = 20  # recommended: see docs/dns.md "Response rate limiting"
WINDOW_S = 15.0  # BIND's default
MAX_WINDOW_S = 3600.0  # BIND's range
SLIP = 2  # BIND and NSD: every second limited answer is truncated
MAX_SLIP = 10  # BIND's range
IPV4_PREFIX = 24  # BIND
IPV6_PREFIX = 56  # BIND
MAX_TABLE_ENTRIES = 100_000  # accounts kept; the oldest go first (~150 B each)
MAX_RESPONSES_PER_SECOND = 1_000_000

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Action = Literal["answer", "drop", "slip"]


@dataclass(frozen=True, slots=True)
class RrlConfig:
    responses_per_second: float = RESPONSES_PER_SECOND
    window_s: float = WINDOW_S
    slip: int = SLIP
    ipv4_prefix: int = IPV4_PREFIX
    ipv6_prefix: int = IPV6_PREFIX
    exempt: tuple[Network, ...] = ()
    log_only: bool = False


class Limiter:
    """The accounts of one process (a worker enforces its `share` of the limit)."""

    def __init__(self, config: RrlConfig, share: float = 1.0) -> None:
        self.config = config
        self._rate = config.responses_per_second * share
        self._debt = -config.window_s * self._rate  # the lowest balance
        self._slip = config.slip
        self._shift = {4: 32 - config.ipv4_prefix, 16: 128 - config.ipv6_prefix}
        self._exempt = [_exemption(net) for net in config.exempt]
        self._accounts: dict[tuple[int, bytes], list[float]] = {}

    def exempt(self, address: bytes) -> bool:
        if not self._exempt:
            return False
        number = int.from_bytes(address)
        return any(
            size == len(address) and number >> shift == net for size, net, shift in self._exempt
        )

    def decide(self, address: bytes, response_class: bytes, now: float) -> Action:
        """Charge one answer of this class to the address's prefix: answer, drop or slip."""
        prefix = int.from_bytes(address) >> self._shift[len(address)]
        key = (prefix, response_class)
        account = self._accounts.get(key)
        if account is None:
            if len(self._accounts) >= MAX_TABLE_ENTRIES:
                del self._accounts[next(iter(self._accounts))]
            account = self._accounts[key] = [self._rate, now, 0.0]
        balance = min(self._rate, account[0] + (now - account[1]) * self._rate) - 1.0
        account[0] = max(balance, self._debt)
        account[1] = now
        if balance >= 0:
            return "answer"
        account[2] += 1
        if self._slip and account[2] % self._slip == 0:
            return "slip"
        return "drop"


def _exemption(net: Network) -> tuple[int, int, int]:
    """(address bytes, network number, shift): an address is in it if its number >> shift
    is the network number."""
    shift = net.max_prefixlen - net.prefixlen
    return net.max_prefixlen // 8, int(net.network_address) >> shift, shift
