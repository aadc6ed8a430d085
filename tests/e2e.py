"""Whole-CDN fixtures for end-to-end tests: real processes on fresh loopback addresses.

`start_cdn()` runs the shipped topology (data/cdn.toml) relocated to a random 127.A.B.0/24
block with ephemeral ports: origin, six edges and the router, started exactly as
`georouter demo` starts them (same argv builders), and stopped by PID on exit. Nothing a
developer's running `make demo` (127.0.0.0/24, fixed ports) uses can collide with it.

Also here: generated configs for the external oracles (unbound, Prometheus) and the check
that every address in them is on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import shutil
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rdatatype
import yaml

from cdn.config import HostPort
from georouter.config import load_config
from georouter.demo.plan import DemoPlan, edge_spec, make_plan
from georouter.demo.runner import start_all
from georouter.demo.supervisor import Child, Supervisor

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "data" / "cdn.toml"
PROMETHEUS_YML = REPO / "data" / "prometheus" / "prometheus.yml"
ALERTS_YML = REPO / "data" / "prometheus" / "alerts.yml"
GRAFANA_JSON = REPO / "data" / "grafana" / "georouter.json"
TOKEN = "e2e-token"
SERVICE = "cdn.example.com"
SUBNETS = {"eu": "185.60.216.0/24", "na": "8.8.8.0/24", "ap": "1.0.16.0/24"}
POLL_S = 0.05
TRANSIENT = (OSError, aiohttp.ClientError, TimeoutError, dns.exception.DNSException)
T = TypeVar("T")


def free_port(host: str, kind: int = socket.SOCK_STREAM) -> int:
    """A port the kernel just handed out on host (free now; tests bind it right after)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def loopback_block(rng: random.Random | None = None) -> str:
    """A random '127.A.B.' prefix outside 127.0.0.0/16, where the demo and CI fixtures live."""
    rng = rng or random.Random()
    return f"127.{rng.randrange(100, 250)}.{rng.randrange(1, 255)}."


def relocate_config(text: str, block: str, ports: dict[str, int], token: str = TOKEN) -> str:
    """The shipped topology with every address moved into `block` and every port replaced.

    ports: "dns", "control" (the router) and one per node name (its control port).
    """
    raw = tomllib.loads(text)
    out = text.replace(raw["router"]["token"], token)
    out = out.replace(raw["router"]["dns_listen"], f"{block}1:{ports['dns']}")
    out = out.replace(raw["router"]["control_listen"], f"{block}1:{ports['control']}")
    for node in raw["nodes"]:
        octet = node["ipv4"].rsplit(".", 1)[1]
        address = f"{block}{octet}"
        url = f"http://{address}:{ports[node['name']]}"
        out = out.replace(f'"{node["control_url"]}"', f'"{url}"')
        out = out.replace(f'"{node["ipv4"]}"', f'"{address}"')
    return out


@dataclass
class Cdn:
    """A running CDN: the plan it was started from and the supervisor owning its processes."""

    plan: DemoPlan
    supervisor: Supervisor
    config_path: Path

    @property
    def dns(self) -> HostPort:
        return self.plan.dns

    def ip(self, node: str) -> str:
        return next(e.content.host for e in self.plan.edges if e.name == node)

    def ips(self, region: str) -> set[str]:
        return {e.content.host for e in self.plan.edges if e.region == region}

    def content_url(self, node: str, path: str) -> str:
        return f"http://{self.ip(node)}:{self.plan.content_port}{path}"

    def child(self, node: str) -> Child:
        return self.supervisor.by_name(node)

    async def restart_edge(self, node: str) -> None:
        edge = next(e for e in self.plan.edges if e.name == node)
        await self.supervisor.start(edge_spec(self.plan, edge))

    async def resolve(self, subnet: str, name: str = SERVICE) -> list[str]:
        """A records the router answers for `name` to a client in `subnet` (ECS, RFC 7871)."""
        return await resolve(self.dns, subnet, name)

    async def nodes(self, session: aiohttp.ClientSession) -> dict[str, dict[str, Any]]:
        async with session.get(f"{self.plan.control_url}/api/v1/nodes") as response:
            body = await response.json()
        return {n["name"]: n for n in body["nodes"]}


async def resolve(server: HostPort, subnet: str, name: str = SERVICE) -> list[str]:
    ecs = dns.edns.ECSOption.from_text(subnet)
    query = dns.message.make_query(name, "A", use_edns=0, options=[ecs])
    response = await dns.asyncquery.udp(query, server.host, port=server.port, timeout=2.0)
    return [
        r.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for r in rrset
    ]


async def poll(
    probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], deadline_s: float, what: str
) -> T:
    """Call probe until ok(result) or the deadline passes (then fail naming the last result)."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while True:
        with contextlib.suppress(*TRANSIENT):
            last = await probe()
            if ok(last):
                return last
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached within {deadline_s} s (last: {last!r})")
        await asyncio.sleep(POLL_S)


@contextlib.asynccontextmanager
async def start_cdn(
    tmp_path: Path, *, drain_s: float = 0.5, edit: Callable[[str], str] = str
) -> AsyncIterator[Cdn]:
    """Origin, six edges and the router on a fresh loopback block; every node up on exit.

    `edit` rewrites the router's config text (the shipped topology, relocated) first."""
    block = loopback_block()
    router_host = f"{block}1"
    raw = tomllib.loads(SHIPPED_CONFIG.read_text())
    ports = {"dns": free_dns_port(router_host), "control": free_port(router_host)}
    for node in raw["nodes"]:
        ports[node["name"]] = free_port(block + node["ipv4"].rsplit(".", 1)[1])
    config_path = tmp_path / "cdn.toml"
    config_path.write_text(edit(relocate_config(SHIPPED_CONFIG.read_text(), block, ports)))
    edge_hosts = [block + n["ipv4"].rsplit(".", 1)[1] for n in raw["nodes"]]
    plan = make_plan(
        load_config(config_path),
        config_path,
        None,
        origin_port=free_port(router_host),
        content_port=_port_free_on_all(edge_hosts),
        drain_s=drain_s,
    )
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    supervisor = Supervisor(log_dir)
    try:
        await start_all(supervisor, plan)
        cdn = Cdn(plan, supervisor, config_path)
        await wait_all_up(cdn)
        yield cdn
    finally:
        await supervisor.stop_all()


