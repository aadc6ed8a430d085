"""The edge's pre-warm decisions (pure: `now` is passed in, no I/O).

Theory of operation. A router's PrewarmOrder is queued whole (once per id: several
routers send the same task); its URLs are taken one at a time, oldest task first, by at
most edge.prewarm_concurrency fetchers. Pre-warming is low-priority work: a fetcher takes
a URL only while `may_fetch` says the edge is not busy (its utilization below
edge.prewarm_max_utilization), else it waits and looks again; between fetches it yields
to the event loop. The queue is bounded (MAX_QUEUED_URLS): an order that does not fit
is refused whole, and the router reports the node's task as failed.

Each fetch is a HEAD through the edge's own content port (its normal miss path: a HEAD
miss fills the cache with a GET, through the shields when the edge has parents) and
`classify` reads how it ended from the last Cache-Status member (RFC 9211 §2: each cache
appends its member, so this edge's is last): "hit" (or a 304 revalidation of a stored
copy) → cached, fwd with "stored" → fetched, anything else failed with the status
(fwd-status, the origin's own, when the origin answered).

The hot set is a Space-Saving sketch (Metwally, Agrawal, El Abbadi 2005): at most
`capacity` counters; an unseen URL takes over the smallest counter and inherits its count
(an overestimate bounded by N / capacity). Counts halve every HOT_HALF_LIFE_S, so the top
of the sketch follows the traffic of the last minutes, not of the process's life.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

from cdn.prewarm import (
    MAX_HOT,
    MAX_HOT_URL_CHARS,
    MAX_PROGRESS_ERRORS,
    MAX_PROGRESS_TASKS,
    HotObject,
    Outcome,
    PrewarmOrder,
    PrewarmProgress,
)

MAX_QUEUED_URLS = 10_000  # URLs waiting on one edge; an order that does not fit is refused
MAX_TASKS = 256  # tasks remembered (with their progress) on one edge
TASK_RETENTION_S = 24 * 3600.0  # as the router keeps them
PROGRESS_REPEAT_S = 30.0  # a task's progress rides on every report this long after it changed
HOT_CAPACITY = 4 * MAX_HOT  # Space-Saving counters (the top MAX_HOT of them are reported)
HOT_HALF_LIFE_S = 60.0

_FWD_STATUS = re.compile(r";\s*fwd-status=(\d{3})")
_PLAIN = re.compile(r"[!#-\[\]-~]+")  # printable ASCII but '"' and '\\' (JSON escapes them)


@dataclass(frozen=True, slots=True)
class Job:
    task: str
    index: int
    url: str
    site: str | None


def classify(status: int, cache_status: str | None) -> tuple[Outcome, int]:
    """(outcome, status) of a pre-warm fetch from its status and Cache-Status field."""
    member = (cache_status or "").rsplit(",", 1)[-1].strip()
    params = [p.strip() for p in member.split(";")[1:]]
    if status < 400 and "hit" in params:
        return "cached", status
    match = _FWD_STATUS.search(member)
    origin = int(match.group(1)) if match else status
    if status < 300 and "stored" in params:
        return "fetched", origin
    if status < 300 and origin == 304:  # a stored copy, revalidated (RFC 9111 §4.3.4)
        return "cached", status
    return "failed", origin if origin >= 300 else status


def may_fetch(utilization: float, max_utilization: float) -> bool:
    """Whether pre-warm work may go on now: the edge's real clients come first."""
    return utilization < max_utilization


@dataclass(slots=True)
class _Task:
    order: PrewarmOrder
    received: float
    changed: float
    next_index: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[int, int]] = field(default_factory=list)
    running: int = 0

    @property
    def queued(self) -> int:
        return len(self.order.urls) - self.next_index + self.running

    def progress(self) -> PrewarmProgress:
        c = self.counts
        return PrewarmProgress(
            self.order.id,
            fetched=c.get("fetched", 0),
            cached=c.get("cached", 0),
            failed=c.get("failed", 0),
            queued=self.queued,
            errors=tuple(self.errors[:MAX_PROGRESS_ERRORS]),
        )


