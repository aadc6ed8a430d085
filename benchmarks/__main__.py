"""`python -m benchmarks` (`make bench`): every part in one run, tables to docs/benchmarks.md,
its headline also into README.md.

BENCH_QUICK=1 shortens every part (about 4 minutes in all) for development; the full run
takes about 22 minutes on 2 cores (the scaling part about 5.5 of them, 1 in quick mode).
Each part's wall time is printed as it finishes; the report lists them with the total
("Run time per part").
`--parts bias,dns,hit,failover,return,prewarm,balance,cache,disk,offload,hostile,scaling,purge`
picks parts; with `--splice` only the parts run are written into the existing report, the
rest is kept.
The bias check (benchmarks/fairness.py) runs first and stops the run, exit 1, if the harness
would measure a server started its way differently from one started plainly; every started
process is checked against the harness's own scheduling (session autogroup, nice, cores).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import _maxminddb_geolite2  # type: ignore[import-untyped]

from benchmarks import (
    balance,
    cache_policy,
    cdn,
    disk_level,
    dns,
    edge_hit,
    failover,
    fairness,
    headline,
    hostile,
    offload,
    peers,
    prewarm_failover,
    purge,
    report,
    return_to_region,
    scaling,
)
from benchmarks.processes import (
    BenchError,
    Endpoint,
    Placement,
    placement,
    process_tree,
    rss_bytes,
    unequal,
)
from benchmarks.report import Part, Table
from cdnlab.supervisor import DemoError
from georouter.config import RouterConfig, load_config

OUTPUT = cdn.REPO / "docs" / "benchmarks.md"
PARTS = (
    "bias", "dns", "hit", "failover", "return", "prewarm", "balance", "cache", "disk", "offload",
    "hostile", "scaling", "purge",
)  # fmt: skip
LATENCY_LOAD_SHARE = 0.5  # the fixed-rate run offers half of georouter's max q/s
DNS_WORKERS = 2  # the second georouter configuration measured: one UDP worker per core
FAILOVER_VICTIM = "edge-eu-1"


@dataclass(frozen=True, slots=True)
class Settings:
    mode: str
    rounds: int
    latency_rounds: int  # a p99 swings more between runs than a throughput does
    run_s: float  # each dnsperf and wrk run
    failover_trials: int
    cache_requests: int
    balance_seeds: int
    bias_rounds: int  # per way, of fairness.ROUND_S each; a multiple of 3 rotates fully


FULL = Settings("full", rounds=3, latency_rounds=5, run_s=5.0, failover_trials=10,
                cache_requests=1_000_000, balance_seeds=3, bias_rounds=6)  # fmt: skip
QUICK = Settings("quick (BENCH_QUICK=1)", rounds=1, latency_rounds=1, run_s=3.0,
                 failover_trials=5, cache_requests=100_000, balance_seeds=1,
                 bias_rounds=3)  # fmt: skip


@dataclass(slots=True)
class Run:
    """What the parts share: settings, topology, GeoIP file, scratch space, results."""

    settings: Settings
    config: RouterConfig
    geoip: Path
    workdir: Path
    parts: dict[str, Part]
    memory: dict[str, int]
    harness: Placement
    started: dict[str, Placement] = field(default_factory=dict)
    mixes: tuple[dns.Mix, ...] = ()
    durations: dict[str, float] = field(default_factory=dict)  # wall seconds per part

    @contextlib.contextmanager
    def timed(self, key: str) -> Iterator[None]:
        """Record the wall time of part `key` (added up if it runs in pieces) and print it."""
        start = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - start
            self.durations[key] = self.durations.get(key, 0.0) + took
            print(f"[{key}: {_minutes(took)}]", flush=True)

    def query_mixes(self) -> tuple[dns.Mix, ...]:
        """The dnsperf query files, built once (the bias check and part 1 share them)."""
        if not self.mixes:
            self.mixes = dns.build_mixes(self.config, self.geoip, self.workdir)
        return self.mixes

    def note_start(self, label: str, pid: int) -> None:
        """Record how a server was started; BenchError if any process of its tree would be
        scheduled apart from the harness (another autogroup, nice, set of cores, cgroup)."""
        tree = [(f"{label} (pid {member})", placement(member)) for member in process_tree(pid)]
        self._admit(label, {name: found for name, found in tree if found is not None})

    def note_tool(self, label: str, started: Placement | None) -> None:
        """Record how a load generator was started (its first run), checked like a server."""
        if started is not None and label not in self.started:
            self._admit(label, {label: started})

    def _admit(self, label: str, found: dict[str, Placement]) -> None:
        """Keep the first (the leader) of `found` under `label`, if all are scheduled alike."""
        if apart := unequal(found, self.harness):
            first = found[apart[0]]
            raise BenchError(
                f"harness bias: {', '.join(apart)} scheduled apart from the harness "
                f"(autogroup {first.autogroup!r}, nice {first.nice}, cpus {first.cpus}; the "
                f"harness: {self.harness.autogroup!r}, nice {self.harness.nice}, cpus "
                f"{self.harness.cpus}); see cdnlab/supervisor.py"
            )
        if found:
            self.started.setdefault(label, next(iter(found.values())))

    def emit(self, key: str, part: Part, table: Table) -> None:
        part.tables.append(table)
        self.parts.setdefault(key, part)
        print(table.text(), flush=True)

    def note_memory(self, label: str, pid: int) -> None:
        self.memory[label] = rss_bytes(pid)


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)} min {seconds % 60:04.1f} s"


def _missing(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def _skipped(title: str, why: str) -> Part:
    return Part(title, f"Skipped: {why} (`make bench-packages` installs them).")


@contextlib.contextmanager
def _dns_peers(run: Run) -> Iterator[list[Endpoint]]:
    """gdnsd and PowerDNS, each when installed, on loopback with generated configs."""
    with contextlib.ExitStack() as stack:
        started = []
        for binary, start in (("gdnsd", peers.gdnsd), ("pdns_server", peers.powerdns)):
            if shutil.which(binary):
                workdir = run.workdir / binary
                workdir.mkdir()
                started.append(stack.enter_context(start(run.config, run.geoip, workdir)))
        yield started


HARNESS_TITLE = "The harness: how each process was started, and a bias check"


def harness_part(run: Run) -> Part:
    intro = report.intro(fairness.__doc__)
    return run.parts.setdefault("bias", Part(HARNESS_TITLE, intro, numbered=False))


def bias_part(run: Run) -> None:
    """PowerDNS started three ways, measured in turn; BenchError if the harness is biased."""
    part = harness_part(run)
    if missing := _missing("dnsperf", "pdns_server"):
        part.intro += f"\n\nBias check skipped: {', '.join(missing)} not installed."
        return
    mix = next(m for m in run.query_mixes() if m.name == "ecs")
    check = fairness.run_check(
        run.config, run.geoip, run.workdir / "bias", mix, run.settings.bias_rounds
    )
    run.emit("bias", part, fairness.check_table(check, run.harness))
    print(check.verdict.summary(), flush=True)
    fairness.enforce(check.verdict)


def dns_part(run: Run, fleet: cdn.Cdn) -> None:
    title = "DNS throughput and latency (dnsperf)"
    if missing := _missing("dnsperf"):
        run.parts["dns"] = _skipped(title, f"{', '.join(missing)} not installed")
        return
    part = Part(title, report.intro(dns.__doc__))
    mixes = run.query_mixes()
    s = run.settings
    with (
        cdn.router_with_workers(run.workdir, DNS_WORKERS) as workers,
        _dns_peers(run) as others,
    ):
        for server in [workers, *others]:
            run.note_start(server.name, server.pid)
        georouters = [fleet.router.dns, workers]
        servers = [*georouters, *others]
        runs = dns.throughput_rounds(servers, mixes, s.rounds, s.run_s)
        run.note_tool("dnsperf", runs[0].tool)
        run.emit("dns", part, dns.throughput_table(runs, mixes, [e.name for e in georouters]))
        ours = [r.qps for r in runs if r.server == fleet.router.dns.name and r.mix == "ecs"]
        rate = LATENCY_LOAD_SHARE * sorted(ours)[len(ours) // 2]
        latency = dns.latency_rounds(servers, mixes[1], rate, s.latency_rounds, s.run_s)
        run.emit("dns", part, dns.latency_table(latency, rate))
        for server in [workers, *others]:
            run.note_memory(f"{server.name} (after part 1)", server.pid)


def failover_part(run: Run, fleet: cdn.Cdn, origin_url: str) -> None:
    part = Part("Failover time", report.intro(failover.__doc__))
    region = next(n.region for n in run.config.nodes if n.name == FAILOVER_VICTIM)
    subnet = dns.subnets_by_region(run.config, run.geoip)[region][0]
    service = run.config.zones[0].services[0]
    results = [
        failover.measure(
            fleet,
            FAILOVER_VICTIM,
            service,
            subnet,
            origin_url,
            run.settings.failover_trials,
            freeze=freeze,
        )
        for freeze in (False, True)
    ]
    run.emit("failover", part, failover.failover_table(results, run.config))


def return_part(run: Run, fleet: cdn.Cdn, origin_url: str) -> None:
    part = Part("Return to region", report.intro(return_to_region.__doc__))
    region = next(n.region for n in run.config.nodes if n.name == FAILOVER_VICTIM)
    subnet = dns.subnets_by_region(run.config, run.geoip)[region][0]
    trials = 1 if run.settings is QUICK else 2
    config_path = run.workdir / "cdn.toml"  # written by cdn.cdn; reloaded with SIGHUP
    results = return_to_region.measure(
        fleet, run.config, config_path, region, subnet, origin_url, trials
    )
    run.emit("return", part, return_to_region.return_table(results, run.config, region))


def prewarm_part(run: Run) -> None:
    """Popularity pre-warm after an edge is killed (benchmarks/prewarm_failover.py): a CDN
    of its own, in front of an origin with a larger catalog."""
    part = Part("Pre-warm after failover", report.intro(prewarm_failover.__doc__))
    plan = prewarm_failover.QUICK if run.settings is QUICK else prewarm_failover.FULL
    results = prewarm_failover.measure(run.config, run.workdir / "prewarm", plan)
    run.emit("prewarm", part, prewarm_failover.prewarm_table(results, plan))


def hit_part(run: Run, origin: Endpoint) -> None:
    title = "Edge cache hits (wrk)"
    if missing := _missing("wrk"):
        run.parts["hit"] = _skipped(title, f"{', '.join(missing)} not installed")
        return
    part = Part(title, report.intro(edge_hit.__doc__))
    origin_url = f"http://{origin.host}:{origin.port}"
    objects = edge_hit.pick_objects()
    with contextlib.ExitStack() as stack:
        ours = stack.enter_context(cdn.edge("edge-bench", origin_url)).content
        # The same edge with every hit on aiohttp's full path: the fast path's before/after.
        full_path = run.workdir / "edge-full-path.toml"
        full_path.write_text("[cache]\nfast_path = false\n")
        slow = stack.enter_context(cdn.edge(edge_hit.FULL_PATH_EDGE, origin_url, config=full_path))
        servers = [ours, slow.content]
        if shutil.which("nginx"):
            (run.workdir / "nginx").mkdir()
            servers.append(stack.enter_context(peers.nginx(origin.port, run.workdir / "nginx")))
        for server in servers:
            run.note_start(server.name, server.pid)
            for obj in objects:
                edge_hit.warm(server, obj)
        runs = [
            edge_hit.run_wrk(server, obj, run.settings.run_s)
            for _ in range(run.settings.rounds)
            for obj in objects
            for server in servers
        ]
        run.note_tool("wrk", runs[0].tool)
        run.emit("hit", part, edge_hit.hit_table(runs, ours.name))
        for server in servers:
            run.note_memory(f"{server.name} (after part 2, objects cached)", server.pid)


def scaling_part(run: Run, images: Path) -> None:
    """Router and edge cost as the work grows (benchmarks/scaling.py); plots into `images`."""
    plan = scaling.QUICK if run.settings is QUICK else scaling.FULL
    workdir = run.workdir / "scaling"
    workdir.mkdir()
    harness = scaling.Harness(workdir, run.note_start, run.note_tool)
    results = scaling.measure(harness, plan, cdn.TOPOLOGY, run.config)
    part = Part("How cost grows with the work", "")
    for table in scaling.tables(results, plan):
        run.emit("scaling", part, table)
    part.intro = scaling.intro(results, scaling.figures(results, images))
    run.parts["scaling"] = part


def disk_part(run: Run) -> None:
    """The edge's disk level: hit throughput by level, and a restart (benchmarks/disk_level.py)."""
    part = Part("Memory over disk", report.intro(disk_level.__doc__))
    plan = disk_level.QUICK if run.settings is QUICK else disk_level.FULL
    workdir = run.workdir / "disk"
    workdir.mkdir()
    for table in disk_level.measure(workdir, plan):
        run.emit("disk", part, table)


