"""Which parent (shield) a miss goes to, and which parents are healthy.

Theory of operation. An edge with parents sends each cache fill to one parent chosen by
rendezvous (highest-random-weight) hashing of the cache key: every parent gets a weight
``blake2b(parent, key)`` and the heaviest wins. So each object lives on one shield, every
edge picks the same one without talking to the others, and removing a parent moves only
the keys that parent had (ATS parent.config ``round_robin=consistent_hash``, Squid
``carp``, Varnish's ``shard`` director). The rest of the ranking is the failover order:
when the chosen parent fails, the next heaviest one is asked, then the origin
(``edge.go_direct``).

Health is passive, counted from real fetches: a parent is marked down after
``fail_after`` consecutive failures and left out of the ranking; once ``retry_s`` has
passed it is ranked again for the next fetch alone (half-open: handing out that probe
leaves it out for another ``retry_s``, so concurrent fetches do not all pay the connect
timeout of a blackholed parent), and that fetch decides (a success marks it up, a failure
keeps it down for another ``retry_s``). When every parent is down there is no candidate
with ``go_direct`` (the origin is asked at once); without it the whole ranking is offered
anyway: trying a parent that may have come back beats refusing the request.

The hash is blake2b (stable across processes and restarts), never Python's ``hash()``,
which is salted per process and would make each edge choose differently.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["ParentHealth", "Transition", "rank", "weight"]

Transition = Literal["down", "up"]


def weight(parent: str, key: str) -> int:
    """The parent's rendezvous weight for ``key`` (64 bits of blake2b)."""
    digest = hashlib.blake2b(f"{parent}\n{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rank(parents: Sequence[str], key: str) -> list[str]:
    """``parents`` heaviest first for ``key``: the first is its home, the rest the failover
    order (ties, vanishingly rare, broken by name so every edge agrees)."""
    return sorted(parents, key=lambda parent: (-weight(parent, key), parent))


@dataclass(slots=True)
class _State:
    failures: int = 0  # consecutive
    down_until: float | None = None  # marked down: ranked again from this time


class ParentHealth:
    """The parents of one edge and their passive health; time is passed in."""

    def __init__(
        self, parents: Sequence[str], *, fail_after: int, retry_s: float, go_direct: bool = True
    ) -> None:
        self.parents = tuple(parents)
        self._go_direct = go_direct
        self._fail_after = fail_after
        self._retry_s = retry_s
        self._states = {parent: _State() for parent in self.parents}

    def is_up(self, parent: str) -> bool:
        """Not marked down (a parent due for a retry still counts as down until it answers)."""
        return self._states[parent].down_until is None

    def candidates(self, key: str, now: float) -> list[str]:
        """The parents to try for ``key``, in order: healthy ones and those due for a retry
        (each handed to this call only, see the module docstring), by rendezvous rank; if
        none qualifies, none (go_direct) or every parent."""
        usable = [p for p in self.parents if self._usable(p, now)]
        if not usable and not self._go_direct:
            return rank(self.parents, key)
        for parent in usable:
            state = self._states[parent]
            if state.down_until is not None:  # due for a retry: this call has the one probe
                state.down_until = now + self._retry_s
        return rank(usable, key)

    def failed(self, parent: str, now: float) -> Transition | None:
        """Count a failure; "down" when this one marks the parent down."""
        state = self._states[parent]
        state.failures += 1
        if state.down_until is not None:
            state.down_until = now + self._retry_s  # a failed retry: wait another period
            return None
        if state.failures >= self._fail_after:
            state.down_until = now + self._retry_s
            return "down"
        return None

    def succeeded(self, parent: str) -> Transition | None:
        """Count a success; "up" when the parent was marked down."""
        state = self._states[parent]
        was_down = state.down_until is not None
        state.failures = 0
        state.down_until = None
        return "up" if was_down else None

    def _usable(self, parent: str, now: float) -> bool:
        down_until = self._states[parent].down_until
        return down_until is None or now >= down_until