async def wait_all_up(cdn: Cdn, deadline_s: float = 10.0) -> None:
    names = {e.name for e in cdn.plan.edges}
    async with aiohttp.ClientSession() as session:
        await poll(
            lambda: cdn.nodes(session),
            lambda nodes: {n for n, s in nodes.items() if s["state"] == "up"} == names,
            deadline_s,
            "every node up",
        )


def free_dns_port(host: str) -> int:
    for _ in range(50):
        port = free_port(host, socket.SOCK_DGRAM)
        with socket.socket() as sock, contextlib.suppress(OSError):
            sock.bind((host, port))
            return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def _port_free_on_all(hosts: list[str]) -> int:
    for _ in range(50):
        port = free_port(hosts[0])
        if all(_tcp_free(h, port) for h in hosts[1:]):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def _tcp_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


# ---- external oracles: generated configs and the loopback-only check ----------------------


def unbound_config(workdir: Path, port: int, router: HostPort) -> str:
    """An unbound that serves example.com from our router only, forwarding ECS to it.

    Nothing can leave the machine: every other name is refused (local-zone "." refuse),
    the only upstreams are loopback stubs, and queries go out from 127.0.0.1, which the
    kernel will not route anywhere else. No root hints, no trust anchor, no validator.
    """
    # verbosity 4 logs every upstream target, so a test can check where queries went.
    return f"""server:
    verbosity: 4
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    outgoing-interface: 127.0.0.1
    access-control: 127.0.0.0/8 allow
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: "{workdir}/unbound.log"
    num-threads: 1
    module-config: "subnetcache iterator"
    do-not-query-localhost: no
    send-client-subnet: 127.0.0.1
    send-client-subnet: {router.host}
    max-client-subnet-ipv4: 24
    qname-minimisation: no
    prefetch: no
    target-fetch-policy: "0 0 0 0 0"
    local-zone: "." refuse
    local-zone: "example.com." transparent

stub-zone:
    name: "example.com"
    stub-addr: {router.host}@{router.port}

remote-control:
    control-enable: no
"""


UNBOUND_ADDRESS_KEYS = frozenset(
    {"interface", "outgoing-interface", "send-client-subnet", "stub-addr", "forward-addr"}
)
# Any of these would make unbound reach for the real root or validate against it.
UNBOUND_FORBIDDEN_KEYS = frozenset(
    {"root-hints", "auto-trust-anchor-file", "trust-anchor-file", "trust-anchor", "forward-zone"}
)


def unbound_settings(conf: str) -> list[tuple[str, str]]:
    """(key, value) for every `key: value` line of an unbound config, quotes removed."""
    pairs = []
    for line in conf.splitlines():
        key, sep, value = line.split("#", 1)[0].strip().partition(":")
        if sep:
            pairs.append((key, value.strip().strip('"')))
    return pairs


def unbound_upstreams(conf: str) -> list[str]:
    """Every address in an unbound config (`host@port` → host, `net/len` → net)."""
    return [
        value.split("@")[0].split("/")[0]
        for key, value in unbound_settings(conf)
        if key in UNBOUND_ADDRESS_KEYS
    ]


def prometheus_config(
    scrape_interval_s: float, router: HostPort, edges: dict[str, HostPort]
) -> str:
    """The shipped prometheus.yml with the test's targets and a short interval.

    Edge targets are matched by their `node` label, so the shipped labels stay as shipped.
    """
    cfg = yaml.safe_load(PROMETHEUS_YML.read_text())
    interval = f"{int(scrape_interval_s * 1000)}ms"
    cfg["global"].update(
        scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval
    )
    cfg["rule_files"] = [str(ALERTS_YML)]
    for job in cfg["scrape_configs"]:
        for static in job["static_configs"]:
            if job["job_name"] == "georouter":
                static["targets"] = [str(router)]
            else:
                static["targets"] = [str(edges[static["labels"]["node"]])]
    return yaml.safe_dump(cfg, sort_keys=False)


def prometheus_targets(cfg: dict[str, Any]) -> list[str]:
    """Every host a Prometheus config sends anything to: targets, alertmanagers, remote r/w."""
    hosts = [
        t.rsplit(":", 1)[0]
        for job in cfg.get("scrape_configs", [])
        for static in job.get("static_configs", [])
        for t in static.get("targets", [])
    ]
    for am in cfg.get("alerting", {}).get("alertmanagers", []):
        hosts += [t.rsplit(":", 1)[0] for s in am.get("static_configs", []) for t in s["targets"]]
    for section in ("remote_write", "remote_read"):
        hosts += [urlsplit(r["url"]).hostname or r["url"] for r in cfg.get(section, [])]
    return hosts


def non_loopback(hosts: Iterable[str]) -> list[str]:
    """The hosts that are not literal 127.0.0.0/8 or ::1 addresses (names count as remote)."""
    bad = []
    for host in hosts:
        try:
            address = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            bad.append(host)
            continue
        if not address.is_loopback:
            bad.append(host)
    return bad


def which(binary: str) -> str | None:
    return shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()),
        None,
    )
