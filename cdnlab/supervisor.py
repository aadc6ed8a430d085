"""The one process supervisor of the demo, the end-to-end tests and the benchmarks.

Start child processes, wait until they listen, and stop every one of them by PID.

A child is ready when it writes its `event=listening key=value ...` line on stderr (the
router, the edges and the demo origin all do), or, for a program that writes none (the
benchmarks' peers), when the caller's probe says so. Until then a child that exits, or stays
silent past a deadline, fails the start with its last log lines. The supervisor stops
children layer by layer, the highest first (each child's spec names its layer: what it
depends on is lower), the children of one layer together: SIGTERM by PID, a grace period,
then SIGKILL to the child's process group, which takes its own children with it (nginx's and
the router's workers). On Linux each child also gets PR_SET_PDEATHSIG, so even a supervisor
killed with SIGKILL leaves no orphans behind.

Where a child goes (`Start`), and why the default is its own process group in the
supervisor's session. With `kernel.sched_autogroup_enabled = 1` (the default of most
distributions) every new session (setsid) is its own CPU scheduling group, and the scheduler
shares the cores between groups before it shares a group between its threads. A server in a
session of its own then gets one group's share against the load generator's group however
many threads it runs: in the benchmarks PowerDNS (four threads) lost about a third of its
queries/s that way. So a child stays in the supervisor's session, hence its autogroup, and
gets only a process group of its own: a terminal's Ctrl-C (sent to the foreground group)
reaches only the supervisor, which then stops the children in order, and the SIGKILL fallback
reaches a child's whole tree. benchmarks/processes.py reads where each process ended up.

Supervisor is asyncio (the demo and the tests run in an event loop); the benchmarks, which
block, drive the same Supervisor through `running()`, whose loop runs in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from cdn.errors import CDNError

READY_EVENT = "event=listening"
# A child has this long to log its ready line. Generous: an edge starts in about 1 s on an idle
# machine, but tests run many processes at once on two cores, where it took over 15 s.
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 8.0
LOG_TAIL_LINES = 8
PUMP_CHUNK_BYTES = 64 * 1024
LINE_START_BYTES = 1024  # of a longer line, the log keeps it all, the tail only this much
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.05  # readiness probes of children that log no ready line

Transport = Literal["tcp", "udp"]
T = TypeVar("T")


class Start(enum.Enum):
    """Where a child goes relative to the supervisor (the module docstring says why GROUP)."""

    PLAIN = "plain"  # as a shell starts a command: the supervisor's session and process group
    GROUP = "own process group"  # the supervisor's session, so its CPU autogroup, too
    SESSION = "own session"  # setsid: its own CPU autogroup; only the bias check uses it


class DemoError(CDNError):
    """A port is busy or a child failed to start (exit code 2): the demo cannot run, nor a
    test's or a benchmark's CDN."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    ready_event: str | None = READY_EVENT  # None: the caller decides when the child is ready
    layer: int = 0  # stop_all stops higher layers first: give dependents a higher layer
    start: Start = Start.GROUP


@dataclass(slots=True)
class Child:
    spec: ChildSpec
    process: asyncio.subprocess.Process
    log_path: Path
    ready: asyncio.Future[dict[str, str]]
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


def parse_logfmt(line: str) -> dict[str, str]:
    """`event=listening dns=127.0.0.1:5300` → {"event": "listening", "dns": "127.0.0.1:5300"}."""
    fields: dict[str, str] = {}
    for word in line.split():
        key, sep, value = word.partition("=")
        if sep and key:
            fields[key] = value.strip('"')
    return fields


def split_lines(
    pending: bytes, chunk: bytes, keep: int = LINE_START_BYTES
) -> tuple[list[bytes], bytes]:
    """The complete lines of `pending + chunk`, and the unfinished rest to carry over.

    The rest is cut to `keep` bytes, so a child that never ends its line cannot make the
    supervisor hold its whole output: the tail and the ready check only read a line's start.
    """
    *lines, rest = (pending + chunk).split(b"\n")
    return lines, rest[:keep]


