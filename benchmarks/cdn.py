"""Our own programs under test, started as real processes on loopback: origin, edges, router.

Each is the installed console entry point, exactly as an operator runs it, with ports
chosen by the kernel (port 0) and read back from its `event=listening` line. The router's
topology is georouter/data/cdn.toml with each node's control URL pointed at the edge started for it.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks.processes import START_TIMEOUT_S, Endpoint, free_port
from cdn.config import HostPort, parse_host_port
from cdnlab.origin import ORIGIN_ROOT
from cdnlab.supervisor import READY_EVENT, Running, running, spawn
from georouter.config import DEFAULT_CONFIG, RouterConfig

REPO = Path(__file__).resolve().parent.parent
DEMO_ROOT = ORIGIN_ROOT
TOPOLOGY = DEFAULT_CONFIG
LOOPBACK = "127.0.0.1"
BENCH_TOKEN = "bench-token"
NODES_UP_TIMEOUT_S = 20.0


def _bound(service: Running, *keys: str) -> list[HostPort]:
    """The addresses a child's ready line (`event=listening key=HOST:PORT ...`) names."""
    fields = service.ready(START_TIMEOUT_S)
    return [parse_host_port(fields[key]) for key in keys]


@contextlib.contextmanager
def origin(root: Path = DEMO_ROOT) -> Iterator[Endpoint]:
    """The demo origin (cdnlab.origin) serving `root` (the packaged cdnlab/content/)."""
    argv = [sys.executable, "-m", "cdnlab.origin", "--listen", f"{LOOPBACK}:0"]
    with running("origin", [*argv, "--root", str(root)], ready_event=READY_EVENT) as service:
        (bound,) = _bound(service, "origin")
        yield Endpoint("origin", bound.host, bound.port, service.pid)


@dataclass(frozen=True, slots=True)
class Edge:
    """A running edge: its content endpoint, its control port and its process."""

    name: str
    content: Endpoint
    control_url: str
    service: Running

    @property
    def ports(self) -> tuple[int, int]:
        return self.content.port, int(self.control_url.rsplit(":", 1)[1])


def start_edge(
    name: str,
    host: str,
    origin_url: str,
    routers: list[str],
    ports: tuple[int, int] = (0, 0),
    parents: tuple[str, ...] = (),
    config: Path | None = None,
) -> Edge:
    """`edge serve` on `host` (content and control `ports`, 0: the kernel's choice), filling
    from `parents` (shields' content URLs) if any; `config`: an edge TOML under the flags.

    The caller stops it by PID (`Edge.service`).
    """
    argv = [sys.executable, "-m", "edge", "serve", "--name", name, "--origin", origin_url]
    argv += ["--listen", f"{host}:{ports[0]}", "--control", f"{host}:{ports[1]}"]
    # No drain on SIGTERM: the default 25 s would outlast the supervisor's grace (a SIGKILL).
    argv += ["--token", BENCH_TOKEN, "--drain-s", "0"]
    if config is not None:
        argv += ["--config", str(config)]
    for router in routers:
        argv += ["--router", router]
    for parent in parents:
        argv += ["--parent", parent]
    service = spawn(name, argv, ready_event=READY_EVENT)
    try:
        content, control = _bound(service, "content", "control")
    except BaseException:
        service.stop()
        raise
    return Edge(
        name, Endpoint(name, content.host, content.port, service.pid), f"http://{control}", service
    )


@contextlib.contextmanager
def edge(
    name: str, origin_url: str, routers: list[str] | None = None, config: Path | None = None
) -> Iterator[Edge]:
    started = start_edge(name, LOOPBACK, origin_url, routers or [], config=config)
    try:
        yield started
    finally:
        started.service.stop()


def bench_topology(
    config: RouterConfig, control_urls: dict[str, str], base: str | None = None
) -> str:
    """georouter/data/cdn.toml (or `base`, a topology in its shape) with each node's
    control_url replaced and one shared bench token (router.token) in place of the nodes'
    and the operator's own: every bench edge, and the harness's purges and pre-warms, use it."""
    text = TOPOLOGY.read_text() if base is None else base
    for node in config.nodes:
        pattern = rf'(name = "{re.escape(node.name)}"[^\[]*?control_url = )"[^"]*"'
        text = re.sub(pattern, rf'\1"{control_urls[node.name]}"', text, count=1)
    text = re.sub(r'(?m)^(operator_)?token = "[^"]*".*\n', "", text)
    return text.replace("[router]\n", f'[router]\ntoken = "{BENCH_TOKEN}"\n', 1)


