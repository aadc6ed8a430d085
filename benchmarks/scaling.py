"""How cost grows with the work: the router as its topology and client mix grow, the edge as
its cache fills.

Router: one `georouter serve` process (dns_workers = 1) per point, started fresh on a
generated topology (benchmarks/scaling_inputs.py: georouter/data/cdn.toml's shape grown one way at a
time), measured with dnsperf at max rate as in part 1 (queries/s answered), and its RSS read
afterwards. The topology points use a mix of 100 ECS /24s, each asked once before the run
(the mean time of that first answer per /24 is the "first query" column: a cold placement);
the client-mix points ask 100 to 1,000,000 distinct /24s from a fresh process, so every /24
is a GeoIP cache miss the first time and the mix is as cold as the caches make it. The
GeoIP cache column is the share of the run's placements served from the router's
per-network cache (georouter_geoip_cache_hits / georouter_geoip_lookups).

Edge: one `edge serve` process before an nginx origin that answers every path with the same
1 KiB body (`Cache-Control: max-age=86400`), so the fill measures the edge and not the
origin. A bounded loader (wrk with a Lua script: every path once, in order, then it stops)
fills the cache to each point's object count, within a time budget shared by all points; wrk
then asks for the stored objects uniformly at random for the run (all hits; the hit share is
read from edge_requests_total). Memory per object is the RSS growth since the empty cache
divided by the objects stored.

Knees: the first point more than 20 % worse than the one before it (benchmarks/
scaling_curves.py), found in this run's figures; each is listed below with what grows along
that axis, the candidate causes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import re
import shutil
import socket
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.cdn import all_nodes_up
from benchmarks.dns import Mix, run_dnsperf
from benchmarks.edge_hit import parse_wrk
from benchmarks.processes import (
    BenchError,
    CpuShares,
    Endpoint,
    Placement,
    free_port,
    rss_bytes,
    run_measured,
    tcp_accepts,
)
from benchmarks.report import CPU_NOTE, EQUAL_TERMS_NOTE, Table, bottleneck, fmt
from benchmarks.report import intro as report_intro
from benchmarks.scaling_curves import Curve, matplotlib_missing, plot
from benchmarks.scaling_inputs import Shape, ecs_queries, random_slash24s, topology_toml, write_mix
from cdnlab.supervisor import READY_EVENT, DemoError, running
from georouter.config import RouterConfig
from georouter.geo import GEO_CACHE_ENTRIES
from georouter.responder import SHAPE_CACHE_ENTRIES

LOOPBACK = "127.0.0.1"
QUERIES_PER_FILE = 20_000  # a mix narrower than this repeats its /24s within the file
TOPOLOGY_CLIENTS = 100  # distinct /24s of the topology points' mix
FIRST_QUERY_TIMEOUT_S = 30.0  # one cold placement with 10,000 overrides takes ~0.1 s
OBJECT_BYTES = 1024
STUB_BACKLOG = 8192  # the health stub's listen queue: a round's connections arrive at once
EDGE_CACHE_SIZE = "4G"  # far above 1,000,000 small objects: nothing is evicted
LOADER_CONNECTIONS = 32
HIT_CONNECTIONS = 32
WRK_SUMMARY = "requests in"  # wrk's summary line, which the loader's early exit skips
MiB = 2**20
NO_CPU = CpuShares(math.nan, math.nan, math.nan, math.nan)


@dataclass(frozen=True, slots=True)
class Plan:
    """The points measured (one dimension grown at a time from the first of each)."""

    nodes: tuple[int, ...]
    regions: tuple[int, ...]
    overrides: tuple[int, ...]
    clients: tuple[int, ...]
    objects: tuple[int, ...]
    run_s: float  # each dnsperf and wrk run
    fill_budget_s: float  # the edge loader's time, all points together
    # A router not answering with every node up by then is recorded as such, not measured:
    # each node's first good probe republishes the fleet snapshot, so the start is O(nodes²).
    start_budget_s: float


FULL = Plan(nodes=(6, 600, 6000), regions=(3, 10, 50), overrides=(0, 1000, 10_000),
            clients=(100, 1000, 10_000, 100_000, 1_000_000),
            objects=(1000, 10_000, 100_000, 1_000_000), run_s=5.0, fill_budget_s=150.0,
            start_budget_s=60.0)  # fmt: skip
QUICK = Plan(nodes=(6, 600), regions=(3, 50), overrides=(0, 1000), clients=(100, 100_000),
             objects=(1000, 10_000), run_s=2.0, fill_budget_s=20.0,
             start_budget_s=30.0)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Harness:
    """What the part needs from the run: its scratch space and how it records processes."""

    workdir: Path
    note_start: Callable[[str, int], None]
    note_tool: Callable[[str, Placement | None], None]


@dataclass(frozen=True, slots=True)
class RouterPoint:
    """One router run: the topology, the mix, and what it cost."""

    dimension: str  # nodes, regions, overrides or clients
    shape: Shape
    clients: int  # distinct /24s in the mix
    qps: float
    lost: int
    cpu: CpuShares
    rss: int
    geoip_cache_share: float  # of the run's placements
    first_query_ms: float = math.nan  # mean, over the mix's /24s, of the first answer
    start_s: float = math.nan  # from exec to answering with every node up; inf: not in budget

    @property
    def cpu_us_per_query(self) -> float:
        return self.cpu.server * 1e4 / self.qps if self.qps else math.nan


@dataclass(frozen=True, slots=True)
class EdgePoint:
    """One edge point: how many objects it holds, what a hit and a stored object cost."""

    target: int
    stored: int
    fill_s: float
    out_of_budget: bool
    rss: int
    empty_rss: int
    rps: float
    p99_ms: float
    hit_share: float
    errors: int
    cpu: CpuShares

    @property
    def bytes_per_object(self) -> float:
        return (self.rss - self.empty_rss) / self.stored if self.stored else math.nan

    @property
    def cpu_us_per_hit(self) -> float:
        return self.cpu.server * 1e4 / self.rps if self.rps else math.nan


# --- the router ------------------------------------------------------------------------


_HEALTHY = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Healthy(asyncio.Protocol):
    """200 to every request head: the one health endpoint every generated node is probed
    at. Kept alive, answered from the event loop: a round probes thousands of nodes at once
    (a threaded http.server with its listen backlog of 5 dropped most of 600)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._pending = b""

    def data_received(self, data: bytes) -> None:
        self._pending += data
        heads = self._pending.count(b"\r\n\r\n")
        if heads:
            self._pending = self._pending.rpartition(b"\r\n\r\n")[2]
            self._transport.write(_HEALTHY * heads)


