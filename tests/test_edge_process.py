"""The real `edge serve` process: its listening line, SIGTERM drain, SIGINT, and a whole
loop with a real `georouter serve` (reports in, probes out, DNS answers follow a drain).

Every process is started on 127.0.0.0/8 with kernel-chosen ports and stopped by its PID.
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.exception
import dns.message
import dns.rdatatype
import pytest

from cdnlab.loopback import free_port, loopback_block
from cdnlab.loopback import poll as e2e_poll
from tests.origin_app import CACHEABLE, FakeRouter, ScriptedOrigin, poll

pytest_plugins = ("tests.edge_fixtures",)

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "t0ken"


@dataclass
class Process:
    proc: asyncio.subprocess.Process
    fields: dict[str, str]
    log: list[str] = field(default_factory=list)
    _drain: asyncio.Task[None] | None = None


async def spawn(argv: list[str]) -> Process:
    """Start a child; wait for its `event=listening` line on stderr and parse it."""
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    log: list[str] = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 20)).decode()
            if not line:
                raise AssertionError("exited before listening:\n" + "".join(log))
            log.append(line)
            if "event=listening" in line:
                break
    except BaseException:
        await stop(Process(proc, {}, log))
        raise
    child = Process(proc, dict(re.findall(r"(\w+)=(\S+)", line)), log)
    child._drain = asyncio.create_task(_keep_reading(proc.stderr, log))
    return child


async def _keep_reading(stderr: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stderr.readline():
        log.append(line.decode())


async def stop(child: Process) -> None:
    if child.proc.returncode is None:
        child.proc.send_signal(signal.SIGINT)
        try:
            await asyncio.wait_for(child.proc.wait(), 10)
        except TimeoutError:
            child.proc.kill()
            await child.proc.wait()
    if child._drain is not None:
        await child._drain


def edge_argv(name: str, origin: str, routers: list[str], **flags: str) -> list[str]:
    argv = [sys.executable, "-m", "edge", "serve", "--name", name, "--origin", origin,
            "--token", TOKEN, "--listen", flags.pop("listen", "127.0.0.1:0"),
            "--control", flags.pop("control", "127.0.0.1:0"),
            "--drain-s", flags.pop("drain_s", "1.5")]  # fmt: skip
    for router in routers:
        argv += ["--router", router]
    return argv


@pytest.fixture(autouse=True)
def page(origin: ScriptedOrigin) -> None:
    origin.script("/page", headers=CACHEABLE, body=b"page")


async def http_status(url: str) -> int:
    async with aiohttp.ClientSession() as client, client.get(url) as resp:
        await resp.read()
        return resp.status


async def test_listening_line_names_bound_ports(origin: ScriptedOrigin) -> None:
    edge = await spawn(edge_argv("edge-eu-1", origin.url, []))
    try:
        assert edge.fields["event"] == "listening" and edge.fields["name"] == "edge-eu-1"
        assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", edge.fields["content"])
        assert re.fullmatch(r"127\.0\.0\.1:[1-9]\d*", edge.fields["control"])
        assert await http_status(f"http://{edge.fields['content']}/page") == 200
    finally:
        await stop(edge)
    assert edge.proc.returncode == 0


async def test_sigterm_drains_reports_keeps_serving_then_exits_0(origin: ScriptedOrigin) -> None:
    async with FakeRouter(TOKEN) as router:
        edge = await spawn(edge_argv("edge-eu-1", origin.url, [router.url], drain_s="2"))
        try:
            await poll(lambda: any(r.status == "up" for r in router.reports))
            edge.proc.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await poll(lambda: router.reports[-1].status == "draining", timeout_s=5)
            # Draining: still serving content, health says 503 so probes agree.
            assert await http_status(f"http://{edge.fields['content']}/page") == 200
            assert await http_status(f"http://{edge.fields['control']}/healthz") == 503
            assert await asyncio.wait_for(edge.proc.wait(), 15) == 0
            assert time.monotonic() - signalled >= 2.0  # served for drain_s before leaving
        finally:
            await stop(edge)
    seqs = [r.seq for r in router.reports]
    assert seqs == list(range(1, len(seqs) + 1))
    assert any("event=draining" in line for line in edge.log)


async def test_sigint_stops_at_once_with_exit_0(origin: ScriptedOrigin) -> None:
    edge = await spawn(edge_argv("edge-eu-1", origin.url, [], drain_s="60"))
    edge.proc.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(edge.proc.wait(), 10) == 0
    await stop(edge)


ROUTER_CONFIG = """
[router]
dns_listen = "127.0.0.1:0"
control_listen = "127.0.0.1:0"
token = "{token}"