def offload_part(run: Run) -> None:
    """Origin fetches per object, edges direct vs behind shields (benchmarks/offload.py)."""
    part = Part("Origin offload with shields", report.intro(offload.__doc__))
    plan = offload.QUICK if run.settings is QUICK else offload.FULL
    run.emit("offload", part, offload.measure(plan, run.note_start))


def hostile_part(run: Run) -> None:
    """Mutated datagrams and abusive TCP streams at a router of its own (benchmarks/hostile.py)."""
    part = Part("Hostile traffic at the router", report.intro(hostile.__doc__))
    load = hostile.QUICK_LOAD if run.settings is QUICK else hostile.FULL_LOAD
    run.emit("hostile", part, hostile.hostile_table(hostile.run(cdn.TOPOLOGY, load)))


def purge_part(run: Run) -> None:
    """Purge everywhere, and an edge cut off during a purge (benchmarks/purge.py)."""
    part = Part("Purge everywhere", report.intro(purge.__doc__))
    plan = purge.QUICK if run.settings is QUICK else purge.FULL
    workdir = run.workdir / "purge"
    workdir.mkdir()
    for table in purge.tables(purge.measure(workdir, plan, run.note_start)):
        run.emit("purge", part, table)


def memory_table(memory: dict[str, int]) -> Table:
    rows = [[label, f"{size / 2**20:,.1f}"] for label, size in memory.items()]
    notes = [
        "RSS of each process tree from /proc/<pid>/stat; georouter and PowerDNS and gdnsd "
        "have the embedded GeoLite2-City (2018, 54 MiB file) loaded.",
    ]
    return Table("Resident memory", ["process", "RSS MiB"], rows, notes)


