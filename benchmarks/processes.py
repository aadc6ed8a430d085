"""CPU, memory and placement of the benchmarks' processes, read from /proc; load generators.

Every server a benchmark runs is started and stopped by cdnlab's one process supervisor
(cdnlab/supervisor.py, `running`): in the harness's session, in a process group of its own,
so that it shares the load generator's CPU autogroup (that module's docstring says why), and
stopped by its PID in a `finally`. The load generators run here, as plain children of the
same session (`run_tool`): every thread of a server and of dnsperf or wrk is one task among
equals, as when an operator starts both from one shell. Nothing is pinned to a core: a
multi-threaded or multi-process server (PowerDNS, gdnsd, georouter with `dns_workers = 2`)
is meant to use both cores, and pinning it to one would handicap it as the autogroup did.

CPU time is the sum of utime+stime over a process and its live descendants (nginx and gdnsd
work in child processes or threads), read from /proc/<pid>/stat. `placement` reads how each
process ended up (session, process group, /proc/<pid>/autogroup, allowed CPUs) so that a run
records it and `unequal` can refuse a run where they differ.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
START_TIMEOUT_S = 30.0
POLL_S = 0.05


class BenchError(RuntimeError):
    """A benchmark could not run (a server did not start, a tool failed)."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A running server under test: where it listens and which process tree to account."""

    name: str
    host: str
    port: int
    pid: int


@dataclass(frozen=True, slots=True)
class CpuSample:
    """CPU seconds used so far by a process tree, and when that was read."""

    cpu_s: float
    wall_s: float

    def percent_since(self, earlier: CpuSample) -> float:
        """CPU use between two samples, in % of one core."""
        wall = self.wall_s - earlier.wall_s
        return 100.0 * (self.cpu_s - earlier.cpu_s) / wall if wall > 0 else 0.0


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ")".
    return raw[raw.rindex(")") + 2 :].split()


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            kids.extend(int(c) for c in task.read_text().split())
    return kids


def process_tree(pid: int) -> list[int]:
    """The PID and every live descendant."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(_children(current))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process tree (fields 14 and 15 of /proc/<pid>/stat)."""
    total = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def cpu_sample(pid: int) -> CpuSample:
    return CpuSample(cpu_seconds(pid), time.monotonic())


def machine_samples() -> tuple[CpuSample, CpuSample]:
    """CPU seconds all cores spent busy, and stolen, so far (first line of /proc/stat).

    Stolen time (steal) is time a vCPU was ready to run while the hypervisor ran another
    guest: it is not busy time of this machine, and it stalls whatever was on that vCPU,
    the server and the load generator alike.
    """
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    now = time.monotonic()
    busy = (user + nice + system + irq + softirq) / CLOCK_TICKS
    return CpuSample(busy, now), CpuSample(steal / CLOCK_TICKS, now)


@dataclass(frozen=True, slots=True)
class CpuShares:
    """Where the machine's CPU time went during one run, each in % of one core."""

    server: float  # the server's whole process tree
    tool: float  # the load generator
    others: float  # everything else busy on the machine (idle peers, other test suites)
    stolen: float  # vCPU time the hypervisor gave to other guests

    @classmethod
    def median(cls, shares: Sequence[CpuShares]) -> CpuShares:
        """Each share's median over several runs."""
        return cls(
            statistics.median(s.server for s in shares),
            statistics.median(s.tool for s in shares),
            statistics.median(s.others for s in shares),
            statistics.median(s.stolen for s in shares),
        )


