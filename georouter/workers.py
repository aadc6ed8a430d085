"""DNS worker processes: more than one core answering UDP, fed by the control plane.

Theory of operation. With `router.dns_workers` = N > 1 the main process binds the DNS
sockets as usual and keeps TCP, the control API, the prober and the fleet, but leaves UDP
to N `python -m georouter.workers` processes. Each inherits the UDP socket (one per
`router.dns_listen` address) and one end of a private socketpair, builds its own
Selector and answering pipeline (georouter/pipeline.py), and answers on one thread: a
blocking loop (`UdpShell.serve_blocking`) for one socket, an epoll loop draining each
readable socket in batches (`UdpShell.read_ready`) for several; that state is not
thread-safe. The socket is shared rather than one per worker
with SO_REUSEPORT: the kernel wakes one blocked reader per datagram, so the load spreads
evenly even over the few client flows of a benchmark or a handful of resolvers, where
SO_REUSEPORT's 4-tuple hash can put every flow on one worker (measured on two cores: two
workers on a shared socket answered ~85k ECS queries/s at 12.5 us CPU each, SO_REUSEPORT
~70k at 14.5 us, one process ~60k at 14 us).

Over the socketpair go length-prefixed pickles of the frozen dataclasses of
georouter/worker_messages.py (parent and child only, so trusted):
  main -> worker: Configure(RouterConfig, GeoIP file name) at start and on every reload,
                  then FleetUpdate(FleetSnapshot) on every fleet change; a worker answers
                  from its latest copy. Just before each Configure, main passes the GeoIP
                  database it loaded and verified over a second socketpair (SCM_RIGHTS: the
                  sealed memfd of georouter/geodb.py); the worker maps it, so every process
                  shares one copy and none repeats the verification.
  worker -> main: TallyReport, its cumulative HotPathTallies, on start (its "ready") and every
                  TALLY_INTERVAL_S; /metrics shows main's own plus the latest of each
                  worker, and a dead worker's last counts join a retired total, so
                  counters never go back (its last < TALLY_INTERVAL_S of counts are lost).

Selection counts: a worker's selector counts only its own answers since a node's report,
and learns its per-answer load r = reported_rps / live_answers from its own answers too:
with 1/N of the answers, r is N times larger, so answers_since_report x r, the load its
answers bring, stays the router's whole (the argument that lets several routers share a
fleet). No scaling is needed.

Lifecycle: a worker that exits is logged and restarted (not sooner than RESTART_DELAY_S
after its start); stop() sends SIGTERM, then SIGKILL after STOP_TIMEOUT_S; a worker whose
socketpair closes (main died) exits at once, so none is orphaned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import assert_never

from cdn.logs import setup_logging
from georouter.armour import Guard
from georouter.config import RouterConfig
from georouter.dns_server import UdpShell
from georouter.errors import GeoRouterError
from georouter.fleet import FleetSnapshot
from georouter.geo import adopt_geoip
from georouter.geodb import GeoDatabase
from georouter.metrics import RouterMetrics
from georouter.pipeline import build_answering
from georouter.query_log import QueryLog, worker_path
from georouter.responder import Responder
from georouter.selector import Selector
from georouter.tallies import HotPathTallies
from georouter.worker_messages import (
    LENGTH,
    Configure,
    FleetUpdate,
    TallyReport,
    ToWorker,
    frame,
    to_main,
    to_worker,
)

TALLY_INTERVAL_S = 0.5  # how stale a worker's counts in /metrics may be
START_TIMEOUT_S = 30.0  # for every worker's first tallies
RESTART_DELAY_S = 1.0  # a worker that keeps dying is restarted at most this often
STOP_TIMEOUT_S = 5.0  # SIGTERM, then SIGKILL
RETIRED = "retired"  # the key of dead workers' counts among the collector's others

log = logging.getLogger("georouter.workers")


# --- the main process's side ----------------------------------------------------------


@dataclass(slots=True)
class _Slot:
    index: int
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    fds: socket.socket | None = None  # passes the GeoIP memfd with each Configure
    task: asyncio.Task[None] | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class DnsWorkers:
    """Starts, feeds, watches and stops the worker processes of one router."""

    def __init__(
        self,
        count: int,
        udp: socket.socket | tuple[socket.socket, ...],
        metrics: RouterMetrics,
        geoip: GeoDatabase,
    ) -> None:
        self._udp = udp if isinstance(udp, tuple) else (udp,)  # one per router.dns_listen
        self._metrics = metrics
        self._geoip = geoip
        self._slots = [_Slot(index) for index in range(count)]
        self._config: RouterConfig | None = None
        self._snapshot: FleetSnapshot | None = None
        self._stopping = False
        metrics.hot_path.elsewhere[RETIRED] = HotPathTallies()

    @property
    def pids(self) -> list[int]:
        return [s.process.pid for s in self._slots if s.process and s.process.returncode is None]

    async def start(self, config: RouterConfig, snapshot: FleetSnapshot) -> None:
        """Start every worker; return once each has answered its first tallies."""
        self._config, self._snapshot = config, snapshot
        for slot in self._slots:
            await self._spawn(slot)
        async with asyncio.timeout(START_TIMEOUT_S):
            await asyncio.gather(*(slot.ready.wait() for slot in self._slots))

    def publish(self, snapshot: FleetSnapshot) -> None:
        self._snapshot = snapshot
        self._send(FleetUpdate(snapshot))

    def reconfigure(self, config: RouterConfig, geoip: GeoDatabase) -> None:
        """Send every worker the new config and database (main may close the old one after)."""
        self._config, self._geoip = config, geoip
        for slot in self._slots:
            self._configure(slot)

    async def stop(self) -> None:
        self._stopping = True
        for slot in self._slots:
            if slot.process is not None and slot.process.returncode is None:
                slot.process.terminate()
        for slot in self._slots:
            if slot.process is not None:
                try:
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await slot.process.wait()
                except TimeoutError:
                    slot.process.kill()
                    await slot.process.wait()
            if slot.task is not None:
                slot.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot.task
            if slot.fds is not None:
                slot.fds.close()

    def _send(self, message: ToWorker) -> None:
        data = frame(message)
        for slot in self._slots:
            if slot.writer is not None and not slot.writer.is_closing():
                slot.writer.write(data)

    def _configure(self, slot: _Slot) -> None:
        assert self._config is not None, "start() first"
        if slot.writer is None or slot.writer.is_closing() or slot.fds is None:
            return
        try:  # first the memfd (it is in the worker's queue before the message naming it)
            socket.send_fds(slot.fds, [b"g"], [self._geoip.fd])
        except OSError as exc:  # the worker is gone or stuck: _follow restarts a dead one
            log.error("event=worker_config result=failed worker=%d reason=%s", slot.index, exc)
            return
        slot.writer.write(frame(Configure(self._config, self._geoip.source)))

    async def _spawn(self, slot: _Slot) -> None:
        assert self._config is not None and self._snapshot is not None, "start() first"
        ours, theirs = socket.socketpair()
        fds_ours, fds_theirs = socket.socketpair()
        udp_fds = [udp.fileno() for udp in self._udp]
        with theirs, fds_theirs:
            slot.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "georouter.workers",
                ",".join(map(str, udp_fds)), str(theirs.fileno()), str(fds_theirs.fileno()),
                str(slot.index + 1),  # 1-based: its query log file
                pass_fds=(*udp_fds, theirs.fileno(), fds_theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        fds_ours.setblocking(False)  # one byte and a descriptor: never fills in practice
        if slot.fds is not None:
            slot.fds.close()
        slot.fds = fds_ours
        reader, slot.writer = await asyncio.open_unix_connection(sock=ours)
        self._configure(slot)
        slot.writer.write(frame(FleetUpdate(self._snapshot)))
        slot.ready.clear()
        slot.task = asyncio.create_task(self._follow(slot, reader), name=f"dns-worker-{slot.index}")
        log.info("event=worker_started worker=%d pid=%d", slot.index, slot.process.pid)

    async def _follow(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        """Take the worker's tallies until it goes away; then restart it."""
        started = time.monotonic()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                (size,) = LENGTH.unpack(await reader.readexactly(LENGTH.size))
                match to_main(await reader.readexactly(size)):
                    case TallyReport(tallies):
                        self._metrics.hot_path.elsewhere[slot.index] = tallies
                        slot.ready.set()
                    case unknown:
                        assert_never(unknown)
        assert slot.process is not None and slot.writer is not None
        slot.writer.close()
        code = await slot.process.wait()
        self._retire(slot.index)
        if self._stopping:
            return
        log.warning(
            "event=worker_exit worker=%d pid=%d code=%d", slot.index, slot.process.pid, code
        )
        await asyncio.sleep(max(0.0, started + RESTART_DELAY_S - time.monotonic()))
        if not self._stopping:
            await self._spawn(slot)

    def _retire(self, index: int) -> None:
        elsewhere = self._metrics.hot_path.elsewhere
        last = elsewhere.pop(index, None)
        if last is not None:
            elsewhere[RETIRED].add(last)


