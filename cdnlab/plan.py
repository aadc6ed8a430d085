"""What `georouter demo` runs and prints, derived from the router config alone.

- the origin listens on the router's control host, port 8000 (127.0.0.1:8000 by default);
- each node's edge serves content on its ipv4, port 8080, and its control API on the host
  and port of its `control_url`; it reports to the router's control address;
- with HTTPS (the default: `DemoPlan.tls`, cdnlab/certs.py), each edge also serves HTTPS on
  its ipv4, port 8443, with one [[sites]] per service name of the first zone (cdn., img.,
  api., chat.example.com: the social app);
- nodes with `role = "shield"` run as shields: edges like the others (content on their
  ipv4, port 8080; plain HTTP, the same sites) whose origin is the origin, and every edge
  names them all as its parents (`--parent`), so a miss goes edge → shield → origin;
- the router listens where `[router]` says.
So a second config with other addresses runs a second, independent demo beside the first.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cdn.config import HostPort
from cdnlab.certs import DemoTls
from cdnlab.supervisor import ChildSpec, DemoError, Transport
from georouter.config import RouterConfig
from georouter.credentials import Credentials

ORIGIN_PORT = 8000
CONTENT_PORT = 8080
TLS_PORT = 8443
DEMO_DRAIN_S = 2.0  # edges drain this long on SIGTERM: Ctrl-C should not take 25 s
DEMO_CACHE_SIZE = "64M"
SAMPLE_OBJECT = "/img/cat.jpg"
# Stop layers (ChildSpec.layer): the router stops answering first, then the edges drain
# (still fetching through the shields), then the shields, then the origin stops.
ORIGIN_LAYER, SHIELD_LAYER, EDGE_LAYER, ROUTER_LAYER = 0, 1, 2, 3
# Client subnets the embedded GeoLite2-City (2018) places in each default region
# (checked with `georouter locate` and by tests/test_demo_e2e.py).
SAMPLE_SUBNETS: dict[str, tuple[str, str]] = {
    "eu": ("185.60.216.0/24", "IE"),
    "na": ("8.8.8.0/24", "US"),
    "ap": ("1.0.16.0/24", "JP"),
}


@dataclass(frozen=True, slots=True)
class EdgePlan:
    name: str
    region: str
    content: HostPort
    control: HostPort
    capacity_rps: float
    token: str = ""  # its own credential: reports to the router, purges from it


@dataclass(frozen=True, slots=True)
class DemoPlan:
    config_path: Path
    geoip_path: Path | None
    token: str  # the operator's: drain, weight, purge (router.operator_token)
    origin: HostPort
    dns: HostPort
    control: HostPort
    service: str  # a geo-routed name without the trailing dot, e.g. cdn.example.com
    edges: tuple[EdgePlan, ...]
    content_port: int = CONTENT_PORT
    drain_s: float = DEMO_DRAIN_S
    names: tuple[str, ...] = ()  # every service name of the first zone: the edges' sites
    tls_port: int = TLS_PORT
    tls: DemoTls | None = None  # None: plain HTTP only (set by the runner once made)
    shields: tuple[EdgePlan, ...] = ()  # role = "shield" nodes: every edge's parents

    @property
    def nodes(self) -> tuple[EdgePlan, ...]:
        """Every node the router knows: the edges, then the shields."""
        return (*self.edges, *self.shields)

    @property
    def control_url(self) -> str:
        return f"http://{self.control}"

    @property
    def origin_url(self) -> str:
        return f"http://{self.origin}"


def _control_address(url: str) -> HostPort:
    parts = urlsplit(url)
    return HostPort(parts.hostname or "127.0.0.1", parts.port or 80)


def make_plan(
    config: RouterConfig,
    config_path: Path,
    geoip_path: Path | None,
    *,
    origin_port: int = ORIGIN_PORT,
    content_port: int = CONTENT_PORT,
    drain_s: float = DEMO_DRAIN_S,
    tls_port: int = TLS_PORT,
) -> DemoPlan:
    """The demo for `config`: only nodes with an IPv4 address get an edge (content on it).

    Raises DemoError naming the config key if the demo would have nothing to serve: no name
    in the first zone's `services`, or no node with an `ipv4`. The keyword arguments exist
    for tests, which run whole CDNs on ports of their choosing.
    """
    control = config.router.control_listen
    credentials = Credentials.of(config)
    edges = _edges(config, content_port, credentials)
    if not config.zones[0].services:
        raise DemoError(f"{config.source}: zones[0].services: expected a name to serve")
    return DemoPlan(
        config_path=config_path,
        geoip_path=geoip_path if geoip_path is not None else config.router.geoip,
        token=credentials.operator[0],
        origin=HostPort(control.host, origin_port),
        dns=config.router.dns_listen,
        control=control,
        service=config.zones[0].services[0].rstrip("."),
        edges=edges,
        content_port=content_port,
        drain_s=drain_s,
        names=_names(config),
        tls_port=tls_port,
        shields=_nodes(config, content_port, credentials, "shield"),
    )


def _names(config: RouterConfig) -> tuple[str, ...]:
    return tuple(name.rstrip(".") for name in config.zones[0].services)


def _nodes(
    config: RouterConfig, content_port: int, credentials: Credentials, role: str
) -> tuple[EdgePlan, ...]:
    return tuple(
        EdgePlan(
            name=node.name,
            region=node.region,
            content=HostPort(str(node.ipv4), content_port),
            control=_control_address(node.control_url),
            capacity_rps=node.capacity_rps,
            token=credentials.node_token(node.name),
        )
        for node in config.nodes
        if node.ipv4 is not None and node.role == role
    )


def _edges(
    config: RouterConfig, content_port: int, credentials: Credentials
) -> tuple[EdgePlan, ...]:
    edges = _nodes(config, content_port, credentials, "edge")
    if not edges:
        # The edges serve content on loopback IPv4 addresses; an IPv6-only fleet has none.
        raise DemoError(f"{config.source}: nodes: expected a node with an ipv4 address")
    return edges


def addresses_needed(plan: DemoPlan) -> list[tuple[str, int, Transport]]:
    """Every address a child will listen on, for the busy-port check before starting."""
    needed: list[tuple[str, int, Transport]] = [
        (plan.origin.host, plan.origin.port, "tcp"),
        (plan.dns.host, plan.dns.port, "udp"),
        (plan.dns.host, plan.dns.port, "tcp"),
        (plan.control.host, plan.control.port, "tcp"),
    ]
    for edge in plan.edges:
        needed.append((edge.content.host, edge.content.port, "tcp"))
        needed.append((edge.control.host, edge.control.port, "tcp"))
        needed.append((edge.content.host, plan.tls_port, "tcp"))
    for shield in plan.shields:
        needed.append((shield.content.host, shield.content.port, "tcp"))
        needed.append((shield.control.host, shield.control.port, "tcp"))
    return needed


def origin_spec(plan: DemoPlan) -> ChildSpec:
    argv = (sys.executable, "-m", "cdnlab.origin", "--listen", str(plan.origin))
    return ChildSpec("origin", argv, layer=ORIGIN_LAYER)


def router_spec(plan: DemoPlan) -> ChildSpec:
    argv = [sys.executable, "-m", "georouter", "serve", "--config", str(plan.config_path)]
    if plan.geoip_path is not None:
        argv += ["--geoip", str(plan.geoip_path)]
    return ChildSpec("router", tuple(argv), layer=ROUTER_LAYER)


def edge_spec(plan: DemoPlan, edge: EdgePlan) -> ChildSpec:
    argv: tuple[str, ...] = (
        sys.executable, "-m", "edge", "serve",
        "--name", edge.name,
        "--listen", str(edge.content),
        "--control", str(edge.control),
        "--origin", plan.origin_url,
        "--router", plan.control_url,
        "--token", edge.token,
        "--capacity-rps", f"{edge.capacity_rps:g}",
        "--cache-size", DEMO_CACHE_SIZE,
        "--drain-s", f"{plan.drain_s:g}",
    )  # fmt: skip
    if edge in plan.shields:
        # A shield serves the edges only: plain HTTP, the same sites (so it routes and keys
        # by the client's Host exactly as they do).
        if plan.tls is not None:
            argv += ("--config", str(plan.tls.edge_config))
        return ChildSpec(edge.name, argv, layer=SHIELD_LAYER)
    for shield in plan.shields:
        argv += ("--parent", f"http://{shield.content}")
    if plan.tls is not None:
        argv += (
            "--config", str(plan.tls.edge_config),
            "--tls-listen", f"{edge.content.host}:{plan.tls_port}",
            "--tls-cert", str(plan.tls.cert),
            "--tls-key", str(plan.tls.key),
        )  # fmt: skip
    return ChildSpec(edge.name, argv, layer=EDGE_LAYER)


def _first_edge(plan: DemoPlan, region: str) -> EdgePlan:
    return next((e for e in plan.edges if e.region == region), plan.edges[0])


FEED_PAGE = "/feed.html"


def browser_command(plan: DemoPlan, edge: EdgePlan) -> str:
    """Chromium on the social app through `edge`: every demo name maps to its address."""
    assert plan.tls is not None
    rules = shlex.quote(f"--host-resolver-rules=MAP *.{_domain(plan)} {edge.content.host}")
    spki = shlex.quote(f"--ignore-certificate-errors-spki-list={plan.tls.spki}")
    user_dir = plan.tls.ca.parent / "chromium"
    url = f"https://{plan.service}:{plan.tls_port}{FEED_PAGE}"
    return f"chromium {rules} {spki} --user-data-dir={user_dir} {url}"


def _domain(plan: DemoPlan) -> str:
    return plan.service.split(".", 1)[1] if "." in plan.service else plan.service


def _https_guide(plan: DemoPlan, edge: EdgePlan) -> list[str]:
    if plan.tls is None:
        return []
    ca, host = shlex.quote(str(plan.tls.ca)), edge.content.host
    img = next((n for n in plan.names if n.startswith("img.")), plan.service)
    api = next((n for n in plan.names if n.startswith("api.")), plan.service)
    return [
        f"HTTPS and the social app (sites {', '.join(plan.names)}; the CA is made fresh at"
        " every start):",
        f"  curl -sI --cacert {ca} --resolve {img}:{plan.tls_port}:{host}"
        f" https://{img}:{plan.tls_port}{SAMPLE_OBJECT}",
        f"  curl -s --cacert {ca} --resolve {api}:{plan.tls_port}:{host}"
        f" https://{api}:{plan.tls_port}/api/posts",
        f"  {browser_command(plan, edge)}",
        f"  # or plain HTTP: http://{host}:{plan.content_port}{FEED_PAGE}",
        "",
    ]


def _shield_guide(plan: DemoPlan) -> list[str]:
    if not plan.shields:
        return []
    names = ", ".join(s.name for s in plan.shields)
    return [
        f'Every edge fills from the shields {names} (role = "shield": probed and listed,'
        " never in DNS answers), which fill from the origin. Cache-Status names both layers,"
        " the shield first.",
        "",
    ]


def guide(plan: DemoPlan, log_dir: Path, pids: dict[str, int]) -> str:
    """The commands to try, each runnable exactly as printed."""
    dns, token = plan.dns, shlex.quote(f"Authorization: Bearer {plan.token}")
    edge = _first_edge(plan, "eu")
    obj = f"http://{edge.content}{SAMPLE_OBJECT}"
    purge = shlex.quote(f'{{"url": "{obj}"}}')
    lines = [f"georouter demo: a CDN on loopback (logs in {log_dir})", "", "Ask the router:"]
    for region, (subnet, country) in SAMPLE_SUBNETS.items():
        if any(e.region == region for e in plan.edges):
            dig = f"dig @{dns.host} -p {dns.port} {plan.service} +subnet={subnet}"
            lines.append(f"  {dig}    # {country} → {region}")
    lines += [
        "",
        *_shield_guide(plan),
        f"Fetch from {edge.name} twice (Cache-Status: miss, then hit), then purge it on"
        " every edge through the router:",
        f"  curl -sI {obj}",
        f"  curl -sI {obj}",
        f"  curl -s -H {token} -d {purge} {plan.control_url}/api/v1/purge",
        "",
        f"Pre-warm it on the {edge.region} edges through the router (each says fetched or"
        " already cached):",
        f"  georouter prewarm --config {shlex.quote(str(plan.config_path))} --region"
        f" {edge.region} --wait 5 http://{plan.service}{SAMPLE_OBJECT}",
        "",
        "Watch the router:",
        f"  curl -s {plan.control}/metrics | grep georouter_answers",
        f"  curl -s {plan.control}/api/v1/nodes",
        f"  curl -s -X POST -H {token} {plan.control_url}/api/v1/nodes/{edge.name}/drain",
        "  # (a drain is kept across restarts: .../undrain puts the node back)",
        "",
        *_https_guide(plan, edge),
        f"Crash {edge.name} and watch the answers move (the table below follows):",
        f"  kill -9 {pids.get(edge.name, '<pid>')}",
        "",
        "Stop everything: Ctrl-C",
    ]
    return "\n".join(lines)
