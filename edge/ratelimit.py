"""Per-client request rate limits: a token bucket per client address and one per network
prefix (/24 for IPv4, /56 for IPv6, as BIND's and Knot's RRL group clients), like nginx's
`limit_req` with a burst. Pure: addresses and an injected `now` in, a wait out.

The client is the socket's peer, or, when that peer is a trusted tier (a shield edge or a
load balancer in armour.trusted_proxies), the right-most address of X-Forwarded-For that
is not itself trusted: every hop appends the address it saw, so the entries to the right
of the first untrusted one were written by us and the ones to its left by the client.

Own buckets rather than the `limits` library: its fixed-window limiter cost ~43 µs a call
here (two calls a request: address and prefix), against ~9 µs for one update of this
dict of (tokens, last) pairs in the same loop; and it has no token bucket, which is what
a burst needs.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_TRACKED = 100_000  # buckets kept per scope; the oldest goes first when full
MAX_FORWARDED_HOPS = 16  # X-Forwarded-For entries looked at, right to left


@dataclass(frozen=True, slots=True)
class RateSettings:
    per_client_rps: float = 0.0  # 0: no limit
    per_client_burst: float = 0.0
    per_prefix_rps: float = 0.0
    per_prefix_burst: float = 0.0
    ipv4_prefix: int = 24
    ipv6_prefix: int = 56
    trusted_proxies: tuple[Network, ...] = ()


class TokenBuckets:
    """One bucket of ``burst`` tokens per key, refilled at ``rate`` a second."""

    def __init__(self, rate: float, burst: float, max_tracked: int = MAX_TRACKED) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_tracked = max_tracked
        self._buckets: dict[object, tuple[float, float]] = {}

    def take(self, key: object, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is there."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if len(self._buckets) >= self.max_tracked:
            del self._buckets[next(iter(self._buckets))]  # the least recently seen
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate


class RateLimiter:
    """The address and prefix buckets of one edge; `check` says how long to wait."""

    def __init__(self, settings: RateSettings) -> None:
        self.settings = settings
        s = settings
        self._client = (
            TokenBuckets(s.per_client_rps, s.per_client_burst) if s.per_client_rps else None
        )
        self._prefix = (
            TokenBuckets(s.per_prefix_rps, s.per_prefix_burst) if s.per_prefix_rps else None
        )

    @property
    def enabled(self) -> bool:
        return self._client is not None or self._prefix is not None

    def check(self, client: Address, now: float) -> tuple[str, float] | None:
        """None when allowed, else (scope, seconds to wait): scope "client" or "prefix"."""
        if self._client is not None:
            wait = self._client.take(client, now)
            if wait:
                return "client", wait
        if self._prefix is not None:
            bits = self.settings.ipv4_prefix if client.version == 4 else self.settings.ipv6_prefix
            wait = self._prefix.take(ipaddress.ip_network((client, bits), strict=False), now)
            if wait:
                return "prefix", wait
        return None


def retry_after(wait_s: float) -> str:
    """Retry-After in whole seconds (RFC 9110 §10.2.3), at least 1."""
    return str(max(1, math.ceil(wait_s)))


def client_address(
    peer: str, forwarded_for: Iterable[str], trusted: tuple[Network, ...]
) -> Address | None:
    """The client a request is from: the peer, or from X-Forwarded-For when the peer is
    trusted (see the module doc); None when the peer is no IP address (a Unix socket)."""
    try:
        address: Address = ipaddress.ip_address(peer)
    except ValueError:
        return None
    if not trusted or not _trusted(address, trusted):
        return address
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops[-MAX_FORWARDED_HOPS:]):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return address  # a garbled entry: the last address we can vouch for
        if not _trusted(address, trusted):
            return address
    return address


def _trusted(address: Address, trusted: tuple[Network, ...]) -> bool:
    return any(address in network for network in trusted)