# --- the worker's side ----------------------------------------------------------------


class _Worker:
    """One worker's answering state; the control thread swaps its parts between queries."""

    def __init__(self, config: RouterConfig, geoip: GeoDatabase, index: int) -> None:
        self.tallies = HotPathTallies()
        self.selector = Selector(config.policy, config.regions, random.Random(), config.services)
        self.query_log = _query_log(config, index, self.tallies)  # its own file
        self.responder = self._answering(config, geoip)
        self.guard = Guard.of(config, self.tallies)  # kept across reloads

    def apply(self, message: ToWorker, geoip: GeoDatabase | None = None) -> None:
        """Apply one message from main; a Configure comes with the database passed before it."""
        match message:
            case FleetUpdate(snapshot):
                self.selector.update(snapshot)
            case Configure(config, source):
                self._configure(config, source, geoip)
            case unknown:
                assert_never(unknown)

    def _configure(self, config: RouterConfig, source: str, geoip: GeoDatabase | None) -> None:
        try:
            if geoip is None:
                raise GeoRouterError(f"{source}: geoip: no database passed")
            # The old database is not closed: a query may still be reading it on the
            # other thread; it is unmapped with the last reference to it.
            responder = self._answering(config, geoip)
        except GeoRouterError as exc:  # main loaded it a moment ago: keep the old one
            log.error("event=reload result=failed reason=%s", exc)
            return
        self.selector.reconfigure(config.policy, config.regions, config.services)
        self.responder = responder

    def _answering(self, config: RouterConfig, geoip: GeoDatabase) -> Responder:
        return build_answering(config, geoip, self.tallies, self.selector, self.query_log)

    def follow(self, control: socket.socket, fds: socket.socket) -> None:
        """The control thread: apply main's messages, send tallies; exit with main."""
        with contextlib.suppress(OSError):
            self._follow(control, fds)
        os._exit(0)  # main is gone, so are we (the DNS thread is blocked in a read)

    def _follow(self, control: socket.socket, fds: socket.socket) -> None:
        due = time.monotonic()
        while True:
            if time.monotonic() >= due:
                control.sendall(frame(TallyReport(self.tallies)))
                due = time.monotonic() + TALLY_INTERVAL_S
            readable, _, _ = select.select([control], [], [], max(0.0, due - time.monotonic()))
            if readable:
                message = _receive(control)
                if message is None:
                    return
                self.apply(message, _database(fds, message))


