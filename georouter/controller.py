"""The fleet's control state on one router: drains, weights and purges, kept and shared.

Theory of operation. The state lives in three places, in this order of authority:
the bus (NATS JetStream, when [bus] servers is set: what every router shares), this
router's state file (its last known copy; the whole state without a bus) and memory
(what the fleet and the selector use). At start the file is read and applied before DNS
opens; with a bus, the router then waits up to BUS_START_WAIT_S for a first full read of
it. An operator's drain or weight goes to the bus first (refused with 503 while the bus
is away, so routers never disagree), then to memory and the file; other routers hear it
from their watch. A purge is logged and saved, published (kept in an outbox while the bus
is away) and fanned out by this router at once; the others hear it from the stream and
fan it out too (edges apply each id once). Nodes the fan-out did not reach get it on the
reply to their next load report, until their report acknowledges it. A pre-warm task
takes the same way (log, file, stream, fan-out by every router to the task's targets;
georouter/prewarm.py); its progress comes back in the edges' reports, which every router
hears, and a change in a region's answering nodes makes a popularity task. A new purge and
node results are written to the file by a flusher (every FLUSH_INTERVAL_S while there is
news), off the event loop, so a purge's fan-out never waits for a disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

import aiohttp

from cdn.prewarm import PREWARM_PATH
from cdn.purge import Purge, PurgeError, new_purge_id
from cdn.report import MAX_REPLY_PURGES, LoadReport
from georouter.bus import Bus, BusUnavailable, Overrides
from georouter.config import Node, RouterConfig
from georouter.credentials import Credentials
from georouter.fanout import fan_out, post_all
from georouter.fleet import FAMILIES, Fleet, FleetSnapshot, Pool
from georouter.metrics import RouterMetrics
from georouter.prewarm import (
    SENT,
    NodeProgress,
    Popularity,
    PrewarmLog,
    PrewarmTask,
    TaskOrigin,
    popularity_task_id,
    quota_refusal,
)
from georouter.purge import DONE, PurgeLog, PurgeRecord
from georouter.state import ControlState, StateFile

BUS_START_WAIT_S = 2.0  # a starting router waits this long for the shared state
FLUSH_INTERVAL_S = 0.25
PROGRESS_FLUSH_S = 5.0
PRUNE_INTERVAL_S = 60.0
PREWARM_RESEND_S = 5.0  # how often a reporting node that was not sent a pre-warm task is sent it

log = logging.getLogger("georouter.control")
_EMPTY = Pool((), (), False, (), ())

__all__ = ["BusUnavailable", "Controller", "PrewarmRefused"]


class PrewarmRefused(Exception):
    """A pre-warm request the router will not take: `status` 400 (bad) or 429 (quota)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


