"""Eviction policies for the cache store, behind one small protocol.

A policy only orders keys; the store owns sizes and decides how many victims
it needs. The contract: ``victim()`` names a present key (reorganising its
queues as the algorithm requires) without forgetting it; the store then calls
``remove(victim)``. Every operation is O(1) amortised.

- ``LRU``: least recently used, an ordered dict.
- ``SIEVE`` (Zhang et al., NSDI '24): one FIFO queue, a visited bit per key
  and a hand sweeping from the oldest towards the newest key; hits only set
  the bit, so lookups never reorder the queue.
- ``S3FIFO`` (Yang et al., SOSP '23): a small probationary FIFO (10 % of the
  keys), a main FIFO and a ghost FIFO of recently evicted keys; per-key
  frequency capped at 3. One-hit wonders leave from the small queue quickly.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Final, Generic, Literal, Protocol, TypeVar

__all__ = ["LRU", "POLICIES", "S3FIFO", "SIEVE", "EvictionPolicy", "PolicyName", "make_policy"]

K = TypeVar("K", bound=Hashable)


class EvictionPolicy(Protocol[K]):
    """Orders the store's keys for eviction."""

    def insert(self, key: K) -> None:
        """A new key entered the store."""

    def touch(self, key: K) -> None:
        """A present key was used (a cache hit)."""

    def remove(self, key: K) -> None:
        """A present key left the store (eviction, purge or replacement)."""

    def victim(self) -> K:
        """The key to evict next; the store must then ``remove`` it. Needs a present key."""


class LRU(Generic[K]):
    """Least recently used."""

    def __init__(self) -> None:
        self._order: OrderedDict[K, None] = OrderedDict()

    def insert(self, key: K) -> None:
        self._order[key] = None

    def touch(self, key: K) -> None:
        self._order.move_to_end(key)

    def remove(self, key: K) -> None:
        del self._order[key]

    def victim(self) -> K:
        return next(iter(self._order))


class _Node(Generic[K]):
    __slots__ = ("key", "newer", "older", "visited")

    def __init__(self, key: K) -> None:
        self.key = key
        self.visited = False
        self.newer: _Node[K] | None = None
        self.older: _Node[K] | None = None


class SIEVE(Generic[K]):
    """SIEVE: FIFO order, visited bits, a hand that survives between evictions."""

    def __init__(self) -> None:
        self._nodes: dict[K, _Node[K]] = {}
        self._newest: _Node[K] | None = None
        self._oldest: _Node[K] | None = None
        self._hand: _Node[K] | None = None

    def insert(self, key: K) -> None:
        node = _Node(key)
        node.older = self._newest
        if self._newest is not None:
            self._newest.newer = node
        self._newest = node
        if self._oldest is None:
            self._oldest = node
        self._nodes[key] = node

    def touch(self, key: K) -> None:
        self._nodes[key].visited = True

    def remove(self, key: K) -> None:
        node = self._nodes.pop(key)
        if self._hand is node:
            self._hand = node.newer  # the sweep continues towards newer keys
        if node.newer is not None:
            node.newer.older = node.older
        else:
            self._newest = node.older
        if node.older is not None:
            node.older.newer = node.newer
        else:
            self._oldest = node.newer

    def victim(self) -> K:
        node = self._hand or self._oldest
        assert node is not None, "victim() of an empty policy"
        while node.visited:
            node.visited = False
            node = node.newer or self._oldest
            assert node is not None
        self._hand = node
        return node.key


SMALL_FRACTION: Final = 0.1  # S3-FIFO: share of keys in the probationary queue
MAX_FREQUENCY: Final = 3  # S3-FIFO: 2-bit saturating counter


class S3FIFO(Generic[K]):
    """S3-FIFO: small, main and ghost FIFO queues with capped frequencies."""

    def __init__(self) -> None:
        self._small: OrderedDict[K, None] = OrderedDict()
        self._main: OrderedDict[K, None] = OrderedDict()
        self._ghost: OrderedDict[K, None] = OrderedDict()
        self._freq: dict[K, int] = {}

    def insert(self, key: K) -> None:
        self._freq[key] = 0
        if key in self._ghost:
            del self._ghost[key]
            self._main[key] = None  # seen again soon after eviction: skip probation
        else:
            self._small[key] = None

    def touch(self, key: K) -> None:
        self._freq[key] = min(self._freq[key] + 1, MAX_FREQUENCY)

    def remove(self, key: K) -> None:
        del self._freq[key]
        if key in self._small:
            del self._small[key]
            self._remember(key)
        else:
            del self._main[key]

    def victim(self) -> K:
        total = len(self._small) + len(self._main)
        assert total, "victim() of an empty policy"
        if self._small and (len(self._small) >= SMALL_FRACTION * total or not self._main):
            key = self._small_victim()
            if key is not None:
                return key
        return self._main_victim()

    def _small_victim(self) -> K | None:
        # Keys used while on probation are promoted to main; the first unused
        # one at the tail is the victim (it goes to the ghost queue on remove).
        while self._small:
            key = next(iter(self._small))
            if self._freq[key] == 0:
                return key
            del self._small[key]
            self._freq[key] = 0
            self._main[key] = None
        return None

    def _main_victim(self) -> K:
        # FIFO with reinsertion: a used key goes round again with one use less.
        while True:
            key = next(iter(self._main))
            if self._freq[key] == 0:
                return key
            self._freq[key] -= 1
            self._main.move_to_end(key)

    def _remember(self, key: K) -> None:
        self._ghost[key] = None
        while len(self._ghost) > max(len(self._main), 1):
            self._ghost.popitem(last=False)


PolicyName = Literal["lru", "sieve", "s3fifo"]
POLICIES: Final[tuple[PolicyName, ...]] = ("lru", "sieve", "s3fifo")


def make_policy(name: str) -> EvictionPolicy[K]:
    """A new policy by name ("lru", "sieve" or "s3fifo"); ValueError if unknown."""
    if name == "lru":
        return LRU()
    if name == "sieve":
        return SIEVE()
    if name == "s3fifo":
        return S3FIFO()
    raise ValueError(f"unknown eviction policy {name!r} (known: {', '.join(POLICIES)})")