def runtime_table(durations: dict[str, float], total: float) -> Table:
    """Wall time of each part in run order, the shared set-up between them, and the total."""
    rows = [[key, _minutes(took)] for key, took in durations.items()]
    rows.append(
        ["set-up and teardown between parts", _minutes(max(0.0, total - sum(durations.values())))]
    )
    rows.append(["**total**", f"**{_minutes(total)}**"])
    notes = [
        "Wall time from the harness's clock (time.monotonic); set-up is the shared origin "
        "and CDN, the GeoIP file and the scratch space.",
    ]
    return Table("Run time per part", ["part", "wall time"], rows, notes)


def _selected(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="Markdown report")
    parser.add_argument(
        "--splice",
        action="store_true",
        help="write only the parts run into the existing report (their sections replaced "
        "or added, each stamped with this run's date and machine); README untouched",
    )
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if unknown := set(args.parts) - set(PARTS):
        parser.error(f"unknown parts: {', '.join(sorted(unknown))} (known: {', '.join(PARTS)})")
    return args


def _with_servers(run: Run, parts: list[str]) -> None:
    """The parts that need our processes: one origin, one CDN shared by parts 1 and 3."""
    if not {"dns", "failover", "return", "hit"} & set(parts):
        return
    with cdn.origin() as origin:
        run.note_start("origin (demo)", origin.pid)
        origin_url = f"http://{origin.host}:{origin.port}"
        if {"dns", "failover", "return"} & set(parts):
            with cdn.cdn(run.config, run.workdir, origin_url) as fleet:
                run.note_start("georouter", fleet.router.service.pid)
                for started in fleet.edges.values():
                    run.note_start("edge (one of the CDN's six)", started.service.pid)
                if "dns" in parts:
                    with run.timed("dns"):
                        dns_part(run, fleet)
                run.note_memory("georouter (GeoLite2-City loaded)", fleet.router.service.pid)
                run.note_memory(
                    "edge (one of the CDN's six)", fleet.edges[FAILOVER_VICTIM].service.pid
                )
                if "failover" in parts:
                    with run.timed("failover"):
                        failover_part(run, fleet, origin_url)
                if "return" in parts:
                    with run.timed("return"):
                        return_part(run, fleet, origin_url)
        if "hit" in parts:
            with run.timed("hit"):
                hit_part(run, origin)