class Controller:
    """Owns the purge log and the overrides; start() before DNS opens, stop() at the end."""

    def __init__(
        self,
        *,
        config: RouterConfig,
        fleet: Fleet,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._fleet = fleet
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._file = StateFile(config.state_dir)
        state = self._file.load()
        log.info("event=state file=%s drained=%d weights=%d purges=%d", self._file.path,
                 len(state.drained), len(state.weights), len(state.purges))  # fmt: skip
        self.drained, self.weights = state.drained, dict(state.weights)
        self.log = PurgeLog(state.purges)
        self.prewarms = PrewarmLog(state.prewarms)
        self.popularity = Popularity()
        self._stream_seq = state.stream_seq
        fleet.apply_overrides(self.drained, self.weights)
        self._bus: Bus | None = None
        if config.bus.servers:
            self._bus = Bus(
                servers=config.bus.servers,
                replicas=config.bus.replicas,
                metrics=metrics,
                on_overrides=self._adopt_overrides,
                on_purge=self._adopt_purge,
                start_seq=lambda: self._stream_seq,
                on_prewarm=self._adopt_prewarm,
            )
        else:
            metrics.bus_connected.set(1)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._resent: dict[str, float] = {}  # node → when its owed pre-warm tasks were resent
        self._dirty = False
        self._progressed = False  # pre-warm progress to save (less urgent than _dirty)
        self._save_lock = asyncio.Lock()

    def targets(self) -> dict[str, str]:
        """The nodes a purge goes to (name → control URL): every node of the topology."""
        return {node.name: node.control_url for node in self.config.nodes}

    def reconfigure(self, config: RouterConfig) -> None:
        self.config = config
        self._fleet.apply_overrides(self.drained, self.weights)

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._spawn(self._flusher(), "state-flusher")
        if self._bus is not None:
            self._spawn(self._bus.run(), "bus")
            if not await self._bus.wait_synced(BUS_START_WAIT_S):
                log.warning("event=bus_start_without_sync state=state_file")

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(OSError):
            await self._save()

    # --- operators' overrides ------------------------------------------------------------

    async def set_drained(self, name: str, drained: bool) -> None:
        """Drain or undrain (BusUnavailable with a bus that is away)."""
        if self._bus is not None:
            await self._bus.put_drain(name, drained)
        self.drained = self.drained | {name} if drained else self.drained - {name}
        self._fleet.apply_overrides(self.drained, self.weights)
        await self._save()

    async def set_weight(self, name: str, weight: float) -> None:
        if self._bus is not None:
            await self._bus.put_weight(name, weight)
        if weight == 1.0:
            self.weights.pop(name, None)
        else:
            self.weights[name] = weight
        self._fleet.apply_overrides(self.drained, self.weights)
        await self._save()

    async def _adopt_overrides(self, overrides: Overrides) -> None:
        if (overrides.drained, overrides.weights) == (self.drained, self.weights):
            return
        self.drained, self.weights = overrides.drained, dict(overrides.weights)
        self._fleet.apply_overrides(self.drained, self.weights)
        log.info("event=overrides_adopted drained=%d weights=%d", len(self.drained),
                 len(self.weights))  # fmt: skip
        await self._save()

    # --- purges ----------------------------------------------------------------------------

    async def purge(self, request: Purge) -> PurgeRecord:
        """Log, save, publish and fan out a new purge; returns once the fan-out settled."""
        now = self._clock()
        purge = request.with_id(new_purge_id(now, self._rng))
        record, _ = self.log.add(purge, self.targets(), now)
        self._dirty = True  # saved by the flusher, while the fan-out runs
        if self._bus is not None:  # in parallel: the fan-out never waits on the bus
            self._spawn(self._bus.publish(purge, now), f"publish-{purge.id}")
        await self._fan_out(record)
        return record

    async def _adopt_purge(self, purge: Purge, created_at: float, seq: int) -> None:
        record, created = self.log.add(purge, self.targets(), created_at)
        self._stream_seq = max(self._stream_seq, seq)
        self._dirty = True
        if created:
            log.info("event=purge_heard id=%s", purge.id)
            self._spawn(self._fan_out(record), f"fan-out-{purge.id}")

    async def _fan_out(self, record: PurgeRecord) -> None:
        assert self._session is not None
        owed = {n: url for n, url in self.targets().items() if record.nodes.get(n) != DONE}
        started = time.monotonic()
        results = await fan_out(
            self._session,
            purge=record.purge,
            nodes=owed,
            token=Credentials.of(self.config).node_token,
            deadline_s=self.config.router.fanout_timeout_s,
            settle=lambda node, result: self._settle(record.purge.id, node, result),
        )
        elapsed = time.monotonic() - started
        self._metrics.fanout_duration.observe(elapsed)
        for node, result in results.items():
            self.log.settle(record.purge.id, node, result)
        complete = record.complete
        self._metrics.purges.labels("complete" if complete else "incomplete").inc()
        log.info("event=purge id=%s %s nodes=%d done=%d fanout_ms=%.1f", record.purge.id,
                 f"{record.purge.kind}={record.purge.value!r}", len(record.nodes),
                 sum(r == DONE for r in record.nodes.values()), elapsed * 1000)  # fmt: skip
        self._dirty = True

    def _settle(self, purge_id: str, node: str, result: str) -> None:
        if self.log.settle(purge_id, node, result):
            self._dirty = True

    def on_report(self, node: str, acks: Iterable[str]) -> tuple[Purge, ...]:
        """Note a report's acks; the purges the node still owes (the reply carries them)."""
        if self.log.ack(node, acks):
            self._dirty = True
        return self.log.owed(node, MAX_REPLY_PURGES)

    # --- pre-warming ----------------------------------------------------------------------

    def edges_of(self, region: str) -> tuple[Node, ...]:
        """The region's edges: role "edge" (shields fill through their children)."""
        return tuple(n for n in self.config.nodes if n.region == region and n.role == "edge")

    async def prewarm(self, region: str, urls: tuple[str, ...], site: str | None) -> PrewarmTask:
        """An operator's task to the region's edges (PrewarmRefused if bad or over quota)."""
        if region not in self.config.regions_by_name:
            known = ", ".join(r.name for r in self.config.regions)
            raise PrewarmRefused(400, f"region: unknown region {region!r} (known: {known})")
        limits = self.config.prewarm
        refusal = quota_refusal(self.prewarms, len(urls), limits, self._clock())
        if refusal is not None:
            status = 400 if len(urls) > limits.max_urls_per_task else 429
            raise PrewarmRefused(status, refusal)
        targets = tuple(n.name for n in self.edges_of(region))
        if not targets:
            raise PrewarmRefused(400, f"region: {region!r} has no edges")
        return await self._new_prewarm(region, urls, site, "api", targets)

    async def _new_prewarm(
        self,
        region: str,
        urls: tuple[str, ...],
        site: str | None,
        origin: TaskOrigin,
        targets: tuple[str, ...],
    ) -> PrewarmTask:
        now = self._clock()
        if origin == "popularity":  # every router makes it: one id for all of them
            interval_s = self.config.prewarm.popularity_interval_s
            task_id = popularity_task_id(region, targets, now, interval_s)
        else:
            task_id = new_purge_id(now, self._rng)
        task = PrewarmTask(
            task_id, region, urls, origin, now, site, {name: NodeProgress() for name in targets}
        )
        task, created = self.prewarms.add(task)
        if not created:  # another router's, heard on the bus: sent already
            return task
        self._dirty = True
        self._metrics.prewarm_tasks.labels(origin).inc()
        log.info("event=prewarm id=%s origin=%s region=%s urls=%d nodes=%s", task.id, origin,
                 region, len(urls), ",".join(targets) or "-")  # fmt: skip
        if self._bus is not None:
            self._spawn(self._bus.publish_prewarm(task.id, task.to_message()), f"pub-{task.id}")
        await self._send_prewarm(task)
        return task

    async def _adopt_prewarm(self, raw: dict[str, Any], seq: int) -> None:
        self._stream_seq = max(self._stream_seq, seq)
        self._dirty = True
        try:
            task = PrewarmTask.from_message(raw)
        except PurgeError as exc:  # PrewarmError, or url_host's PurgeError for a bad URL
            log.warning("event=bus_bad_prewarm error=%r", str(exc))
            return
        task, created = self.prewarms.add(task)
        if created:
            log.info("event=prewarm_heard id=%s", task.id)
            self._spawn(self._send_prewarm(task), f"prewarm-{task.id}")

    async def _send_prewarm(self, task: PrewarmTask, only: str | None = None) -> None:
        """Send `task` to its nodes that do not have it yet (with `only`, to that one)."""
        assert self._session is not None
        urls = {n.name: n.control_url for n in self.config.nodes}
        owed = {
            n: urls[n]
            for n, p in task.nodes.items()
            if p.delivery != SENT and n in urls and only in (None, n)
        }
        results = await post_all(
            self._session, path=PREWARM_PATH, body=task.order.to_dict(), nodes=owed,
            token=Credentials.of(self.config).node_token,
            deadline_s=self.config.router.fanout_timeout_s,
            settle=lambda node, result: self._delivered(task.id, node, result), done=SENT,
        )  # fmt: skip
        for node, result in results.items():
            self.prewarms.deliver(task.id, node, result)
        self._progressed = True

    def _delivered(self, task_id: str, node: str, result: str) -> None:
        if self.prewarms.deliver(task_id, node, result):
            self._progressed = True

    def on_prewarm_report(self, report: LoadReport, node: Node) -> None:
        """Note a report's pre-warm progress and, from an edge, its hot set (a shield's is
        its children's misses from every region, not its region's popularity)."""
        if report.prewarm:
            news = self.prewarms.report(report.node, report.prewarm)
            for outcome, n in news.items():
                if n:
                    self._metrics.prewarm_urls.labels(outcome).inc(n)
                    self._progressed = True
        if node.role == "edge":
            self.popularity.note(report.node, node.region, report.hot, time.monotonic())
        self._resend_owed(report.node)

    def _resend_owed(self, node: str) -> None:
        """A node that reports is reachable: send it the pre-warm tasks it was not sent (it
        was unreachable when they were made), at most every PREWARM_RESEND_S. The edge
        keeps a task once, by id, so a task that reached it meanwhile costs nothing."""
        now = time.monotonic()
        if now - self._resent.get(node, -PREWARM_RESEND_S) < PREWARM_RESEND_S:
            return
        owed = self.prewarms.owed(node)
        if owed:
            self._resent[node] = now
            self._spawn(self._send_owed(node, owed), f"prewarm-owed-{node}")

    async def _send_owed(self, node: str, tasks: list[PrewarmTask]) -> None:
        for task in tasks:
            await self._send_prewarm(task, only=node)

    def on_snapshot(self, snapshot: FleetSnapshot) -> None:
        """A new fleet snapshot: pre-warm the nodes that now take a region's clients."""
        limits = self.config.prewarm
        if not limits.popularity:
            return
        now = time.monotonic()
        for change in self.popularity.changes(answering(snapshot, self.config)):
            urls = self.popularity.hot_set_for(change, now, limits.popularity_top_k)
            if not urls or not self.popularity.due(
                change.region, now, limits.popularity_interval_s
            ):
                continue
            log.info("event=prewarm_popularity region=%s left=%s joined=%s", change.region,
                     ",".join(change.left) or "-", ",".join(change.joined) or "-")  # fmt: skip
            self._spawn(
                _discard(
                    self._new_prewarm(change.region, urls, None, "popularity", change.targets)
                ),
                f"popularity-{change.region}",
            )

    def refresh_gauges(self) -> None:
        for node, count in self.log.owed_counts(self.targets()).items():
            self._metrics.purges_owed.labels(node).set(count)

    # --- the state file ----------------------------------------------------------------------

    async def _flusher(self) -> None:
        last_prune = last_save = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH_INTERVAL_S)
            now = time.monotonic()
            if now - last_prune > PRUNE_INTERVAL_S:
                last_prune = now
                self._dirty |= self.log.prune(self._clock()) > 0
                self._dirty |= self.prewarms.prune(self._clock()) > 0
            # Pre-warm progress changes with every report while tasks run: it is saved at
            # most every PROGRESS_FLUSH_S, since the file is serialised on the event loop.
            if self._dirty or (self._progressed and now - last_save >= PROGRESS_FLUSH_S):
                last_save = now
                try:
                    await self._save()
                except OSError as exc:
                    log.error("event=state_save_failed file=%s error=%r", self._file.path, str(exc))

    async def _save(self) -> None:
        self._dirty = self._progressed = False
        state = ControlState(
            drained=self.drained,
            weights=dict(self.weights),
            purges=tuple(self.log.records()),
            stream_seq=self._stream_seq,
            prewarms=tuple(self.prewarms.tasks()),
        )
        body = state.to_json()  # serialised here: the records keep changing on the loop
        async with self._save_lock:
            await asyncio.to_thread(self._file.write, body)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def answering(snapshot: FleetSnapshot, config: RouterConfig) -> dict[str, frozenset[str]]:
    """Region → the nodes that take its clients now: its own eligible nodes, else those
    of the first failover region that has some (as the selector spills)."""

    def eligible(region: str) -> frozenset[str]:
        return frozenset(
            c.node.name
            for family in FAMILIES
            for c in snapshot.pools[family].get(region, _EMPTY).eligible
        )

    out: dict[str, frozenset[str]] = {}
    for region in config.regions:
        nodes = eligible(region.name)
        for other in region.failover:
            if nodes:
                break
            nodes = eligible(other)
        out[region.name] = nodes
    return out


async def _discard(coro: Coroutine[Any, Any, Any]) -> None:
    await coro