def rss_bytes(pid: int) -> int:
    """Resident memory of a process tree (field 24 of /proc/<pid>/stat, in pages)."""
    total = 0
    for member in process_tree(pid):
        fields = _stat_fields(member)
        if fields is not None:
            total += int(fields[21]) * PAGE_BYTES
    return total


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll `predicate` until it is true; BenchError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel just handed out for `host` (for daemons that cannot be told port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        tcp.bind((host, 0))
        port: int = tcp.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind((host, port))  # the DNS peers need the UDP port free as well
    return port


def tcp_accepts(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@dataclass(frozen=True, slots=True)
class Placement:
    """How a process was started, as the kernel sees it: what decides its share of the CPU."""

    argv: tuple[str, ...]
    session: int
    group: int  # process group
    autogroup: str  # /proc/<pid>/autogroup, e.g. "/autogroup-9 nice 0" ("": none)
    nice: int
    cpus: str  # Cpus_allowed_list: the cores it may run on
    cgroup: str  # of the cpu controller (cgroup v1), or the unified one (v2)

    def scheduling(self) -> tuple[str, int, str, str]:
        """What the scheduler weighs; two processes with equal values compete as equals."""
        return (self.autogroup, self.nice, self.cpus, self.cgroup)


def _proc_text(pid: int, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return ""


def cpu_cgroup(text: str) -> str:
    """The cgroup that weighs a process's CPU, from /proc/<pid>/cgroup ("id:controllers:path"
    lines): the v1 hierarchy with the cpu controller, else the v2 unified one ("0::path")."""
    unified = ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if "cpu" in controllers.split(","):
            return path
        if hierarchy == "0" and not controllers:
            unified = path
    return unified


def placement(pid: int) -> Placement | None:
    """The process's placement, or None once it has exited."""
    fields = _stat_fields(pid)
    try:
        session, group = os.getsid(pid), os.getpgid(pid)
    except ProcessLookupError:
        return None
    if fields is None:
        return None
    cpus = re.search(r"^Cpus_allowed_list:\s*(\S+)", _proc_text(pid, "status"), re.MULTILINE)
    return Placement(
        argv=tuple(a for a in _proc_text(pid, "cmdline").split("\0") if a),
        session=session,
        group=group,
        autogroup=_proc_text(pid, "autogroup").strip(),
        nice=int(fields[16]),
        cpus=cpus.group(1) if cpus else "",
        cgroup=cpu_cgroup(_proc_text(pid, "cgroup")),
    )


def unequal(placements: Mapping[str, Placement], reference: Placement) -> list[str]:
    """The processes that do not compete for the CPU on the reference's terms (autogroup,
    nice, allowed cores, cgroup): a benchmark with any of them would be biased."""
    return [
        name for name, found in placements.items() if found.scheduling() != reference.scheduling()
    ]


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class ToolRun:
    """A load generator's run: its output, its CPU use in % of one core, how it was started."""

    output: str
    cpu_percent: float
    placement: Placement | None  # None if it exited before /proc could be read


def run_tool(argv: Sequence[str], timeout_s: float) -> ToolRun:
    """Run a load generator to completion, as a plain child (the harness's session).

    The output goes to an unlinked temporary file, read once the tool has exited: a pipe
    read while it runs would wake this process for every line (`dnsperf -v` prints one
    per response), and that CPU would be taken from the servers being measured.
    A finished tool's /proc entry is gone, so its CPU comes from the rusage of reaped
    children, read before and after (the benchmarks reap nothing else meanwhile).
    """
    with tempfile.TemporaryFile(mode="w+") as sink:
        cpu_before, wall_before = _children_cpu_s(), time.monotonic()
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )
        started = placement(proc.pid)
        if started is not None and not started.argv:
            # /proc/PID/cmdline reads empty while the kernel is still setting up the exec.
            started = replace(started, argv=tuple(argv))
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BenchError(f"{argv[0]} did not finish within {timeout_s:.0f} s") from None
        wall = time.monotonic() - wall_before
        sink.seek(0)
        out = sink.read()
    if proc.returncode != 0:
        raise BenchError(f"{argv[0]} exited {proc.returncode}: {out[-500:]}")
    return ToolRun(out, 100.0 * (_children_cpu_s() - cpu_before) / wall, started)


@dataclass(frozen=True, slots=True)
class Measured:
    """A load generator's run against a server: output, where the CPU went, the tool's start."""

    output: str
    cpu: CpuShares
    tool: Placement | None


def run_measured(argv: Sequence[str], server_pid: int, timeout_s: float) -> Measured:
    """`run_tool` against a server: the tool's output, and where the CPU went meanwhile."""
    server_before = cpu_sample(server_pid)
    busy_before, stolen_before = machine_samples()
    run = run_tool(argv, timeout_s)
    server = cpu_sample(server_pid).percent_since(server_before)
    busy_after, stolen_after = machine_samples()
    others = max(0.0, busy_after.percent_since(busy_before) - server - run.cpu_percent)
    stolen = stolen_after.percent_since(stolen_before)
    return Measured(run.output, CpuShares(server, run.cpu_percent, others, stolen), run.placement)
