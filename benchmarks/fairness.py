"""The harness section: how each process was started, and a check that this is fair.

Every server and load generator competes for the CPU on equal terms: each server runs in
the harness's session (its own process group, so the terminal's Ctrl-C does not reach it
and a SIGKILL takes its children), dnsperf and wrk run as plain children of the same
session, and nothing is pinned to a core. With `kernel.sched_autogroup_enabled = 1` a new
session is a CPU scheduling group of its own, and the scheduler shares the cores between
groups before it shares a group between its threads: a server in its own session gets one
group's share against the load generator's group however many threads it has. That cost
PowerDNS (a receiver and three distributor threads) a third of its queries/s in earlier
runs of this benchmark and a single-threaded server nothing. Pinning (server on one core,
load generator on the other) would avoid that, but it caps the multi-threaded and
multi-process servers (PowerDNS, gdnsd, georouter with `dns_workers = 2`) at one core and
is not how they are deployed. The table "How each process was started" reads each process
from /proc (session, process group, /proc/<pid>/autogroup, nice, allowed cores, cgroup);
the run stops if one of them would be scheduled differently from the harness itself.

The bias check runs first. PowerDNS, the server that showed the bias, is started three times
from one generated configuration: plain (as a shell starts a command), the harness's way,
and in its own session (setsid, as this harness used to). dnsperf drives the three in
alternating short rounds (the order rotating) with the ecs mix, and each way's figure is
taken relative to the plain one of the same round (so a load that drifts between rounds
cancels out). The gap of a way is how far the median of its ratios is from 1; the noise is
the widest spread (smallest to largest ratio) of either way, and at least 10 %. The run
stops (exit 1) when the harness's gap exceeds the noise. The own-session way is the control:
when it differs by more than the noise, the check has shown it can see an autogroup bias on
this machine; when it does not (autogroup off, the cores not saturated, or too much noise),
the table says the run could not tell.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks import cdn, dns, peers
from benchmarks.processes import BenchError, Placement, placement
from benchmarks.report import Table, fmt
from cdnlab.supervisor import Start
from georouter.config import RouterConfig

MIN_NOISE = 0.10  # a few rounds of a few seconds on a shared machine swing at least this
ROUND_S = 2.0  # each dnsperf round of the check
WAYS = (Start.PLAIN, Start.GROUP, Start.SESSION)
WAY_NAMES = {Start.PLAIN: "plain", Start.GROUP: "harness", Start.SESSION: "own session"}


def ratios(values: Sequence[float], reference: Sequence[float]) -> tuple[float, ...]:
    """Each round's figure over the reference's figure of the same round."""
    return tuple(v / r for v, r in zip(values, reference, strict=True))


def spread(values: Sequence[float]) -> float:
    """Smallest to largest."""
    return max(values) - min(values)


def gap(relative: Sequence[float]) -> float:
    """How far the median of per-round ratios is from 1 (no difference)."""
    return abs(statistics.median(relative) - 1.0)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The bias check's figures (queries/s per round of each way) and what they mean."""

    plain: tuple[float, ...]
    harness: tuple[float, ...]
    own_session: tuple[float, ...]
    noise: float  # the widest spread of the per-round ratios to plain, at least MIN_NOISE
    harness_gap: float  # of the harness's per-round ratios to plain
    own_session_gap: float

    @property
    def biased(self) -> bool:
        """The harness's way is measurably slower or faster than a plain start."""
        return self.harness_gap > self.noise

    @property
    def sensitive(self) -> bool:
        """Starting the server in its own session made a difference beyond the noise."""
        return self.own_session_gap > self.noise

    def summary(self) -> str:
        plain, harness = statistics.median(self.plain), statistics.median(self.harness)
        own = statistics.median(self.own_session)
        figures = (
            f"PowerDNS started by the harness {harness:,.0f} q/s, plain {plain:,.0f} q/s "
            f"(gap {self.harness_gap:.0%}), in its own session {own:,.0f} q/s "
            f"(gap {self.own_session_gap:.0%}); noise {self.noise:.0%}"
        )
        if self.biased:
            return (
                f"harness bias: {figures}. The harness must start every server as a "
                "shell does: in the harness's session and CPU autogroup "
                "(cdnlab/supervisor.py)."
            )
        control = (
            "the own-session control shows the check can see an autogroup bias here"
            if self.sensitive
            else "the own-session control stayed within the noise, so this run could not "
            "tell a bias from the noise (autogroup off, cores not saturated, or a busy machine)"
        )
        return f"no harness bias: {figures}; {control}."


def judge(
    *, plain: Sequence[float], harness: Sequence[float], own_session: Sequence[float]
) -> Verdict:
    """The verdict on the queries/s of each way's rounds: round i of each way ran back to
    back, so every way needs the same number of rounds (at least one), all positive."""
    ways = (plain, harness, own_session)
    if not plain or len({len(w) for w in ways}) != 1 or min(min(w) for w in ways) <= 0:
        raise ValueError("every way needs the same rounds, at least one, every figure > 0")
    ours, control = ratios(harness, plain), ratios(own_session, plain)
    return Verdict(
        plain=tuple(plain),
        harness=tuple(harness),
        own_session=tuple(own_session),
        noise=max(MIN_NOISE, spread(ours), spread(control)),
        harness_gap=gap(ours),
        own_session_gap=gap(control),
    )