def port_is_free(host: str, port: int, transport: Transport = "tcp") -> bool:
    """True if a server could bind host:port now (SO_REUSEADDR, as aiohttp's servers set it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM
    with socket.socket(family, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(addresses: Iterable[tuple[str, int, Transport]]) -> None:
    """Raise DemoError naming the first address a child could not listen on."""
    for host, port, transport in addresses:
        if not port_is_free(host, port, transport):
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise DemoError(f"{where}/{transport} is already in use (is another demo running?)")


def _copy(log: IO[bytes] | None, chunk: bytes) -> IO[bytes] | None:
    """Write chunk to log; None from then on if the log fails (the pipe must still drain)."""
    if log is None:
        return None
    try:
        log.write(chunk)
        log.flush()
    except OSError:
        return None
    return log


def _die_with_parent() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before fork: the child only calls it

    def set_pdeathsig() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)

    return set_pdeathsig


class Supervisor:
    """Owns the child processes of one demo or test run; writes their output under log_dir."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._preexec = _die_with_parent()

    async def start(self, spec: ChildSpec, timeout_s: float = START_TIMEOUT_S) -> dict[str, str]:
        """Start `spec` and return the fields of its ready line ({} if it has no ready event)."""
        child = await self.spawn(spec)
        if spec.ready_event is None:
            return {}
        try:
            return await asyncio.wait_for(asyncio.shield(child.ready), timeout_s)
        except TimeoutError:
            raise DemoError(self.failure(child, f"not listening after {timeout_s:g} s")) from None

    async def spawn(self, spec: ChildSpec) -> Child:
        log_path = self.log_dir / f"{spec.name}.log"
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.PIPE,
            process_group=0 if spec.start is Start.GROUP else None,
            start_new_session=spec.start is Start.SESSION,
            preexec_fn=self._preexec,
        )
        ready: asyncio.Future[dict[str, str]] = asyncio.get_running_loop().create_future()
        child = Child(spec, process, log_path, ready)
        child.pump = asyncio.create_task(self._pump(child, log))
        self.children.append(child)
        return child

    async def _pump(self, child: Child, log: IO[bytes]) -> None:
        """Copy the child's stderr to its log (a full pipe would block it); spot the ready line.

        Chunks, not `async for line`: a line over the StreamReader limit raises ValueError
        there, which would end the copy and leave the child blocked on a full pipe.
        """
        stderr = child.process.stderr
        assert stderr is not None
        pending = b""
        sink: IO[bytes] | None = log
        while chunk := await stderr.read(PUMP_CHUNK_BYTES):
            sink = _copy(sink, chunk)
            lines, pending = split_lines(pending, chunk)
            for raw in lines:
                self._take_line(child, raw)
        if pending:
            self._take_line(child, pending)
        with contextlib.suppress(OSError):  # a full disk: the flush in close fails again
            log.close()
        await child.process.wait()
        if not child.ready.done():
            failure = self.failure(child, f"exited with code {child.process.returncode}")
            child.ready.set_exception(DemoError(failure))

    def _take_line(self, child: Child, raw: bytes) -> None:
        line = raw[:LINE_START_BYTES].decode("utf-8", "replace").rstrip()
        child.tail.append(line)
        event = child.spec.ready_event
        if event and not child.ready.done() and event in line:
            child.ready.set_result(parse_logfmt(line))

    def failure(self, child: Child, what: str) -> str:
        tail = "".join(f"\n  | {line}" for line in child.tail)
        return f"{child.spec.name} (pid {child.pid}) {what}; log {child.log_path}{tail}"

    async def obituary(self, child: Child) -> str:
        """`name (pid N) exited with code C; log PATH` and its last lines, once all are logged."""
        await child.process.wait()
        if child.pump is not None:
            await child.pump
        return self.failure(child, f"exited with code {child.process.returncode}")

    def exited(self) -> list[Child]:
        """Children that have exited (on their own or killed), in start order."""
        return [c for c in self.children if c.process.returncode is not None]

    async def stop(self, child: Child, grace_s: float = STOP_GRACE_S) -> int:
        """SIGTERM, wait up to grace_s, then SIGKILL; returns the exit code."""
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), grace_s)
            except TimeoutError:
                self.kill(child)
        code = await child.process.wait()
        if child.pump is not None:
            await child.pump
        with contextlib.suppress(asyncio.CancelledError, CDNError):
            await child.ready  # retrieve it, so an unread failure is not logged at exit
        return code

    def kill(self, child: Child) -> None:
        """SIGKILL at once (a crash, as `kill -9` does it), with its process group if it has one.

        The group is signalled only while its leader is unreaped, so its ID cannot have been
        reused by then.
        """
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                if child.spec.start is Start.PLAIN:
                    child.process.kill()
                else:
                    os.killpg(child.pid, signal.SIGKILL)

    async def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every child, the highest layer first; a layer's children stop together.

        A layer is signalled once the layer above has exited, so what it still uses while
        stopping (the origin, for draining edges) is there until it is done; each layer
        gets its own grace period.
        """
        for layer in sorted({c.spec.layer for c in self.children}, reverse=True):
            group = [c for c in self.children if c.spec.layer == layer]
            await asyncio.gather(*(self.stop(c, grace_s) for c in group))

    def by_name(self, name: str) -> Child:
        """The most recently started child called `name`."""
        for child in reversed(self.children):
            if child.spec.name == name:
                return child
        raise KeyError(name)


# ---- the same supervisor for blocking callers (the benchmarks) ---------------------------


class _LoopThread:
    """One event loop in a daemon thread, started on first use, for every blocking caller."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def submit(cls, coro: Coroutine[Any, Any, T]) -> Future[T]:
        with cls._lock:
            if cls._loop is None:
                cls._loop = asyncio.new_event_loop()
                name = "cdnlab-supervisor"
                threading.Thread(target=cls._loop.run_forever, name=name, daemon=True).start()
        return asyncio.run_coroutine_threadsafe(coro, cls._loop)