_EXITING = threading.Lock()


def _on_sigterm(worker: _Worker, exit: Callable[[int], object] = os._exit) -> threading.Thread:
    """SIGTERM. Python runs the handler on the main thread between two bytecodes, maybe
    inside Queue.put_nowait with the queue's lock held: stopping the query log there
    would wait for that lock forever. So another thread stops it, then exits."""
    thread = threading.Thread(target=_exit, args=(worker, exit), daemon=True)
    thread.start()
    return thread


def _exit(worker: _Worker, exit: Callable[[int], object]) -> None:
    """Write the queued query log lines, then go (once, however many SIGTERMs came)."""
    if not _EXITING.acquire(blocking=False):
        return
    if worker.query_log is not None:
        worker.query_log.stop()
    exit(0)


def _query_log(config: RouterConfig, index: int, tallies: HotPathTallies) -> QueryLog | None:
    """Worker `index`'s query log (its own file), started; None when the log is off or
    its file cannot be opened (said in the log: the worker answers all the same)."""
    settings = config.query_log
    if settings.path is None:
        return None
    try:
        query_log = QueryLog(settings, tallies, path=worker_path(settings.path, index))
    except OSError as exc:
        log.error("event=query_log result=failed worker=%d reason=%s", index, exc)
        return None
    query_log.start()
    return query_log


