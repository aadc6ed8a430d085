"""One origin fetch per cache key at a time (request coalescing, a.k.a. collapsed forwarding).

Theory of operation: the first request that needs the origin for a key *leads*: it gets a
Flight and must finish() it, whatever happens. Requests arriving while the flight is open
*follow*: they wait for it, at most the configured coalescing wait, then look the key up
in the cache again. If the leader stored a response, they are served from the cache. If it
did not (the response was uncacheable, or the fetch failed) or the wait ran out, each
follower fetches on its own: an uncacheable response may be personal and must never be
shared (RFC 9111 §3), and a slow origin must not hold followers hostage past the bound.

The same flights give "one background refresh per key" for stale-while-revalidate
(RFC 5861 §3): a refresh only starts if it can lead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field


@dataclass(slots=True, eq=False)
class Flight:
    """One origin fetch in progress for ``key``; ``stored`` once finished."""

    key: str
    done: asyncio.Event = field(default_factory=asyncio.Event)
    stored: bool = False


class Coalescer:
    """The open flights of one edge, by cache key. Single event loop, no locks needed."""

    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def lead(self, key: str) -> Flight | None:
        """A new flight for ``key`` if none is open (the caller must finish() it), else None."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight(key)
        return flight

    def current(self, key: str) -> Flight | None:
        """The open flight for ``key``, if any."""
        return self._flights.get(key)

    def finish(self, flight: Flight, *, stored: bool) -> None:
        """Close a flight and release its followers; ``stored`` if the cache now has the key."""
        flight.stored = stored
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        flight.done.set()

    async def follow(self, flight: Flight, wait_s: float) -> bool:
        """Wait for ``flight`` at most ``wait_s``; True if it finished having stored."""
        try:
            async with asyncio.timeout(wait_s):  # keeps a client's cancel (3.11's wait_for may not)
                await flight.done.wait()
        except TimeoutError:
            return False
        return flight.stored