def run_blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the shared supervisor loop thread and wait for its result (for
    blocking callers: the benchmarks' processes and their helpers)."""
    return _LoopThread.submit(coro).result()


class Running:
    """A child of the Supervisor, for blocking code: waited for and stopped by PID."""

    def __init__(
        self, supervisor: Supervisor, child: Child, scratch: tempfile.TemporaryDirectory[str] | None
    ) -> None:
        self.supervisor = supervisor
        self.child = child
        self._scratch = scratch  # the log directory, if it is this child's own

    @property
    def pid(self) -> int:
        return self.child.pid

    @property
    def name(self) -> str:
        return self.child.spec.name

    def alive(self) -> bool:
        return self.child.process.returncode is None

    def ready(self, timeout_s: float = START_TIMEOUT_S) -> dict[str, str]:
        """The fields of the child's ready line; DemoError if it exits or stays silent."""

        async def wait() -> dict[str, str]:
            try:
                return await asyncio.wait_for(asyncio.shield(self.child.ready), timeout_s)
            except TimeoutError:
                failure = f"not listening after {timeout_s:g} s"
                raise DemoError(self.supervisor.failure(self.child, failure)) from None

        return run_blocking(wait())

    def wait_ready(self, probe: Callable[[], bool], timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll `probe` until true; DemoError if the child exits first or after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while not probe():
            if not self.alive():
                raise DemoError(run_blocking(self.supervisor.obituary(self.child)))
            if time.monotonic() > deadline:
                failure = f"not ready after {timeout_s:g} s"
                raise DemoError(self.supervisor.failure(self.child, failure))
            time.sleep(POLL_S)

    def kill(self) -> None:
        """SIGKILL with its process group (a crash) and reap it."""

        async def kill() -> None:
            self.supervisor.kill(self.child)
            await self.supervisor.stop(self.child)

        run_blocking(kill())

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL to its group after the grace period; always reaps."""
        run_blocking(self.supervisor.stop(self.child))
        if self._scratch is not None:
            self._scratch.cleanup()


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    start: Start = Start.GROUP,
    ready_event: str | None = None,
    log_dir: Path | None = None,
) -> Running:
    """Start one child for blocking code; the caller stops it (`Running.stop`).

    Its stderr goes to `log_dir`/NAME.log (a temporary directory, removed on stop, if None).
    With `ready_event`, `Running.ready()` returns the fields of that line.
    """
    spec = ChildSpec(name, tuple(argv), ready_event=ready_event, start=start)
    scratch = None if log_dir else tempfile.TemporaryDirectory(prefix="cdnlab-")
    supervisor = Supervisor(log_dir or Path(scratch.name if scratch else "."))
    try:
        child = run_blocking(supervisor.spawn(spec))
    except BaseException:
        if scratch is not None:
            scratch.cleanup()
        raise
    return Running(supervisor, child, scratch)


@contextlib.contextmanager
def running(
    name: str,
    argv: Sequence[str],
    *,
    start: Start = Start.GROUP,
    ready_event: str | None = None,
    log_dir: Path | None = None,
) -> Iterator[Running]:
    """`spawn`, and stop the child by PID on the way out, whatever happens."""
    handle = spawn(name, argv, start=start, ready_event=ready_event, log_dir=log_dir)
    try:
        yield handle
    finally:
        handle.stop()