class PrewarmQueue:
    """The pre-warm tasks of one edge: what to fetch next, and how each task is doing."""

    def __init__(self, max_urls: int = MAX_QUEUED_URLS) -> None:
        self._tasks: OrderedDict[str, _Task] = OrderedDict()
        self._max_urls = max_urls

    @property
    def depth(self) -> int:
        """URLs waiting or being fetched."""
        return sum(t.queued for t in self._tasks.values())

    def admit(self, order: PrewarmOrder, now: float) -> str:
        """ "queued", "duplicate" (that id was queued before) or "full" (refused whole)."""
        self._prune(now)
        if order.id in self._tasks:
            return "duplicate"
        if self.depth + len(order.urls) > self._max_urls:
            return "full"
        self._tasks[order.id] = _Task(order, now, now)
        return "queued"

    def take(self) -> Job | None:
        """The next URL to fetch, oldest task first (None: nothing waiting)."""
        for task in self._tasks.values():
            if task.next_index < len(task.order.urls):
                index = task.next_index
                task.next_index += 1
                task.running += 1
                return Job(task.order.id, index, task.order.urls[index], task.order.site)
        return None

    def record(self, job: Job, outcome: Outcome, status: int, now: float) -> None:
        task = self._tasks.get(job.task)
        if task is None:  # pruned while it was fetched
            return
        task.running -= 1
        task.counts[outcome] = task.counts.get(outcome, 0) + 1
        if outcome == "failed":
            task.errors.append((job.index, status))
        task.changed = now

    def progress(self, now: float) -> tuple[PrewarmProgress, ...]:
        """What the next report says: tasks that changed lately, the latest first."""
        recent = [t for t in self._tasks.values() if now - t.changed <= PROGRESS_REPEAT_S]
        recent.sort(key=lambda t: t.changed, reverse=True)
        return tuple(t.progress() for t in recent[:MAX_PROGRESS_TASKS])

    def get(self, task_id: str) -> PrewarmProgress | None:
        task = self._tasks.get(task_id)
        return None if task is None else task.progress()

    def _prune(self, now: float) -> None:
        while self._tasks:
            oldest = next(iter(self._tasks.values()))
            if len(self._tasks) < MAX_TASKS and now - oldest.received <= TASK_RETENTION_S:
                return
            if oldest.queued:  # never forget work in progress; the queue bound holds
                return
            self._tasks.popitem(last=False)


class HotSet:
    """The most requested URLs lately, counted in bounded memory (Space-Saving)."""

    def __init__(self, now: float, capacity: int = HOT_CAPACITY) -> None:
        self._counts: dict[str, float] = {}
        self._capacity = capacity
        self._decayed_at = now
        self._floor = 0.0  # the smallest count at the last scan
        self._floor_urls: list[str] = []  # the URLs that had it (some may have moved on)

    def __len__(self) -> int:
        return len(self._counts)

    def add(self, url: str, now: float) -> None:
        """Count one request; URLs that are long or would grow in JSON are not counted
        (each reported URL must cost one byte per character: the report is bounded)."""
        # Called for every GET hit and miss: a URL already counted was checked when it
        # came in, so the common case is one dict lookup and one store.
        if now - self._decayed_at >= HOT_HALF_LIFE_S:
            self._decay(now)
        counts = self._counts
        count = counts.get(url)
        if count is not None:
            counts[url] = count + 1.0
            return
        if len(url) > MAX_HOT_URL_CHARS or not _PLAIN.fullmatch(url):
            return
        if len(counts) < self._capacity:
            counts[url] = 1.0
        else:  # the new URL takes over the smallest counter
            smallest = self._smallest()
            counts[url] = counts.pop(smallest) + 1.0

    def _smallest(self) -> str:
        """A URL with the smallest count. One O(capacity) scan notes every URL at the
        floor; each takeover uses one of them (the new URL counts floor + 1, counts only
        grow between decays), so a long tail of unseen URLs costs O(1) amortised."""
        counts = self._counts
        while self._floor_urls:
            url = self._floor_urls.pop()
            if counts.get(url) == self._floor:
                return url
        self._floor = min(counts.values())
        self._floor_urls = [u for u, n in counts.items() if n == self._floor]
        return self._floor_urls.pop()

    def top(self, now: float, k: int = MAX_HOT) -> tuple[HotObject, ...]:
        self._decay(now)
        ranked = sorted(self._counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
        return tuple(HotObject(url, max(1, round(n))) for url, n in ranked if n >= 0.5)

    def _decay(self, now: float) -> None:
        halvings = int((now - self._decayed_at) // HOT_HALF_LIFE_S)
        if halvings <= 0:
            return
        self._decayed_at += halvings * HOT_HALF_LIFE_S
        factor = 0.5 ** min(halvings, 64)
        self._counts = {u: n * factor for u, n in self._counts.items() if n * factor >= 0.5}
        self._floor_urls = []  # counts changed: the next takeover scans again
