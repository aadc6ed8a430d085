"""The router's purge log: which node has applied which purge (pure; `now` is passed in).

Theory of operation. Every purge a router hears of (from its API or, with several
routers, from the bus) gets a record with one entry per node of the topology at that
moment: "pending" until the node confirms, "done" once it has (a 2xx from the fan-out,
or the purge's id among the acks of the node's load report), "failed: reason" when the
fan-out got an error. A node that is not "done" still owes the purge: it rides on the
router's reply to that node's next report until acknowledged, oldest first. Adding a
known id again adds nothing (several routers publish and hear the same purge), except
that nodes new to the record join it as pending. Records older than PURGE_RETENTION_S
go, and at most MAX_PURGES are kept (oldest first out): a node that was away longer
than that has restarted with an empty cache anyway, or gets the next purges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cdn.purge import Purge, PurgeError

PURGE_RETENTION_S = 24 * 3600.0  # a day, like the stream's max age on the bus
MAX_PURGES = 10_000
DONE, PENDING = "done", "pending"


@dataclass(slots=True)
class PurgeRecord:
    purge: Purge
    created_at: float  # wall-clock seconds (the id's time), so it survives a restart
    nodes: dict[str, str] = field(default_factory=dict)  # node → done | pending | failed: …

    @property
    def complete(self) -> bool:
        return all(result == DONE for result in self.nodes.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.purge.id,
            "selector": self.purge.to_dict(),
            "created_at": self.created_at,
            "nodes": dict(self.nodes),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> PurgeRecord:
        if not isinstance(raw, dict):
            raise PurgeError("a purge record must be an object")
        nodes = raw.get("nodes", {})
        created = raw.get("created_at")
        if not isinstance(nodes, dict) or not isinstance(created, int | float):
            raise PurgeError("a purge record needs created_at and nodes")
        purge = Purge.from_dict(raw.get("selector"), need_id=True)
        return cls(purge, float(created), {str(k): str(v) for k, v in nodes.items()})


class PurgeLog:
    """Purge records by id, in arrival order (ids are time-ordered too)."""

    def __init__(self, records: Iterable[PurgeRecord] = ()) -> None:
        self._records: dict[str, PurgeRecord] = {r.purge.id: r for r in records}

    def __len__(self) -> int:
        return len(self._records)

    def get(self, purge_id: str) -> PurgeRecord | None:
        return self._records.get(purge_id)

    def records(self) -> list[PurgeRecord]:
        return list(self._records.values())

    def add(self, purge: Purge, nodes: Iterable[str], now: float) -> tuple[PurgeRecord, bool]:
        """The record of purge (created if new: True) with every node in it."""
        record = self._records.get(purge.id)
        created = record is None
        if record is None:
            record = self._records[purge.id] = PurgeRecord(purge, now)
        for node in nodes:
            record.nodes.setdefault(node, PENDING)
        return record, created

    def settle(self, purge_id: str, node: str, result: str) -> bool:
        """Record a fan-out result; a "done" is final. True if anything changed."""
        record = self._records.get(purge_id)
        if record is None or node not in record.nodes or record.nodes[node] in (DONE, result):
            return False
        record.nodes[node] = result
        return True

    def ack(self, node: str, ids: Iterable[str]) -> int:
        """The node applied these purges (its report's acks); returns how many were news."""
        return sum(self.settle(purge_id, node, DONE) for purge_id in ids)

    def owed(self, node: str, limit: int) -> tuple[Purge, ...]:
        """The oldest `limit` purges the node has not confirmed."""
        owed: list[Purge] = []
        for record in self._records.values():
            if record.nodes.get(node, DONE) != DONE:
                owed.append(record.purge)
                if len(owed) == limit:
                    break
        return tuple(owed)

    def owed_counts(self, nodes: Iterable[str]) -> Mapping[str, int]:
        counts = dict.fromkeys(nodes, 0)
        for record in self._records.values():
            for node, result in record.nodes.items():
                if result != DONE and node in counts:
                    counts[node] += 1
        return counts

    def prune(self, now: float) -> int:
        """Forget records past the retention time and beyond MAX_PURGES; returns how many."""
        old = [i for i, r in self._records.items() if now - r.created_at > PURGE_RETENTION_S]
        excess = len(self._records) - len(old) - MAX_PURGES
        if excess > 0:
            old += [i for i in self._records if i not in old][:excess]
        for purge_id in old:
            del self._records[purge_id]
        return len(old)
