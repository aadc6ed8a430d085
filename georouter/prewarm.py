"""The router's pre-warm bookkeeping: tasks, quotas, the popularity view (pure; `now` is passed in).

Theory of operation. A task names a region, its URLs, an optional site, its origin ("api":
an operator's POST; "popularity": made by this module's Popularity when a region's
answers changed) and its target nodes, fixed when it is made: the region's edges (role
"edge": shields fill only through their children) for an API task, the nodes that now
take the clients for a popularity task. Every router that hears of a task (its API, or the
bus) sends it to those nodes; a node's "delivery" says whether that worked ("sent",
"pending", "failed: reason"). What each node then did comes in its load reports
(PrewarmProgress, absolute figures): every router hears every edge's reports, so every
router shows the same progress. Tasks are kept PREWARM_RETENTION_S (a day) and at most
MAX_TASKS, of which at most MAX_POPULARITY_TASKS popularity ones.

Quotas ([prewarm] in the config) bound API tasks: URLs per task, and URLs per sliding
24 hours over every API task in the log (shared by all routers through the bus, so the
quota is the fleet's, within the bus's delay). Popularity tasks are bounded by their
nature (the top popularity_top_k URLs, at most one per region per
popularity_interval_s) and count against no quota. Every router sees the same change and
makes its task, so a popularity task's id is derived from what it is
(`popularity_task_id`: the region, its targets and the popularity_interval_s period it
falls in): the routers' tasks share one id, which the bus and the edges keep once.

Popularity. Each report's hot set (an edge's top objects with decayed counts; a
shield's, the misses of children in every region, is not counted) is kept per node with
its time; a region's hot set is the sum over the region's nodes heard within
HOT_MAX_AGE_S (a node that just died still counts: its clients are the ones moving).
`Popularity.changes` compares which nodes each region answers with now against before:
a node that left (down, drained, saturated) sends its own hot set (the objects its clients,
who are moving, asked for; the region's if it reported none) to the nodes that now answer
for the region, whose own hot objects are cached there already; a node that joined gets
the region's hot set.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from cdn.prewarm import OUTCOMES, HotObject, PrewarmError, PrewarmOrder, PrewarmProgress
from cdn.purge import new_purge_id

PREWARM_RETENTION_S = 24 * 3600.0
QUOTA_WINDOW_S = 24 * 3600.0
MAX_TASKS = 10_000
MAX_POPULARITY_TASKS = 500  # kept of those made by popularity: the latest, for the API
MAX_ERRORS_SHOWN = 100  # failed URLs listed per node in the API
HOT_MAX_AGE_S = 60.0
MIN_ID_PERIOD_S = 1.0  # popularity task ids' period when popularity_interval_s is shorter
SENT, PENDING = "sent", "pending"
TaskOrigin = Literal["api", "popularity"]
TASK_ORIGINS: tuple[TaskOrigin, ...] = ("api", "popularity")


def popularity_task_id(region: str, targets: Iterable[str], now_s: float, interval_s: float) -> str:
    """The id of a popularity task: the same on every router for one region, one set of
    targets and one period of `interval_s` (Unix time), so N routers' tasks are one. A
    UUIDv7 (RFC 9562 §5.7) of the period's start, its other bits from a hash."""
    period_s = max(interval_s, MIN_ID_PERIOD_S)
    start_s = (now_s // period_s) * period_s
    what = "\0".join((region, ",".join(sorted(targets)), repr(start_s))).encode()
    seed = int.from_bytes(hashlib.sha256(what).digest())
    return new_purge_id(start_s, random.Random(seed))


@dataclass(frozen=True, slots=True)
class PrewarmLimits:
    """[prewarm] in the router's config."""

    max_urls_per_task: int = 100  # Alibaba's PushObjectCache allows 100 URLs per call
    max_urls_per_day: int = 10_000  # API tasks' URLs per sliding 24 h, fleet-wide
    popularity: bool = True
    popularity_top_k: int = 32
    popularity_interval_s: float = 5.0


@dataclass(slots=True)
class NodeProgress:
    delivery: str = PENDING  # sent | pending | failed: reason
    progress: PrewarmProgress | None = None

    def to_dict(self, urls: tuple[str, ...]) -> dict[str, Any]:
        p = self.progress
        out: dict[str, Any] = {"delivery": self.delivery}
        if p is None:
            out.update({"state": "waiting" if self.delivery != SENT else "queued",
                        "fetched": 0, "cached": 0, "failed": 0, "queued": len(urls)})  # fmt: skip
            return out
        out.update(
            state="done" if p.queued == 0 else "running",
            fetched=p.fetched,
            cached=p.cached,
            failed=p.failed,
            queued=p.queued,
        )
        errors = [{"url": urls[i], "status": s} for i, s in p.errors if i < len(urls)]
        if errors:
            out["errors"] = errors[:MAX_ERRORS_SHOWN]
        return out


@dataclass(slots=True)
class PrewarmTask:
    id: str
    region: str
    urls: tuple[str, ...]
    origin: TaskOrigin
    created_at: float  # wall-clock seconds, like a purge's
    site: str | None = None
    nodes: dict[str, NodeProgress] = field(default_factory=dict)

    @property
    def order(self) -> PrewarmOrder:
        return PrewarmOrder(self.id, self.urls, self.site)

    def to_dict(self) -> dict[str, Any]:
        """The API's view (and, with `nodes` as targets, the state file's and the bus's)."""
        return self._fields() | {"nodes": {n: p.to_dict(self.urls) for n, p in self.nodes.items()}}

    def to_message(self) -> dict[str, Any]:
        """What the bus and the state file keep: the task and its targets, not progress."""
        return self._fields() | {"targets": sorted(self.nodes)}

    def _fields(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "region": self.region,
            "origin": self.origin,
            "site": self.site,
            "created_at": self.created_at,
            "urls": list(self.urls),
        }

    def to_state(self) -> dict[str, Any]:
        """The state file's record: the message and each node's delivery and progress."""
        nodes = {
            n: {"delivery": p.delivery,
                "progress": None if p.progress is None else p.progress.to_dict()}
            for n, p in self.nodes.items()
        }  # fmt: skip
        return {**self.to_message(), "nodes": nodes}

    @classmethod
    def from_state(cls, raw: Any) -> PrewarmTask:
        task = cls.from_message(raw)
        nodes = raw.get("nodes", {})
        if not isinstance(nodes, dict):
            raise PrewarmError("nodes: expected an object")
        for name, entry in nodes.items():
            if name in task.nodes and isinstance(entry, dict):
                progress = entry.get("progress")
                task.nodes[name] = NodeProgress(
                    str(entry.get("delivery", PENDING)),
                    None if progress is None else PrewarmProgress.from_dict(progress),
                )
        return task

    @classmethod
    def from_message(cls, raw: Any) -> PrewarmTask:
        if not isinstance(raw, dict):
            raise PrewarmError("a pre-warm task must be an object")
        region, origin = raw.get("region"), raw.get("origin")
        created, targets = raw.get("created_at"), raw.get("targets")
        if not isinstance(region, str) or origin not in TASK_ORIGINS:
            raise PrewarmError("a pre-warm task needs a region and an origin")
        if not isinstance(created, int | float) or not isinstance(targets, list):
            raise PrewarmError("a pre-warm task needs created_at and targets")
        order = PrewarmOrder.from_dict({k: raw.get(k) for k in ("id", "urls", "site")
                                        if raw.get(k) is not None})  # fmt: skip
        nodes = {str(n): NodeProgress() for n in targets}
        return cls(order.id, region, order.urls, origin, float(created), order.site, nodes)


class PrewarmLog:
    """Pre-warm tasks by id, in arrival order (ids are time-ordered too)."""

    def __init__(self, tasks: Iterable[PrewarmTask] = ()) -> None:
        self._tasks: dict[str, PrewarmTask] = {}
        self._owed: dict[str, dict[str, None]] = {}  # node → ids of tasks not sent to it
        for task in tasks:
            self.add(task)

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> PrewarmTask | None:
        return self._tasks.get(task_id)

    def tasks(self) -> list[PrewarmTask]:
        return list(self._tasks.values())

    def add(self, task: PrewarmTask) -> tuple[PrewarmTask, bool]:
        """The logged task of that id (True if it is new)."""
        known = self._tasks.get(task.id)
        if known is not None:
            return known, False
        self._tasks[task.id] = task
        for node, entry in task.nodes.items():
            if entry.delivery != SENT:
                self._owed.setdefault(node, {})[task.id] = None
        return task, True

    def owed(self, node: str) -> list[PrewarmTask]:
        """The tasks `node` has not been sent yet (oldest first)."""
        return [self._tasks[i] for i in self._owed.get(node, ())]

    def _sent(self, task_id: str, node: str) -> None:
        self._owed.get(node, {}).pop(task_id, None)

    def deliver(self, task_id: str, node: str, result: str) -> bool:
        """A fan-out result; "sent" is final. True if anything changed."""
        task = self._tasks.get(task_id)
        entry = None if task is None else task.nodes.get(node)
        if entry is None or entry.delivery in (SENT, result):
            return False
        entry.delivery = result
        if result == SENT:
            self._sent(task_id, node)
        return True

    def report(
        self, node: str, progress: Iterable[PrewarmProgress]
    ) -> dict[str, int]:  # fmt: skip
        """A node's reported progress; returns the new outcomes by kind (for the metric)."""
        news: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        for p in progress:
            task = self._tasks.get(p.id)
            entry = None if task is None else task.nodes.get(node)
            if entry is None:
                continue
            before = entry.progress
            for outcome in OUTCOMES:
                old = 0 if before is None else getattr(before, outcome)
                news[outcome] += max(0, getattr(p, outcome) - old)
            entry.delivery = SENT  # the node has it, whichever router sent it
            self._sent(p.id, node)
            entry.progress = p
        return news

    def urls_in_window(self, now: float, origin: TaskOrigin = "api") -> int:
        """URLs of `origin` tasks made in the last QUOTA_WINDOW_S."""
        return sum(
            len(t.urls)
            for t in self._tasks.values()
            if t.origin == origin and now - t.created_at <= QUOTA_WINDOW_S
        )

    def prune(self, now: float) -> int:
        """Forget tasks older than a day; then the oldest popularity tasks past
        MAX_POPULARITY_TASKS (a flapping node makes them fast: they must not push the API
        tasks that the daily quota counts out of the log, nor grow the state file); then
        the oldest of any past MAX_TASKS."""
        gone = {i for i, t in self._tasks.items() if now - t.created_at > PREWARM_RETENTION_S}
        popular = [i for i, t in self._tasks.items() if t.origin == "popularity" and i not in gone]
        gone.update(popular[: max(0, len(popular) - MAX_POPULARITY_TASKS)])
        excess = len(self._tasks) - len(gone) - MAX_TASKS
        if excess > 0:
            gone.update([i for i in self._tasks if i not in gone][:excess])
        for task_id in gone:
            for node in self._tasks.pop(task_id).nodes:
                self._sent(task_id, node)
        return len(gone)


def quota_refusal(log: PrewarmLog, urls: int, limits: PrewarmLimits, now: float) -> str | None:
    """Why an API task of `urls` URLs is over a quota, or None if it fits."""
    if urls > limits.max_urls_per_task:
        return f"{urls} URLs: over the quota of {limits.max_urls_per_task} per task"
    used = log.urls_in_window(now)
    if used + urls > limits.max_urls_per_day:
        return (f"{urls} URLs: over the quota of {limits.max_urls_per_day} per day "
                f"({used} used in the last 24 h)")  # fmt: skip
    return None


@dataclass(frozen=True, slots=True)
class Change:
    """A region's answers changed: pre-warm `targets` with the region's hot set."""

    region: str
    targets: tuple[str, ...]
    left: tuple[str, ...]
    joined: tuple[str, ...]


class Popularity:
    """Hot sets per node, and the changes in each region's answering nodes."""

    def __init__(self) -> None:
        self._hot: dict[
            str, tuple[str, float, tuple[HotObject, ...]]
        ] = {}  # node → (region, at, hot)
        self._answering: dict[str, frozenset[str]] = {}
        self._last_task: dict[str, float] = {}

    def note(self, node: str, region: str, hot: tuple[HotObject, ...], now: float) -> None:
        if hot:
            self._hot[node] = (region, now, hot)

    def hot_set(
        self, region: str, now: float, k: int, nodes: frozenset[str] | None = None
    ) -> tuple[str, ...]:
        """The region's top k URLs: counts summed over its nodes (or only `nodes`) heard
        lately."""
        totals: dict[str, int] = {}
        for node, (node_region, at, hot) in self._hot.items():
            if nodes is not None and node not in nodes:
                continue
            if node_region == region and now - at <= HOT_MAX_AGE_S:
                for h in hot:
                    totals[h.url] = totals.get(h.url, 0) + h.count
        ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
        return tuple(url for url, _ in ranked[:k])

    def changes(self, answering: Mapping[str, frozenset[str]]) -> list[Change]:
        """Compare each region's answering nodes with the last call's."""
        out: list[Change] = []
        for region, now_nodes in answering.items():
            before = self._answering.get(region)
            self._answering[region] = now_nodes
            if before is None or before == now_nodes:
                continue
            left, joined = before - now_nodes, now_nodes - before
            targets = now_nodes if left else joined
            if targets:
                out.append(Change(region, tuple(sorted(targets)), tuple(sorted(left)),
                                  tuple(sorted(joined))))  # fmt: skip
        return out

    def hot_set_for(self, change: Change, now: float, k: int) -> tuple[str, ...]:
        """What a change pre-warms: the leavers' hot set, else the region's."""
        if change.left:
            moving = self.hot_set(change.region, now, k, frozenset(change.left))
            if moving:
                return moving
        return self.hot_set(change.region, now, k)

    def due(self, region: str, now: float, interval_s: float) -> bool:
        """At most one popularity task per region per interval; True records one now."""
        last = self._last_task.get(region)
        if last is not None and now - last < interval_s:
            return False
        self._last_task[region] = now
        return True
