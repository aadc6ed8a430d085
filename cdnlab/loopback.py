"""The whole CDN on a fresh loopback block, for end-to-end tests: real processes, real ports.

`start_cdn()` runs the shipped topology (georouter/data/cdn.toml) relocated to a random
127.A.B.0/24 block with ephemeral ports: origin, six edges and the router, started exactly as
the demo starts them (same argv builders, same supervisor), and stopped by PID on exit.
Nothing a developer's running `make demo` (127.0.0.0/24, fixed ports) uses can collide with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rdatatype

from cdn.config import HostPort
from cdnlab.plan import DemoPlan, edge_spec, make_plan
from cdnlab.runner import start_all, with_tls
from cdnlab.supervisor import Child, Supervisor
from georouter.config import DEFAULT_CONFIG, load_config

SHIPPED_CONFIG = DEFAULT_CONFIG
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
    `token` replaces the operator's token (and a shared router.token); the nodes keep theirs.
    """
    raw = tomllib.loads(text)
    out = text
    for key in ("operator_token", "token"):
        if key in raw["router"]:
            out = out.replace(f'"{raw["router"][key]}"', f'"{token}"')
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

    def tls_url(self, node: str, path: str, name: str = SERVICE) -> str:
        """An https:// URL on `name`: reach it by connecting to `self.ip(node)` (no DNS)."""
        return f"https://{name}:{self.plan.tls_port}{path}"

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
            result = last = await probe()
            if ok(result):
                return result
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not reached within {deadline_s} s (last: {last!r})")
        await asyncio.sleep(POLL_S)


@contextlib.asynccontextmanager
async def start_cdn(
    tmp_path: Path,
    *,
    drain_s: float = 0.5,
    router_settings: str = "",
    extra: str = "",
    edit: Callable[[str], str] = str,
    tls: bool = False,
) -> AsyncIterator[Cdn]:
    """Origin, six edges and the router on a fresh loopback block; every node up on exit.

    router_settings: TOML lines added to [router]; extra: TOML appended (e.g. a [bus]);
    `edit` then rewrites the whole config text (the shipped topology, relocated);
    tls: HTTPS and the sites on every edge too, as `make demo` runs them (`Cdn.tls_url`)."""
    block = loopback_block()
    router_host = f"{block}1"
    raw = tomllib.loads(SHIPPED_CONFIG.read_text())
    ports = {"dns": free_dns_port(router_host), "control": free_port(router_host)}
    for node in raw["nodes"]:
        ports[node["name"]] = free_port(block + node["ipv4"].rsplit(".", 1)[1])
    config_path = tmp_path / "cdn.toml"
    text = relocate_config(SHIPPED_CONFIG.read_text(), block, ports)
    text = text.replace("[router]\n", f"[router]\n{router_settings}\n", 1) + "\n" + extra
    config_path.write_text(edit(text))
    edge_hosts = [block + n["ipv4"].rsplit(".", 1)[1] for n in raw["nodes"]]
    content_port = _port_free_on_all(edge_hosts)
    plan = make_plan(
        load_config(config_path),
        config_path,
        None,
        origin_port=free_port(router_host),
        content_port=content_port,
        drain_s=drain_s,
        tls_port=_port_free_on_all(edge_hosts, avoid=content_port),
    )
    if tls:
        plan = with_tls(plan, tmp_path)
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
    names = {e.name for e in cdn.plan.nodes}
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


def _port_free_on_all(hosts: list[str], avoid: int = 0) -> int:
    for _ in range(50):
        port = free_port(hosts[0])
        if port != avoid and all(_tcp_free(h, port) for h in hosts[1:]):
            return port
    raise RuntimeError(f"no port free on all of {hosts}")


def _tcp_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True