def _pure_parts(run: Run, parts: list[str]) -> None:
    """The simulations: no servers, only CPU."""
    quick = run.settings is QUICK
    simulations: list[tuple[str, Part, Callable[[], Table]]] = [
        (
            "balance",
            Part("Balance: herding under delayed load reports", report.intro(balance.__doc__)),
            lambda: balance.balance_table(run.settings.balance_seeds, quick),
        ),
        (
            "cache",
            Part("Cache policy: eviction hit ratios", report.intro(cache_policy.__doc__)),
            lambda: cache_policy.cache_table(run.settings.cache_requests),
        ),
    ]
    for key, part, make in simulations:
        if key in parts:
            with run.timed(key):
                run.emit(key, part, make())


def main(argv: list[str] | None = None) -> int:
    args = _selected(argv)
    began = time.monotonic()
    settings = QUICK if os.environ.get("BENCH_QUICK") == "1" else FULL
    config = load_config(cdn.TOPOLOGY)
    geoip = Path(_maxminddb_geolite2.geolite2_database())
    with tempfile.TemporaryDirectory(prefix="georouter-bench-") as scratch:
        harness = placement(os.getpid())
        assert harness is not None  # this very process
        run = Run(settings, config, geoip, Path(scratch), {}, {}, harness)
        try:
            if "bias" in args.parts:
                with run.timed("bias"):
                    bias_part(run)
            _with_servers(run, args.parts)
            if "prewarm" in args.parts:
                with run.timed("prewarm"):
                    prewarm_part(run)
            _pure_parts(run, args.parts)
            later: list[tuple[str, Callable[[], None]]] = [
                ("disk", lambda: disk_part(run)),
                ("offload", lambda: offload_part(run)),
                ("hostile", lambda: hostile_part(run)),
                ("scaling", lambda: scaling_part(run, args.output.parent / "img")),
                ("purge", lambda: purge_part(run)),
            ]
            for key, measure in later:
                if key in args.parts:
                    with run.timed(key):
                        measure()
        except (BenchError, DemoError) as exc:  # DemoError: a server did not start
            print(f"benchmarks: {exc}", file=sys.stderr)
            return 1
        if run.started and not (args.splice and "bias" not in args.parts):
            started = fairness.started_table(run.started, run.workdir)
            run.emit("bias", harness_part(run), started)
    total = time.monotonic() - began
    ordered = [run.parts[key] for key in PARTS if key in run.parts]
    if run.memory and not args.splice:  # a spliced run keeps the full run's memory table
        ordered.append(Part("Memory", "", [memory_table(run.memory)]))
        print(ordered[-1].tables[0].text())
    runtime = runtime_table(run.durations, total)
    print(runtime.text(), flush=True)
    if not args.splice:  # a spliced run's times are not the whole run's
        ordered.append(Part("Run time", "", [runtime], numbered=False))
    header = report.machine_lines(peers.versions(), settings.mode)
    if args.splice:
        command = f"python -m benchmarks --parts {','.join(args.parts)} --splice"
        report.splice(args.output, ordered, header, command)
        headline.rebuild(args.output, headline.README if args.output == OUTPUT else None)
        print(f"spliced {', '.join(p.title for p in ordered)} into {args.output}")
        return 0
    summary = headline.headline([table for part in ordered for table in part.tables])
    report.write(args.output, ordered, header, summary)
    print(f"wrote {args.output}")
    if args.output == OUTPUT:  # a run written elsewhere leaves the README's headline alone
        headline.update_readme(headline.README, header, summary)
        print(f"updated the headline in {headline.README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
