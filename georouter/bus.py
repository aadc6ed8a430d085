"""Shared control state between routers on NATS JetStream ([bus] servers).

Theory of operation. Two JetStream objects, created by whichever router comes first:

* the key-value bucket BUCKET holds the operators' overrides, one key per node and kind
  (`drain.<node>` = "1" | "0", `weight.<node>` = a number); each router watches it and
  hands the whole map to `on_overrides` at every change;
* the stream STREAM (subjects STREAM_SUBJECTS, kept PURGE_MAX_AGE_S) holds every purge
  (SUBJECT) and every pre-warm task (PREWARM_SUBJECT), each published with its id as
  Nats-Msg-Id (JetStream drops a duplicate within its window); each router reads it with
  one ordered consumer from the sequence after the last one it applied and hands each
  purge to `on_purge` and each task to `on_prewarm`, which fan it out once per id. (A
  stream made before pre-warm tasks existed has only SUBJECT: it is widened in place.)

One session = connect, create or bind both, read the whole bucket, replay the stream,
then follow both. Any error or disconnect ends the session: the router is then
"disconnected" (`georouter_bus_connected` 0, one log line) and keeps answering with its
last state, while a new session is tried every RETRY_S; the new one starts with a full
read of the bucket and a replay from the last applied sequence, which is the catch-up.
Writes of overrides need the bus (BusUnavailable otherwise: every router keeps one
view); a purge published while it is away waits in an outbox, sent on the next session.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from cdn.purge import Purge
from georouter.metrics import RouterMetrics
from georouter.state import valid_weight

BUCKET = "georouter_control"
STREAM = "GEOROUTER_PURGES"
SUBJECT = "georouter.purges"
PREWARM_SUBJECT = "georouter.prewarm"
STREAM_SUBJECTS = "georouter.*"  # both of the above, read by one consumer in stream order
PURGE_MAX_AGE_S = 24 * 3600.0
CONNECT_TIMEOUT_S = 1.0
REQUEST_TIMEOUT_S = 2.0  # one JetStream API call or publish acknowledgement
RETRY_S = 0.5  # between sessions: catch-up starts within this of the bus returning
PING_INTERVAL_S = 1.0  # a silent server is noticed after MAX_PINGS_OUT missed pings
MAX_PINGS_OUT = 2
HEALTH_INTERVAL_S = 1.0  # consumers checked and the outbox retried this often

log = logging.getLogger("georouter.bus")
# nats-py logs each failed connect with a traceback; our one bus_unavailable line says it.
logging.getLogger("nats").setLevel(logging.CRITICAL)


class BusUnavailable(Exception):
    """The bus cannot take a write now."""


@dataclass(frozen=True, slots=True)
class Overrides:
    drained: frozenset[str]
    weights: Mapping[str, float]


OnOverrides = Callable[[Overrides], Awaitable[None]]
OnPurge = Callable[[Purge, float, int], Awaitable[None]]  # purge, created_at, stream seq
OnPrewarm = Callable[[dict[str, Any], int], Awaitable[None]]  # task message, stream seq


async def _ignore_prewarm(raw: dict[str, Any], seq: int) -> None:
    return None


class Bus:
    """One router's link to the shared state; run() until cancelled."""

    def __init__(
        self,
        *,
        servers: tuple[str, ...],
        replicas: int,
        metrics: RouterMetrics,
        on_overrides: OnOverrides,
        on_purge: OnPurge,
        start_seq: Callable[[], int],
        on_prewarm: OnPrewarm = _ignore_prewarm,
    ) -> None:
        self._on_prewarm = on_prewarm
        self._servers = list(servers)
        self._replicas = replicas
        self._metrics = metrics
        self._on_overrides = on_overrides
        self._on_purge = on_purge
        self._start_seq = start_seq
        self._kv: KeyValue | None = None
        self._js: JetStreamContext | None = None
        self._outbox: dict[str, tuple[str, bytes]] = {}  # id → (subject, body)
        self._synced = asyncio.Event()
        self._lost: asyncio.Event = asyncio.Event()
        metrics.bus_connected.set(0)

    @property
    def connected(self) -> bool:
        return self._synced.is_set()

    async def wait_synced(self, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._synced.wait()
        return self._synced.is_set()

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
                error = "closed"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure ends the session; the next one catches up
                error = " ".join(str(exc).split()) or type(exc).__name__
            was_synced = self._synced.is_set()
            self._synced.clear()
            self._kv = self._js = None
            self._metrics.bus_connected.set(0)
            if was_synced or failures == 0:
                self._metrics.bus_disconnects.inc()
                log.warning("event=bus_unavailable error=%r state=last_known", error)
            failures += 1
            await asyncio.sleep(RETRY_S)

    async def put_drain(self, node: str, drained: bool) -> None:
        await self._put(f"drain.{node}", b"1" if drained else b"0")

    async def put_weight(self, node: str, weight: float) -> None:
        await self._put(f"weight.{node}", repr(weight).encode())

    async def publish(self, purge: Purge, created_at: float) -> None:
        """Publish a purge now, or keep it for the next session."""
        body = json.dumps({**purge.to_dict(), "created_at": created_at}).encode()
        await self._send(purge.id, SUBJECT, body)

    async def publish_prewarm(self, task_id: str, message: dict[str, Any]) -> None:
        """Publish a pre-warm task now, or keep it for the next session."""
        await self._send(task_id, PREWARM_SUBJECT, json.dumps(message).encode())

    async def _send(self, msg_id: str, subject: str, body: bytes) -> None:
        self._outbox[msg_id] = (subject, body)
        if self._js is not None:
            with contextlib.suppress(Exception):  # kept in the outbox; the session retries
                await self._flush_outbox(self._js)

    async def _put(self, key: str, value: bytes) -> None:
        kv = self._kv
        if kv is None or not self._synced.is_set():
            raise BusUnavailable("the bus is unreachable")
        try:
            await kv.put(key, value)
        except Exception as exc:
            raise BusUnavailable(str(exc) or type(exc).__name__) from None

    async def _session(self) -> None:
        lost = asyncio.Event()

        async def closed() -> None:
            lost.set()

        async def error(exc: Exception) -> None:
            log.debug("event=bus_error error=%r", str(exc))

        nc: Client = await nats.connect(
            servers=self._servers,
            allow_reconnect=False,
            connect_timeout=CONNECT_TIMEOUT_S,
            ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=MAX_PINGS_OUT,
            disconnected_cb=closed,
            closed_cb=closed,
            error_cb=error,
            name="georouter",
        )
        try:
            js = nc.jetstream(timeout=REQUEST_TIMEOUT_S)
            kv = await self._bucket(js)
            await self._stream(js)
            watcher = await kv.watchall()
            values: dict[str, bytes] = {}
            async for entry in watcher:
                if entry is None:  # the initial values are all in
                    break
                _note(values, entry.key, entry.value, entry.operation)
            await self._on_overrides(_overrides(values))
            sub = await self._follow_stream(js)
            await self._flush_outbox(js)
            self._kv, self._js = kv, js
            self._synced.set()
            self._metrics.bus_connected.set(1)
            log.info(
                "event=bus_connected server=%s",
                nc.connected_url.netloc if nc.connected_url else "?",
            )
            while not lost.is_set():
                try:
                    update = await watcher.updates(timeout=HEALTH_INTERVAL_S)  # type: ignore[no-untyped-call]
                except nats.errors.TimeoutError:
                    await self._check(js, watcher, sub)
                    continue
                if update is not None:
                    _note(values, update.key, update.value, update.operation)
                    await self._on_overrides(_overrides(values))
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _check(self, js: JetStreamContext, watcher: Any, sub: Any) -> None:
        """Both consumers still exist (a dead server takes its consumers along), and the
        outbox goes out; an error here ends the session, and the next one resyncs."""
        await sub.consumer_info()
        await watcher._sub.consumer_info()
        await self._flush_outbox(js)

    async def _bucket(self, js: JetStreamContext) -> KeyValue:
        try:
            return await js.key_value(BUCKET)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(bucket=BUCKET, history=1, replicas=self._replicas)

    async def _stream(self, js: JetStreamContext) -> None:
        try:
            info = await js.stream_info(STREAM)
        except nats.js.errors.NotFoundError:
            await js.add_stream(
                name=STREAM,
                subjects=[STREAM_SUBJECTS],
                max_age=PURGE_MAX_AGE_S,
                num_replicas=self._replicas,
                storage=api.StorageType.FILE,
            )
            return
        if info.config.subjects != [STREAM_SUBJECTS]:  # made before pre-warm tasks: widen it
            await js.update_stream(replace(info.config, subjects=[STREAM_SUBJECTS]))

    async def _follow_stream(self, js: JetStreamContext) -> Any:
        info = await js.stream_info(STREAM)
        start = self._start_seq() + 1
        if start > info.state.last_seq + 1:  # the stream was recreated: replay it all
            start = 1

        async def deliver(msg: Any) -> None:
            seq = msg.metadata.sequence.stream
            if msg.subject == PREWARM_SUBJECT:
                try:
                    raw = json.loads(msg.data)
                except ValueError:
                    log.warning("event=bus_bad_prewarm")
                    return
                if isinstance(raw, dict):
                    await self._on_prewarm(raw, seq)
                return
            if msg.subject != SUBJECT:
                return
            try:
                raw = json.loads(msg.data)
                purge = Purge.from_dict({k: v for k, v in raw.items() if k != "created_at"},
                                        need_id=True)  # fmt: skip
                created = float(raw["created_at"])
            except Exception as exc:  # a foreign message on our subject: skip it
                log.warning("event=bus_bad_purge error=%r", str(exc))
                return
            await self._on_purge(purge, created, seq)

        config = api.ConsumerConfig(
            deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
        )
        return await js.subscribe(
            STREAM_SUBJECTS,
            stream=STREAM,
            cb=deliver,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=HEALTH_INTERVAL_S,
        )

    async def _flush_outbox(self, js: JetStreamContext) -> None:
        for msg_id, (subject, body) in list(self._outbox.items()):
            await js.publish(subject, body, stream=STREAM, headers={"Nats-Msg-Id": msg_id})
            self._outbox.pop(msg_id, None)


def _note(values: dict[str, bytes], key: str, value: bytes | None, operation: Any) -> None:
    if operation in ("DEL", "PURGE") or value is None:
        values.pop(key, None)
    else:
        values[key] = value


def _overrides(values: Mapping[str, bytes]) -> Overrides:
    drained: set[str] = set()
    weights: dict[str, float] = {}
    for key, value in values.items():
        kind, _, node = key.partition(".")
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            if kind == "drain" and value == b"1":
                drained.add(node)
            elif kind == "weight":
                weight = valid_weight(float(value.decode()))
                if weight != 1.0:
                    weights[node] = weight
    return Overrides(frozenset(drained), weights)