@dataclass(frozen=True, slots=True)
class Router:
    """A running `georouter serve`: its DNS endpoint and control base URL."""

    dns: Endpoint
    control_url: str
    service: Running


def all_nodes_up(router_url: str) -> bool:
    """True when the router's /healthz counts every node of its topology up."""
    try:
        with urllib.request.urlopen(f"{router_url}/healthz", timeout=1.0) as response:
            health = json.load(response)
    except (OSError, ValueError):
        return False
    return bool(health.get("nodes_total")) and health["nodes_up"] == health["nodes_total"]


def all_channels_open(router_url: str, nodes: int) -> bool:
    """True when the router counts a report channel open for each of `nodes` edges
    (`georouter_channels_open`). Until then an edge that started before its router is still
    backing off its first report, and a crash of it would be noticed by the probes only."""
    try:
        with urllib.request.urlopen(f"{router_url}/metrics", timeout=1.0) as response:
            text = response.read().decode()
    except OSError:
        return False
    found = re.search(r"(?m)^georouter_channels_open ([0-9.e+]+)$", text)
    return found is not None and float(found.group(1)) >= nodes


@dataclass(frozen=True, slots=True)
class Cdn:
    """Six edges of the shipped topology and a router that probes them and takes their reports."""

    router: Router
    edges: dict[str, Edge]


@contextlib.contextmanager
def cdn(config: RouterConfig, workdir: Path, origin_url: str) -> Iterator[Cdn]:
    """Every node of the topology as a real edge on its own loopback address, and a router
    (a shield runs as a plain edge here: probed and reporting, never answered).

    The router's control port must be known before the edges start (they push reports to
    it), so it is picked free first; the edges' ports come from their listening lines.
    """
    control_port = free_port()
    router_url = f"http://{LOOPBACK}:{control_port}"
    edges: dict[str, Edge] = {}
    try:
        for node in config.nodes:
            host = str(node.ipv4) if node.ipv4 else LOOPBACK
            edges[node.name] = start_edge(node.name, host, origin_url, [router_url])
        config_path = workdir / "cdn.toml"
        config_path.write_text(bench_topology(config, {n: e.control_url for n, e in edges.items()}))
        argv = [sys.executable, "-m", "georouter", "serve", "--config", str(config_path)]
        argv += ["--dns", f"{LOOPBACK}:0", "--control", f"{LOOPBACK}:{control_port}"]
        with running("georouter", argv, ready_event=READY_EVENT) as service:
            (bound,) = _bound(service, "dns")
            dns = Endpoint("georouter", bound.host, bound.port, service.pid)
            service.wait_ready(lambda: all_nodes_up(router_url), timeout_s=NODES_UP_TIMEOUT_S)
            service.wait_ready(
                lambda: all_channels_open(router_url, len(edges)), timeout_s=NODES_UP_TIMEOUT_S
            )
            yield Cdn(Router(dns, router_url, service), edges)
    finally:
        for started in edges.values():
            started.service.stop()


@contextlib.contextmanager
def router_with_workers(workdir: Path, workers: int) -> Iterator[Endpoint]:
    """A second router on the CDN's topology answering UDP from `workers` processes.

    It takes no load reports (the edges report to the first router); its own probes find
    the same edges up, so it answers from the same healthy fleet.
    """
    config_path = workdir / f"cdn-{workers}-workers.toml"
    topology = (workdir / "cdn.toml").read_text()
    setting = f"[router]\ndns_workers = {workers}\n"
    config_path.write_text(topology.replace("[router]\n", setting, 1))
    argv = [sys.executable, "-m", "georouter", "serve", "--config", str(config_path)]
    argv += ["--dns", f"{LOOPBACK}:0", "--control", f"{LOOPBACK}:0"]
    with running(f"georouter-{workers}w", argv, ready_event=READY_EVENT) as service:
        dns, control = _bound(service, "dns", "control")
        control_url = f"http://{control}"
        service.wait_ready(lambda: all_nodes_up(control_url), timeout_s=NODES_UP_TIMEOUT_S)
        name = f"georouter ({workers} workers)"
        yield Endpoint(name, dns.host, dns.port, service.pid)
