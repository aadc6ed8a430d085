"""Start child processes, wait until they listen, and stop every one of them by PID.

A child is ready when it writes its `event=listening key=value ...` line on stderr (the
router, the edges and the demo origin all do). Until then a child that exits, or stays
silent past a deadline, fails the start with its last log lines. Children run in their own
session, so a terminal's Ctrl-C reaches only the supervisor, which then stops them layer by
layer, the highest first (each child's spec names its layer: what it depends on is lower),
the children of one layer together: SIGTERM, a grace period, SIGKILL. On Linux each child also gets
PR_SET_PDEATHSIG, so even a supervisor killed with SIGKILL leaves no orphans behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from cdn.errors import CDNError

READY_EVENT = "event=listening"
START_TIMEOUT_S = 15.0
STOP_GRACE_S = 8.0
LOG_TAIL_LINES = 8
PUMP_CHUNK_BYTES = 64 * 1024
LINE_START_BYTES = 1024  # of a longer line, the log keeps it all, the tail only this much
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

Transport = Literal["tcp", "udp"]


class DemoError(CDNError):
    """The demo cannot run: a port is busy or a child failed to start (exit code 2)."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    name: str
    argv: tuple[str, ...]
    ready_event: str | None = READY_EVENT  # None: the caller decides when the child is ready
    layer: int = 0  # stop_all stops higher layers first: give dependents a higher layer


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
            raise DemoError(self._failure(child, f"not listening after {timeout_s:g} s")) from None

    async def spawn(self, spec: ChildSpec) -> Child:
        log_path = self.log_dir / f"{spec.name}.log"
        log = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
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
            failure = self._failure(child, f"exited with code {child.process.returncode}")
            child.ready.set_exception(DemoError(failure))

    def _take_line(self, child: Child, raw: bytes) -> None:
        line = raw[:LINE_START_BYTES].decode("utf-8", "replace").rstrip()
        child.tail.append(line)
        event = child.spec.ready_event
        if event and not child.ready.done() and event in line:
            child.ready.set_result(parse_logfmt(line))

    def _failure(self, child: Child, what: str) -> str:
        tail = "".join(f"\n  | {line}" for line in child.tail)
        return f"{child.spec.name} (pid {child.pid}) {what}; log {child.log_path}{tail}"

    async def obituary(self, child: Child) -> str:
        """`name (pid N) exited with code C; log PATH` and its last lines, once all are logged."""
        await child.process.wait()
        if child.pump is not None:
            await child.pump
        return self._failure(child, f"exited with code {child.process.returncode}")

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
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
        code = await child.process.wait()
        if child.pump is not None:
            await child.pump
        with contextlib.suppress(asyncio.CancelledError, CDNError):
            await child.ready  # retrieve it, so an unread failure is not logged at exit
        return code

    def kill(self, child: Child) -> None:
        """SIGKILL at once (a crash, as `kill -9` does it)."""
        if child.process.returncode is None:
            child.process.kill()

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