def rotated(ways: Sequence[Start], index: int) -> list[Start]:
    """Round `index`'s order: each way goes first, second and third equally often (a server
    measured right after another may pay for the queries that one still has queued)."""
    shift = index % len(ways)
    return [*ways[shift:], *ways[:shift]]


@dataclass(frozen=True, slots=True)
class Check:
    """A finished bias check: the verdict and how each PowerDNS was started."""

    verdict: Verdict
    placements: Mapping[Start, Placement | None]


def run_check(config: RouterConfig, geoip: Path, workdir: Path, mix: dns.Mix, rounds: int) -> Check:
    """Three PowerDNS, one per way, driven in rotating rounds (drift hits all alike)."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for way in WAYS:
            where = workdir / f"pdns-{way.name.lower()}"
            where.mkdir(parents=True)
            name = f"powerdns ({WAY_NAMES[way]})"
            servers[way] = stack.enter_context(
                peers.powerdns(config, geoip, where, start=way, name=name)
            )
        placements = {way: placement(server.pid) for way, server in servers.items()}
        qps: dict[Start, list[float]] = {way: [] for way in WAYS}
        for index in range(rounds):
            for way in rotated(WAYS, index):
                qps[way].append(dns.run_dnsperf(servers[way], mix, ROUND_S).qps)
    verdict = judge(
        plain=qps[Start.PLAIN], harness=qps[Start.GROUP], own_session=qps[Start.SESSION]
    )
    return Check(verdict, placements)


def enforce(verdict: Verdict) -> None:
    """BenchError (the run stops, exit 1) when the harness is biased."""
    if verdict.biased:
        raise BenchError(verdict.summary())


def check_table(check: Check, harness: Placement | None) -> Table:
    verdict = check.verdict
    figures = {
        Start.PLAIN: verdict.plain,
        Start.GROUP: verdict.harness,
        Start.SESSION: verdict.own_session,
    }
    gaps = {Start.GROUP: verdict.harness_gap, Start.SESSION: verdict.own_session_gap}
    rows = []
    for way in WAYS:
        found = check.placements.get(way)
        values = figures[way]
        relative = ", ".join(f"{r:.2f}" for r in ratios(values, verdict.plain))
        rows.append([
            WAY_NAMES[way], _session(found, harness), _autogroup(found),
            fmt(statistics.median(values)), ", ".join(f"{v:,.0f}" for v in values),
            "" if way is Start.PLAIN else relative,
            f"{gaps[way]:.0%}" if way in gaps else "",
        ])  # fmt: skip
    notes = [
        f"{len(verdict.plain)} alternating round(s) of {ROUND_S:g} s per way, dnsperf with "
        "the ecs mix as in part 1; gap: the median ratio's distance from 1; noise: the "
        f"widest spread of either way's ratios, at least {MIN_NOISE:.0%}.",
        f"Verdict: {verdict.summary()}",
    ]
    columns = ["way", "session", "autogroup", "median q/s", "q/s per round"]
    columns += ["per round / plain", "gap"]
    return Table("Bias check: PowerDNS started three ways", columns, rows, notes)


def _session(found: Placement | None, harness: Placement | None) -> str:
    if found is None or harness is None:
        return "n/a"
    if found.session == harness.session:
        return "harness's" if found.group == harness.group else "harness's, own group"
    return "own"


def _autogroup(found: Placement | None) -> str:
    if found is None:
        return "n/a"
    return found.autogroup.split(" ", 1)[0].lstrip("/") or "none"


def command_line(argv: Sequence[str], replacements: Mapping[str, str]) -> str:
    """A readable command line: long paths (scratch directory, interpreter) shortened."""
    text = " ".join(argv)
    for long, short in replacements.items():
        text = text.replace(long, short)
    return text


def started_table(placements: Mapping[str, Placement], workdir: Path) -> Table:
    """Every process the run started, and the harness itself, as /proc shows them."""
    harness = placement(os.getpid())
    shown = {sys.executable: "python", str(workdir): "$WORK", f"{cdn.REPO}/": ""}
    rows = []
    for name, found in placements.items():
        rows.append([
            name, f"`{command_line(found.argv, shown)}`", _session(found, harness),
            _autogroup(found), str(found.nice), found.cpus, found.cgroup or "n/a",
        ])  # fmt: skip
    if harness is not None:
        rows.append([
            "the harness", f"`{command_line(harness.argv, shown)}`", "(reference)",
            _autogroup(harness), str(harness.nice), harness.cpus, harness.cgroup or "n/a",
        ])  # fmt: skip
    notes = [
        "session: the harness's (servers in their own process group), or own; autogroup "
        "from /proc/<pid>/autogroup (one per session while kernel.sched_autogroup_enabled "
        f"= {_autogroup_setting()}); cpus: Cpus_allowed_list (no pinning: every core).",
        "dnsperf and wrk: as recorded for their first run; every server was checked against "
        "the harness when it started (same autogroup, nice, cores and cgroup).",
    ]
    columns = ["process", "command line", "session", "autogroup", "nice", "cpus", "cgroup"]
    return Table("How each process was started", columns, rows, notes)


def _autogroup_setting() -> str:
    try:
        return Path("/proc/sys/kernel/sched_autogroup_enabled").read_text().strip()
    except OSError:
        return "absent"