def _database(fds: socket.socket, message: ToWorker) -> GeoDatabase | None:
    """The GeoIP database main passed ahead of a Configure (None for other messages)."""
    if not isinstance(message, Configure):
        return None
    _, received, _, _ = socket.recv_fds(fds, 1, 1)
    if not received:
        return None
    try:
        return adopt_geoip(received[0], message.geoip_source)
    except GeoRouterError as exc:
        log.error("event=reload result=failed reason=%s", exc)
        return None
    finally:
        os.close(received[0])  # the mapping keeps the memory; the descriptor is not needed


def _receive(control: socket.socket) -> ToWorker | None:
    head = _read_exactly(control, LENGTH.size)
    if head is None:
        return None
    body = _read_exactly(control, LENGTH.unpack(head)[0])
    return None if body is None else to_worker(body)


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _read(shells: list[tuple[socket.socket, UdpShell]]) -> None:
    """Answer datagrams off every socket on this one thread, so the worker's guard, rate
    limiter, caches and tallies are never touched by two threads at once. One socket:
    blocking reads (the kernel wakes one worker per datagram). Several: epoll over them,
    each readable one drained in batches of UDP_BATCH (UdpShell.read_ready);
    EPOLLEXCLUSIVE wakes one of the workers waiting on a socket, not all."""
    if len(shells) == 1:
        shells[0][0].setblocking(True)
        shells[0][1].serve_blocking()
        return
    poller = select.epoll()
    ready = {}
    for udp, shell in shells:
        udp.setblocking(False)
        poller.register(udp.fileno(), select.EPOLLIN | select.EPOLLEXCLUSIVE)
        ready[udp.fileno()] = shell.read_ready
    while True:
        for fd, _ in poller.poll():
            ready[fd]()


def serve(udp_fds: list[int], control_fd: int, fds_fd: int, index: int) -> None:
    """A worker's life: answer UDP until SIGTERM or until main goes away, reading every
    socket (one per router.dns_listen address) on this thread (`_read`)."""
    # Terminal signals reach the whole process group; main decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    setup_logging()
    control = socket.socket(fileno=control_fd)
    fds = socket.socket(fileno=fds_fd)
    first = _receive(control)
    if not isinstance(first, Configure):
        return
    geoip = _database(fds, first)
    if geoip is None:
        sys.exit(2)
    worker = _Worker(first.config, geoip, index)
    signal.signal(signal.SIGTERM, lambda signum, frame: _on_sigterm(worker))
    udps = [socket.socket(fileno=fd) for fd in udp_fds]
    shells = [(udp, UdpShell(udp, worker, worker.tallies)) for udp in udps]
    threading.Thread(target=worker.follow, args=(control, fds), daemon=True).start()
    _read(shells)


if __name__ == "__main__":
    fds = [int(fd) for fd in sys.argv[1].split(",")]
    serve(fds, int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
