"""The bytes-bounded response store: keyed slots, size accounting, purge indexes.

A slot is one stored variant: (host, target, variant) where ``variant`` is
any hashable value the cache derives from Vary. The store keeps, per
host+target, its variants in insertion order (newest last, at most
``max_variants``), an index from purge tag (surrogate key) to slots, and
evicts through an :class:`~edge.eviction.EvictionPolicy` until a new slot
fits. It knows nothing about HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from edge.eviction import EvictionPolicy

__all__ = ["MAX_VARIANTS", "SlotKey", "Store"]

V = TypeVar("V")
SlotKey = tuple[str, str, Hashable]  # host, target, variant
MAX_VARIANTS: Final = 8  # per host+target; the oldest variant goes first


@dataclass(frozen=True, slots=True)
class _Slot(Generic[V]):
    value: V
    size: int
    tags: tuple[str, ...]


class Store(Generic[V]):
    """Holds values of known size under a byte budget; O(1) get/put/remove."""

    def __init__(
        self,
        capacity_bytes: int,
        policy: EvictionPolicy[SlotKey],
        max_object_bytes: int,
        on_evict: Callable[[int], None] | None = None,
        max_variants: int = MAX_VARIANTS,
        on_victim: Callable[[SlotKey, V], None] | None = None,
    ) -> None:
        if capacity_bytes <= 0 or max_object_bytes <= 0 or max_variants <= 0:
            raise ValueError("store capacity, object limit and variant limit must be positive")
        self.capacity_bytes = capacity_bytes
        self.max_object_bytes = min(max_object_bytes, capacity_bytes)
        self._policy = policy
        self._on_evict = on_evict
        self._max_variants = max_variants
        self._on_victim = on_victim  # each slot evicted for room (the disk level unlinks it)
        self._slots: dict[SlotKey, _Slot[V]] = {}
        self._hosts: dict[str, dict[str, dict[Hashable, None]]] = {}
        self._tags: dict[str, set[SlotKey]] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def bytes(self) -> int:
        """Bytes charged by the stored slots."""
        return self._bytes

    def fits(self, size: int) -> bool:
        """Whether an object of ``size`` bytes may be stored at all."""
        return 0 <= size <= self.max_object_bytes

    def variants(self, host: str, target: str) -> list[tuple[Hashable, V]]:
        """The variants stored for host+target, newest first (no policy touch)."""
        variants = self._hosts.get(host, {}).get(target, {})
        return [(v, self._slots[(host, target, v)].value) for v in reversed(variants)]

    def newest(self, host: str, target: str) -> tuple[Hashable, V] | None:
        """The newest variant stored for host+target (no policy touch)."""
        variants = self._hosts.get(host, {}).get(target)
        if not variants:
            return None
        variant = next(reversed(variants))
        return variant, self._slots[(host, target, variant)].value

    def touch(self, key: SlotKey) -> None:
        """Record a use of a present slot (a cache hit)."""
        self._policy.touch(key)

    def put(self, key: SlotKey, value: V, size: int, tags: Iterable[str] = ()) -> bool:
        """Store ``value`` (replacing the slot), evicting as needed; False if too large."""
        if not self.fits(size):
            return False
        self.remove(key)
        host, target, variant = key
        stored = list(self._hosts.get(host, {}).get(target, {}))
        for old in stored[: max(0, len(stored) - self._max_variants + 1)]:
            self._discard((host, target, old))
        evicted = 0
        while self._bytes + size > self.capacity_bytes:
            victim = self._policy.victim()
            if self._on_victim is not None:
                self._on_victim(victim, self._slots[victim].value)
            self._discard(victim)
            evicted += 1
        self._hosts.setdefault(host, {}).setdefault(target, {})[variant] = None
        slot = _Slot(value, size, tuple(dict.fromkeys(tags)))
        self._slots[key] = slot
        for tag in slot.tags:
            self._tags.setdefault(tag, set()).add(key)
        self._bytes += size
        self._policy.insert(key)
        if evicted and self._on_evict is not None:
            self._on_evict(evicted)
        return True

    def remove(self, key: SlotKey) -> bool:
        """Drop one slot; False if it was not stored."""
        if key not in self._slots:
            return False
        self._discard(key)
        return True

    def remove_url(self, host: str, target: str) -> int:
        """Drop every variant of host+target; returns the count."""
        variants = list(self._hosts.get(host, {}).get(target, {}))
        for variant in variants:
            self._discard((host, target, variant))
        return len(variants)

    def remove_prefix(self, host: str, prefix: str) -> int:
        """Drop every slot of ``host`` whose target starts with ``prefix`` (a scan
        of that host's targets: purges are rare, lookups must stay O(1))."""
        targets = [t for t in self._hosts.get(host, {}) if t.startswith(prefix)]
        return sum(self.remove_url(host, t) for t in targets)

    def remove_tag(self, tag: str) -> int:
        """Drop every slot tagged ``tag``; returns the count."""
        keys = list(self._tags.get(tag, ()))
        for key in keys:
            self._discard(key)
        return len(keys)

    def slot_keys(self) -> Iterator[SlotKey]:
        """Every stored slot key (for tests and introspection)."""
        return iter(list(self._slots))

    def value(self, key: SlotKey) -> V | None:
        """The value stored under ``key`` (no policy touch), or None."""
        slot = self._slots.get(key)
        return None if slot is None else slot.value

    def tagged(self, tag: str) -> frozenset[SlotKey]:
        """Slot keys carrying ``tag``."""
        return frozenset(self._tags.get(tag, ()))

    def _discard(self, key: SlotKey) -> None:
        slot = self._slots.pop(key)
        self._policy.remove(key)
        self._bytes -= slot.size
        host, target, variant = key
        targets = self._hosts[host]
        del targets[target][variant]
        if not targets[target]:
            del targets[target]
            if not targets:
                del self._hosts[host]
        for tag in slot.tags:
            keys = self._tags[tag]
            keys.discard(key)
            if not keys:
                del self._tags[tag]