@contextlib.contextmanager
def health_stub() -> Iterator[str]:
    """A loopback HTTP server answering 200 to every probe, on its own event loop in a
    thread; its base URL."""
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(
        loop.create_server(_Healthy, LOOPBACK, 0, backlog=STUB_BACKLOG)
    )
    thread = threading.Thread(target=loop.run_forever, name="health-stub", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{server.sockets[0].getsockname()[1]}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def prometheus_sum(text: str, name: str, labels: str = "") -> float:
    """The sum of a Prometheus counter's samples whose labels contain `labels`."""
    pattern = rf"^{name}(?:_total)?(\{{[^}}]*\}})? (\S+)$"
    return sum(
        float(m.group(2))
        for m in re.finditer(pattern, text, re.MULTILINE)
        if labels in (m.group(1) or "")
    )


def _metrics(control_url: str) -> str:
    with urllib.request.urlopen(f"{control_url}/metrics", timeout=10.0) as response:
        text: str = response.read().decode()
        return text


def _first_answers_ms(server: Endpoint, queries: Sequence[bytes]) -> float:
    """Each query sent once, waiting for its answer: the mean round trip in ms."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(FIRST_QUERY_TIMEOUT_S)
        sock.connect((server.host, server.port))
        started = time.perf_counter()
        for query in queries:
            sock.send(query)
            try:
                sock.recv(4096)
            except TimeoutError:
                raise BenchError(
                    f"{server.name}: no answer within {FIRST_QUERY_TIMEOUT_S:.0f} s"
                ) from None
        return 1000.0 * (time.perf_counter() - started) / len(queries)


@dataclass(frozen=True, slots=True)
class Started:
    """A router that came up: its DNS endpoint, control URL, and how long it took."""

    dns: Endpoint
    control_url: str
    start_s: float


@contextlib.contextmanager
def router(config_path: Path, harness: Harness, budget_s: float) -> Iterator[Started | int]:
    """`georouter serve` on the topology, once every node is up; if that takes longer than
    `budget_s`, the still running process's PID instead (BenchError if it exited)."""
    argv = [sys.executable, "-m", "georouter", "serve", "--config", str(config_path)]
    argv += ["--dns", f"{LOOPBACK}:0", "--control", f"{LOOPBACK}:0"]
    started = time.monotonic()
    with running("georouter-scaling", argv, ready_event=READY_EVENT) as service:
        try:
            fields = service.ready(budget_s)
            control_url = f"http://{fields['control']}"
            left = budget_s - (time.monotonic() - started)
            service.wait_ready(lambda: all_nodes_up(control_url), max(left, 1.0))
        except DemoError:
            if not service.alive():
                raise
            yield service.pid
            return
        harness.note_start("georouter (scaling part)", service.pid)
        host, port = fields["dns"].rsplit(":", 1)
        dns = Endpoint("georouter", host, int(port), service.pid)
        yield Started(dns, control_url, time.monotonic() - started)


@dataclass(slots=True)
class RouterBench:
    """Runs router points, sharing the shipped topology, the stub and the generated files."""

    shipped: RouterConfig
    shipped_text: str
    health_url: str
    harness: Harness
    plan: Plan
    measured: dict[tuple[Shape, int, bool], RouterPoint] = field(default_factory=dict)

    @property
    def qname(self) -> str:
        return self.shipped.zones[0].services[0]

    def point(self, dimension: str, shape: Shape, clients: int, *, warm: bool) -> RouterPoint:
        """One point (a topology point measured before is reused under the new dimension)."""
        key = (shape, clients, warm)
        if key not in self.measured:
            self.measured[key] = self._measure(dimension, shape, clients, warm)
        return replace(self.measured[key], dimension=dimension)

    def _measure(self, dimension: str, shape: Shape, clients: int, warm: bool) -> RouterPoint:
        workdir = self.harness.workdir
        name = f"{shape.nodes}n-{shape.regions}r-{shape.overrides}o"
        config = workdir / f"topology-{name}.toml"
        text = topology_toml(self.shipped_text, self.shipped, shape, self.health_url)
        config.write_text(text)
        subnets = random_slash24s(clients, random.Random(clients))
        mix = Mix(f"{clients} /24s", "", workdir / f"clients-{clients}.bin")
        if not mix.path.exists():
            write_mix(mix.path, self.qname, subnets, max(clients, QUERIES_PER_FILE))
        with router(config, self.harness, self.plan.start_budget_s) as started:
            if not isinstance(started, Started):  # not up within the budget: its RSS only
                return RouterPoint(dimension, shape, clients, math.nan, 0, NO_CPU,
                                   rss_bytes(started), math.nan, math.nan, math.inf)  # fmt: skip
            server, control_url = started.dns, started.control_url
            first_ms = math.nan
            if warm:
                first_ms = _first_answers_ms(server, ecs_queries(self.qname, subnets))
            before = _metrics(control_url)
            run = run_dnsperf(server, mix, self.plan.run_s)
            after = _metrics(control_url)
            rss = rss_bytes(server.pid)
        self.harness.note_tool("dnsperf", run.tool)
        lookups = prometheus_sum(after, "georouter_geoip_lookups") - prometheus_sum(
            before, "georouter_geoip_lookups"
        )
        hits = prometheus_sum(after, "georouter_geoip_cache_hits") - prometheus_sum(
            before, "georouter_geoip_cache_hits"
        )
        share = hits / lookups if lookups else math.nan
        return RouterPoint(dimension, shape, clients, run.qps, run.lost, run.cpu, rss, share,
                           first_ms, started.start_s)  # fmt: skip


def router_points(bench: RouterBench, plan: Plan) -> list[RouterPoint]:
    """Every router point of the plan, one dimension at a time from the shipped shape."""
    base = Shape(plan.nodes[0], plan.regions[0], plan.overrides[0])
    shapes = [("nodes", Shape(n, base.regions, base.overrides)) for n in plan.nodes]
    nodes_per_region = base.nodes // base.regions
    shapes += [("regions", Shape(r * nodes_per_region, r, base.overrides)) for r in plan.regions]
    shapes += [("overrides", Shape(base.nodes, base.regions, o)) for o in plan.overrides]
    wanted = [(dim, shape, TOPOLOGY_CLIENTS, True) for dim, shape in shapes]
    wanted += [("clients", base, n, False) for n in plan.clients]
    # Measured smallest topology first (shown in the table's order): the largest ones, likely
    # not up within their budget, go last, so no small point shares the health stub with
    # what a stopped router of thousands of nodes may leave in flight.
    for dim, shape, clients, warm in sorted(wanted, key=lambda w: w[1].nodes):
        bench.point(dim, shape, clients, warm=warm)
    points = [bench.point(dim, shape, clients, warm=warm) for dim, shape, clients, warm in wanted]
    for point in points:
        print(f"scaling: router {point.dimension}: {point.shape.label}, {point.clients:,} /24s: "
              f"{point.qps:,.0f} q/s, RSS {point.rss / MiB:,.1f} MiB", flush=True)  # fmt: skip
    return points


# --- the edge --------------------------------------------------------------------------

# wrk scripts. The loader asks /o/<first>…/o/<last> once each, in order, then repeats the
# last (a hit) until every one of them has been answered (the answers that are not hits),
# and exits: wrk itself would sit out its whole -d duration. wrk calls request() once after
# init() to check it and discards that request, hence the start one below `first`. The hit
# script asks /o/<1…count> uniformly at random.
FILL_LUA = """
local first, last, filled, n = 1, 0, 0, 0
function init(args) first = tonumber(args[1]); last = tonumber(args[2]); n = first - 2 end
function request()
  if n < last then n = n + 1 end
  return wrk.format("GET", "/o/" .. n)
end
function response(status, headers, body)
  local verdict = headers["Cache-Status"] or headers["cache-status"] or ""
  if not string.find(verdict, "hit") then
    filled = filled + 1
    if filled >= last - first + 1 then os.exit(0) end
  end
end
"""
HITS_LUA = """
local count = 1
function init(args) count = tonumber(args[1]); math.randomseed(16) end
function request() return wrk.format("GET", "/o/" .. math.random(1, count)) end
"""


def origin_conf(port: int, workdir: Path, *, as_root: bool) -> str:
    """nginx answering every path with the one OBJECT_BYTES file, cacheable for a day."""
    temp = workdir / "tmp"
    user = "user root;\n" if as_root else ""
    paths = "".join(
        f"  {kind}_temp_path {temp};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {workdir / 'nginx.pid'};\n"
        "error_log stderr warn;\nevents { worker_connections 4096; }\n"
        f"http {{\n  access_log off;\n{paths}"
        f"  server {{\n    listen {LOOPBACK}:{port};\n"
        f"    location / {{\n      root {workdir};\n      try_files /object =404;\n"
        "      default_type application/octet-stream;\n"
        '      add_header Cache-Control "public, max-age=86400";\n'
        "    }\n  }\n}\n"
    )


@contextlib.contextmanager
def object_origin(workdir: Path) -> Iterator[Endpoint]:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "tmp").mkdir(exist_ok=True)
    (workdir / "object").write_bytes(bytes(range(256)) * (OBJECT_BYTES // 256))
    port = free_port()
    (workdir / "nginx.conf").write_text(origin_conf(port, workdir, as_root=os.geteuid() == 0))
    argv = ["nginx", "-p", str(workdir), "-c", str(workdir / "nginx.conf"), "-e", "stderr"]
    with running("nginx-object-origin", argv) as service:
        service.wait_ready(lambda: tcp_accepts(LOOPBACK, port))
        yield Endpoint("nginx origin", LOOPBACK, port, service.pid)


@contextlib.contextmanager
def filled_edge(origin: Endpoint, harness: Harness) -> Iterator[tuple[Endpoint, str]]:
    """One `edge serve` with a cache far larger than the objects: content endpoint, control."""
    argv = [sys.executable, "-m", "edge", "serve", "--name", "edge-scaling"]
    argv += ["--origin", f"http://{origin.host}:{origin.port}", "--cache-size", EDGE_CACHE_SIZE]
    argv += ["--listen", f"{LOOPBACK}:0", "--control", f"{LOOPBACK}:0", "--drain-s", "0"]
    with running("edge-scaling", argv, ready_event=READY_EVENT) as service:
        fields = service.ready()
        harness.note_start("edge (scaling part)", service.pid)
        host, port = fields["content"].rsplit(":", 1)
        content = Endpoint("edge", host, int(port), service.pid)
        yield content, f"http://{fields['control']}"


@dataclass(slots=True)
class EdgeBench:
    edge: Endpoint
    control_url: str
    harness: Harness
    plan: Plan
    empty_rss: int = 0
    stored: int = 0
    spent_s: float = 0.0

    def start(self) -> None:
        """Settle the process (one miss and one hit of object 0) and take its empty RSS."""
        for _ in range(2):
            with urllib.request.urlopen(self._url("/o/0"), timeout=10.0) as response:
                response.read()
        self.empty_rss = rss_bytes(self.edge.pid)

    def _url(self, path: str) -> str:
        return f"http://{self.edge.host}:{self.edge.port}{path}"

    def _wrk(
        self, script: str, seconds: float, connections: int, args: Sequence[str]
    ) -> tuple[str, CpuShares]:
        path = self.harness.workdir / ("fill.lua" if script is FILL_LUA else "hits.lua")
        path.write_text(script)
        argv = ["wrk", "-t1", "-c", str(connections), "-d", f"{max(1.0, seconds):.0f}s"]
        argv += ["--latency", "-s", str(path), self._url("/"), "--", *args]
        measured = run_measured(argv, self.edge.pid, seconds + 60)
        self.harness.note_tool("wrk", measured.tool)
        return measured.output, measured.cpu

    def fill(self, target: int) -> tuple[float, bool]:
        """Objects up to `target` stored, or as many as the remaining budget allows."""
        remaining = self.plan.fill_budget_s - self.spent_s
        started = time.monotonic()
        out_of_budget = remaining < 1.0
        if self.stored < target and not out_of_budget:
            first, last = str(self.stored + 1), str(target)
            output, _ = self._wrk(FILL_LUA, remaining, LOADER_CONNECTIONS, [first, last])
            out_of_budget = WRK_SUMMARY in output  # printed only when -d ran out
        elapsed = time.monotonic() - started
        self.spent_s += elapsed
        self.stored = int(prometheus_sum(_metrics(self.control_url), "edge_cache_objects")) - 1
        return elapsed, out_of_budget

    def point(self, target: int) -> EdgePoint:
        fill_s, out_of_budget = self.fill(target)
        rss = rss_bytes(self.edge.pid)
        before = _metrics(self.control_url)
        output, cpu = self._wrk(HITS_LUA, self.plan.run_s, HIT_CONNECTIONS, [str(self.stored)])
        after = _metrics(self.control_url)
        rps, _p50, p99, errors = parse_wrk(output)
        answered = prometheus_sum(after, "edge_requests") - prometheus_sum(before, "edge_requests")
        hits = prometheus_sum(after, "edge_requests", 'cache="hit"') - prometheus_sum(
            before, "edge_requests", 'cache="hit"'
        )
        share = hits / answered if answered else math.nan
        return EdgePoint(target, self.stored, fill_s, out_of_budget, rss, self.empty_rss, rps,
                         p99, share, errors, cpu)  # fmt: skip


def edge_points(bench: EdgeBench) -> list[EdgePoint]:
    """The plan's object counts in turn, one cache filling up; stops when the budget is out."""
    bench.start()
    points = []
    for target in bench.plan.objects:
        point = bench.point(target)
        points.append(point)
        print(
            f"scaling: edge {point.stored:,} objects (filled in {point.fill_s:.0f} s): "
            f"{point.rps:,.0f} hits/s, {point.bytes_per_object:,.0f} B/object",
            flush=True,
        )
        if point.out_of_budget:
            break
    return points


# --- tables and curves -----------------------------------------------------------------

ROUTER_GROWS = {
    "nodes": "Nodes are spread over the 3 regions (2, 200, 2,000 per region); each query draws "
    "its answer by weight from every eligible node of its region (georouter/selector.py, "
    "`Selector._draw`: one weight per node per query), and each query shape keeps the "
    "encoded replies it gave per node list drawn.",
    "regions": "Two nodes per region; each region adds country claims, failover tables and "
    "encoded answers (the responder keeps 4,096), but no per-query loop runs over regions.",
    "overrides": "With the cache warm a placement is one dict lookup whatever the overrides; a "
    "cold /24 scans every override twice (georouter/geo.py: the first matching rule in "
    "`Geo._compute`, the ECS scope's edge in `Geo._uncut_prefix_len`), which the first-query "
    "curve shows.",
}


START_GROWS = (
    "Each node's first good probe changes its state, and every state change rebuilds and "
    "publishes the whole fleet snapshot (georouter/fleet.py `Fleet._set`; the selector "
    "re-derives its routes from it): n nodes coming up cost O(n²), and so would n edges' "
    "load reports each second. And a probe round is n HTTP requests at once from the one "
    "process (georouter/prober.py): 6,000 of them took 2.4 to 3 s of one core in aiohttp (with "
    "the stub answering in the same process), past the 0.5 s probe timeout, so late probes "
    "fail and the fleet does not come up."
)


def _clients_grows() -> str:
    return (
        "Two caches bound the warm path, both cleared when full: the responder's query shapes "
        f"({SHAPE_CACHE_ENTRIES:,} per transport, keyed by the whole query including its ECS "
        f"address) and the GeoIP placements ({GEO_CACHE_ENTRIES:,} networks, georouter/geo.py). "
        "A mix wider than a cache turns its hits into a full parse, or a MaxMind lookup and "
        "a placement."
    )


def crossed_limits(low: float, high: float) -> list[str]:
    """The router's cache limits a mix of `low` → `high` distinct /24s steps over."""
    limits = {"the query-shape cache": SHAPE_CACHE_ENTRIES, "the GeoIP cache": GEO_CACHE_ENTRIES}
    return [f"{name} ({size:,})" for name, size in limits.items() if low <= size < high]


def router_curves(points: Sequence[RouterPoint]) -> list[Curve]:
    """Throughput and RSS per dimension, and the first-query time against overrides."""
    curves: list[Curve] = []
    memory: list[Curve] = []
    for dimension, unit in (("nodes", "nodes"), ("regions", "regions"),
                            ("overrides", "overrides"), ("clients", "/24s")):  # fmt: skip
        chosen = [p for p in points if p.dimension == dimension]
        if not chosen:
            continue
        xs = tuple(float(_x(p)) for p in chosen)
        grows = ROUTER_GROWS.get(dimension) or _clients_grows()
        if dimension == "clients":
            grows += _limits_note(Curve("", unit, "", xs, tuple(p.qps for p in chosen), True))
        cost = ("CPU µs/query", tuple(p.cpu_us_per_query for p in chosen))
        curves.append(Curve(f"router q/s vs {unit}", unit, "q/s", xs,
                            tuple(p.qps for p in chosen), True, grows, cost))  # fmt: skip
        memory.append(Curve(f"router RSS vs {unit}", unit, "RSS MiB", xs,
                            tuple(p.rss / MiB for p in chosen), False))  # fmt: skip
    nodes = [p for p in points if p.dimension == "nodes"]
    if nodes:
        memory.append(Curve("router start vs nodes", "nodes", "start s",
                            tuple(float(p.shape.nodes) for p in nodes),
                            tuple(p.start_s for p in nodes), False, START_GROWS))  # fmt: skip
    overrides = [p for p in points if p.dimension == "overrides"]
    if overrides:
        memory.append(Curve("router first query of a /24 vs overrides", "overrides", "ms",
                            tuple(float(p.shape.overrides) for p in overrides),
                            tuple(p.first_query_ms for p in overrides), False,
                            ROUTER_GROWS["overrides"]))  # fmt: skip
    return curves + memory


def _limits_note(curve: Curve) -> str:
    index = curve.knee()
    if index is None:
        return ""
    crossed = crossed_limits(curve.xs[index - 1], curve.xs[index])
    return f" Between {curve.xs[index - 1]:,.0f} and {curve.xs[index]:,.0f} /24s the mix " + (
        f"outgrows {' and '.join(crossed)}." if crossed else "crosses none of these limits."
    )


def _x(point: RouterPoint) -> int:
    return {
        "nodes": point.shape.nodes,
        "regions": point.shape.regions,
        "overrides": point.shape.overrides,
    }.get(point.dimension, point.clients)


EDGE_GROWS = (
    "A hit is a dict lookup by key and a write of the stored entry, whatever the object "
    "count; what grows is the memory those lookups touch at random (the store's dicts and "
    "entries outgrow the CPU caches): the CPU µs per hit column tells the two apart."
)
OBJECT_GROWS = (
    "Per object the edge keeps the key, a CacheEntry with its header multidict and body, "
    "the store slot and the eviction queue's node; Python dicts grow by doubling, so a count "
    "just past a resize carries up to twice the table."
)


def edge_curves(points: Sequence[EdgePoint]) -> list[Curve]:
    xs = tuple(float(p.stored) for p in points)
    return [
        Curve("edge hits/s vs objects stored", "objects", "hits/s", xs,
              tuple(p.rps for p in points), True, EDGE_GROWS,
              ("CPU µs/hit", tuple(p.cpu_us_per_hit for p in points))),
        Curve("edge memory per object", "objects", "bytes/object", xs,
              tuple(p.bytes_per_object for p in points), False, OBJECT_GROWS),
    ]  # fmt: skip


def _start_cells(point: RouterPoint, budget_s: float) -> tuple[str, str]:
    if math.isinf(point.start_s):
        return f"> {budget_s:g}", "not up within the start budget"
    return fmt(point.start_s, 1), bottleneck(point.cpu, "dnsperf")


def router_table(points: Sequence[RouterPoint], plan: Plan) -> Table:
    rows = []
    for p in points:
        start, limited = _start_cells(p, plan.start_budget_s)
        rows.append([
            p.dimension, f"{p.shape.nodes:,}", str(p.shape.regions), f"{p.shape.overrides:,}",
            f"{p.clients:,}", start, fmt(p.qps), fmt(p.cpu_us_per_query, 1),
            fmt(100.0 * p.geoip_cache_share, 1), fmt(p.first_query_ms, 2), str(p.lost),
            fmt(p.rss / MiB, 1), fmt(p.cpu.server), limited,
        ])  # fmt: skip
    notes = [
        f"One router process per point (repeated topology points are one run shown under each "
        f"dimension); dnsperf -c 4 -q 200 at max rate for {plan.run_s:g} s, one round.",
        f"Start: seconds from exec until it answers with every node up (one probe round); a "
        f"router not up within {plan.start_budget_s:g} s is not measured (RSS read at the "
        "deadline): each node's first good probe rebuilds and publishes the whole fleet "
        "snapshot (georouter/fleet.py), so bringing n nodes up costs O(n²).",
        "CPU µs/query: the router's CPU over the run divided by the answers. GeoIP cache: "
        "share of the run's placements served from the per-network cache. First query: mean "
        "round trip of each /24's first query, asked one at a time before the run (topology "
        "points only; cold placements).",
        "Nodes are up from one probe round at start; there are no load reports and no "
        "further probes (scaling_inputs.PROBE_INTERVAL_S), so no control-plane work runs.",
        CPU_NOTE,
        EQUAL_TERMS_NOTE,
    ]
    columns = ["grown", "nodes", "regions", "overrides", "/24s", "start s", "q/s", "CPU µs/query",
               "GeoIP cache %", "first query ms", "lost", "RSS MiB", "server CPU %",
               "limited by"]  # fmt: skip
    return Table("Router: queries/s and memory as the work grows", columns, rows, notes)


def edge_table(points: Sequence[EdgePoint], run_s: float, budget_s: float) -> Table:
    rows = [
        [
            f"{p.target:,}", f"{p.stored:,}" + (" (budget)" if p.out_of_budget else ""),
            fmt(p.fill_s), fmt(p.rps), fmt(p.cpu_us_per_hit, 1), fmt(100.0 * p.hit_share, 1),
            fmt(p.p99_ms, 2), str(p.errors), fmt(p.rss / MiB, 1), fmt(p.bytes_per_object),
            fmt(p.cpu.server), bottleneck(p.cpu, "wrk"),
        ]
        for p in points
    ]  # fmt: skip
    notes = [
        f"{OBJECT_BYTES:,} B objects from an nginx origin; one edge process with a "
        f"{EDGE_CACHE_SIZE} cache; the loader has {budget_s:g} s for all points together "
        '("(budget)": it ran out, and the point holds what was stored).',
        f"wrk -t1 -c{HIT_CONNECTIONS} for {run_s:g} s over the stored objects, uniformly at "
        'random; hit %: edge_requests_total{cache="hit"} over all requests in the run.',
        "B/object: (RSS after the fill - RSS of the empty cache) / objects stored.",
        CPU_NOTE,
        EQUAL_TERMS_NOTE,
    ]
    columns = ["objects asked", "stored", "fill s", "hits/s", "CPU µs/hit", "hit %", "p99 ms",
               "errors", "RSS MiB", "B/object", "server CPU %", "limited by"]  # fmt: skip
    return Table("Edge: cache hits and memory per object as the cache fills", columns, rows, notes)


def knees(curves: Sequence[Curve]) -> str:
    """The part's generated paragraph: every curve's knee (or none) and its candidate causes."""
    return "Knees in this run:\n\n" + "\n".join(curve.knee_sentence() for curve in curves)


# --- the part --------------------------------------------------------------------------

ROUTER_FIGURE = "scaling-router.png"
EDGE_FIGURE = "scaling-edge.png"


@dataclass(slots=True)
class Results:
    """What one scaling run measured, and why a half was skipped if it was."""

    router: list[RouterPoint] = field(default_factory=list)
    edge: list[EdgePoint] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _missing(*tools: str) -> list[str]:
    return [tool for tool in tools if shutil.which(tool) is None]


def measure(harness: Harness, plan: Plan, shipped_path: Path, shipped: RouterConfig) -> Results:
    """Run both halves (each skipped, with the reason kept, if its tools are absent)."""
    results = Results()
    if missing := _missing("dnsperf"):
        results.skipped.append(f"Router half skipped: {', '.join(missing)} not installed.")
    else:
        with health_stub() as health_url:
            bench = RouterBench(shipped, shipped_path.read_text(), health_url, harness, plan)
            results.router = router_points(bench, plan)
    if missing := _missing("wrk", "nginx"):
        results.skipped.append(f"Edge half skipped: {', '.join(missing)} not installed.")
    else:
        with (
            object_origin(harness.workdir / "object-origin") as origin,
            filled_edge(origin, harness) as (edge, control_url),
        ):
            results.edge = edge_points(EdgeBench(edge, control_url, harness, plan))
    return results


def figures(results: Results, images: Path) -> list[str]:
    """Write the plots next to the report; Markdown lines linking them (relative to the page),
    or saying why there are none."""
    if why := matplotlib_missing():
        return [f"Plots skipped: {why}."]
    lines = []
    for name, curves, columns, title in (
        (ROUTER_FIGURE, router_curves(results.router), 4, "georouter: cost as the work grows"),
        (EDGE_FIGURE, edge_curves(results.edge), 2, "edge: cache hits as the cache fills"),
    ):
        if curves and any(len(c.xs) > 0 for c in curves):
            plot(images / name, curves, columns, title)
            lines.append(f"![{title}]({images.name}/{name})")
    return lines


def tables(results: Results, plan: Plan) -> list[Table]:
    found = []
    if results.router:
        found.append(router_table(results.router, plan))
    if results.edge:
        found.append(edge_table(results.edge, plan.run_s, plan.fill_budget_s))
    return found


def intro(results: Results, figure_lines: Sequence[str]) -> str:
    """The part's text: the module docstring's method, the skips, the plots, the knees."""
    curves = router_curves(results.router) + (edge_curves(results.edge) if results.edge else [])
    paragraphs = [report_intro(__doc__), *results.skipped, *figure_lines]
    if curves:
        paragraphs.append(knees(curves))
    return "\n\n".join(paragraphs)