[policy]
default_region = "eu"
answer_ttl = 1
answers_per_response = 2

[health]
probe_interval_s = 0.2
probe_timeout_s = 0.5
fall = 2
rise = 1
report_expiry_s = 3.0

[[zones]]
origin = "example.com"
ns = ["ns1.example.com"]
soa_rname = "hostmaster.example.com"
soa_serial = 1
soa_refresh = 3600
soa_retry = 600
soa_expire = 604800
negative_ttl = 60
services = ["cdn"]

[[regions]]
name = "eu"
continents = ["EU"]
latitude = 50.1
longitude = 8.7
{nodes}
"""

NODE = """
[[nodes]]
name = "{name}"
region = "eu"
ipv4 = "{ip}"
capacity_rps = 1000
control_url = "http://{ip}:{port}"
"""


async def cdn_addresses(dns_addr: str) -> set[str]:
    """The A records the router answers for cdn.example.com (empty on a failed query)."""
    host, port = dns_addr.rsplit(":", 1)
    query = dns.message.make_query("cdn.example.com", dns.rdatatype.A)
    try:
        response = await dns.asyncquery.udp(query, host, port=int(port), timeout=2)
    except (OSError, dns.exception.DNSException):
        return set()
    return {rr.address for rrset in response.answer for rr in rrset if rr.rdtype == dns.rdatatype.A}


async def poll_async(check: Callable[[], Awaitable[bool]], what: str) -> None:
    await e2e_poll(check, bool, 15.0, what)


async def test_real_router_sees_reports_and_drain_leaves_dns_first(
    origin: ScriptedOrigin, tmp_path: Path
) -> None:
    block = loopback_block()
    ips = {"edge-a": f"{block}1", "edge-b": f"{block}2"}
    ports = {name: free_port(ip) for name, ip in ips.items()}
    nodes = "".join(NODE.format(name=n, ip=ips[n], port=ports[n]) for n in ips)
    config = tmp_path / "cdn.toml"
    config.write_text(ROUTER_CONFIG.format(token=TOKEN, nodes=nodes))
    router = await spawn([sys.executable, "-m", "georouter", "serve", "--config", str(config),
                          "--dns", "127.0.0.1:0", "--control", "127.0.0.1:0"])  # fmt: skip
    report_to = [f"http://{router.fields['control']}"]
    edges: dict[str, Process] = {}
    try:
        for name, ip in ips.items():
            edges[name] = await spawn(edge_argv(
                name, origin.url, report_to, listen=f"{ip}:0",
                control=f"{ip}:{ports[name]}", drain_s="4",
            ))  # fmt: skip
        nodes_url = f"http://{router.fields['control']}/api/v1/nodes"

        async def node_view() -> dict[str, dict[str, object]]:
            async with aiohttp.ClientSession() as client, client.get(nodes_url) as resp:
                return {n["name"]: n for n in (await resp.json())["nodes"]}

        view: dict[str, dict[str, object]] = {}

        async def both_reported() -> bool:
            view.update(await node_view())
            return all(view[n]["edge_status"] == "up" and view[n]["state"] == "up" for n in ips)

        await poll_async(both_reported, "both edges reported")
        assert isinstance(view["edge-a"]["seq"], int) and view["edge-a"]["seq"] >= 1
        dns_addr = router.fields["dns"]

        async def both_answered() -> bool:
            return await cdn_addresses(dns_addr) == set(ips.values())

        async def only_b_answered() -> bool:
            return await cdn_addresses(dns_addr) == {ips["edge-b"]}

        await poll_async(both_answered, "both edges answered")
        edges["edge-a"].proc.send_signal(signal.SIGTERM)
        await poll_async(only_b_answered, "drained edge-a left DNS")
        # Out of the answers, yet still serving the clients that resolved it earlier.
        assert edges["edge-a"].proc.returncode is None
        content = edges["edge-a"].fields["content"]
        assert await http_status(f"http://{content}/page") == 200
        assert (await node_view())["edge-a"]["edge_status"] == "draining"
        assert await asyncio.wait_for(edges["edge-a"].proc.wait(), 15) == 0
    finally:
        for child in edges.values():
            await stop(child)
        await stop(router)
