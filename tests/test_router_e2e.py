"""The real `georouter serve` process: ECS routing, failover timing, drain, reloads, signals.

The router runs from georouter/data/cdn.toml with every node's control_url pointed at a fake edge
(a small aiohttp app on 127.0.0.1, port 0, answering /healthz); the test itself pushes
the edges' load reports. Everything stays on loopback; the process is stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import dns.asyncquery
import dns.edns
import dns.message
import dns.rdatatype
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cdn.report import LoadReport
from georouter.config import DEFAULT_CONFIG

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGY = DEFAULT_CONFIG
OPERATOR = {"Authorization": "Bearer demo-operator-token"}  # the shipped operator_token


def node_auth(name: str) -> dict[str, str]:
    """The shipped topology's credential of node `name` (its own token)."""
    return {"Authorization": f"Bearer demo-{name}-token"}


EU = {"127.0.0.13", "127.0.0.14"}
NA = {"127.0.0.11", "127.0.0.12"}
START_TIMEOUT_S = 30.0
REPORT_EVERY_S = 0.5


@dataclass
class FakeEdge:
    name: str
    server: TestServer
    seq: int = 0
    alive: bool = True  # sends load reports
    healthy: bool = True  # /healthz answers 200 (else 503)

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


@dataclass
class RouterProcess:
    process: asyncio.subprocess.Process
    config: Path
    dns_port: int
    control: str
    edges: dict[str, FakeEdge]
    log: list[str] = field(default_factory=list)
    dns_listening: list[str] = field(default_factory=list)  # HOST:PORT of every DNS address

    async def query(
        self, name: str = "cdn.example.com", rdtype: str = "A", subnet: str | None = "185.60.216.0"
    ) -> dns.message.Message:
        options = [dns.edns.ECSOption(subnet, 24)] if subnet else []
        q = dns.message.make_query(name, rdtype, use_edns=0, options=options)
        return await dns.asyncquery.udp(q, "127.0.0.1", port=self.dns_port, timeout=2.0)

    async def addresses(self, subnet: str = "185.60.216.0") -> set[str]:
        response = await self.query(subnet=subnet)
        return {
            rr.address
            for rrset in response.answer
            for rr in rrset
            if rrset.rdtype == dns.rdatatype.A
        }

    def api(self, path: str) -> str:
        return f"http://{self.control}{path}"


async def _start_edge(name: str) -> FakeEdge:
    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "up"}, status=200 if edge.healthy else 503)

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    edge = FakeEdge(name, server)
    return edge


def write_config(
    path: Path, edges: dict[str, FakeEdge], extra_records: str = "", router_settings: str = ""
) -> None:
    text = TOPOLOGY.read_text().replace("[policy]", router_settings + "\n[policy]", 1)
    for name, edge in edges.items():
        text = re.sub(
            rf'(name = "{name}"(?:\n[^\n\[]*)*?\ncontrol_url = )"[^"]*"', rf'\1"{edge.url}"', text
        )
    text = text.replace("[[regions]]", extra_records + "[[regions]]", 1)
    path.write_text(text)


async def _push_reports(edges: dict[str, FakeEdge], control: str) -> None:
    url = f"http://{control}/api/v1/report"
    async with aiohttp.ClientSession() as session:
        while True:
            for edge in edges.values():
                if edge.alive:
                    edge.seq += 1
                    report = LoadReport(edge.name, edge.seq, "up", 1, 100.0, 2000.0, 0.05, 0.9)
                    body, headers = report.to_json(), node_auth(edge.name)
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.post(url, data=body, headers=headers):
                            pass
            await asyncio.sleep(REPORT_EVERY_S)  # the edges' report cadence, not a wait


async def _read_until_listening(stderr: asyncio.StreamReader, log: list[str]) -> dict[str, str]:
    while True:
        line = (await stderr.readline()).decode()
        if not line:
            raise AssertionError("router exited before listening:\n" + "".join(log))
        log.append(line)
        if "event=listening" in line:
            return dict(re.findall(r"(\w+)=(\S+)", line))


async def _drain_log(stderr: asyncio.StreamReader, log: list[str]) -> None:
    while line := await stderr.readline():
        log.append(line.decode())


async def poll(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> float:
    """Wait until check() is true; return the seconds it took (fail at the deadline)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def serve(config: Path, dns: str | None = "127.0.0.1:0") -> asyncio.subprocess.Process:
    """`georouter serve` on `config`, with --dns `dns` (None: the config's dns_listen)."""
    flags = ("--dns", dns) if dns is not None else ()
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "georouter",
        "serve",
        "--config",
        str(config),
        *flags,
        "--control",
        "127.0.0.1:0",
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@contextlib.asynccontextmanager
async def running_router(
    tmp_path: Path,
    router_settings: str = "",
    silent: frozenset[str] = frozenset(),
    wait_up: bool = True,
    dns: str | None = "127.0.0.1:0",
    edit: Callable[[str], str] = str,
) -> AsyncIterator[RouterProcess]:
    """`georouter serve` with fake edges that report (except `silent` ones); yields once
    every node is up, or as soon as it listens if not wait_up."""
    names = re.findall(r'name = "((?:edge|shield)-[^"]+)"', TOPOLOGY.read_text())
    edges = {name: await _start_edge(name) for name in names}
    for name in silent:
        edges[name].alive = False
    config = tmp_path / "cdn.toml"
    write_config(config, edges, router_settings=router_settings)
    config.write_text(edit(config.read_text()))  # then the whole text, if asked
    process = await serve(config, dns)
    log: list[str] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        assert process.stderr is not None
        fields = await asyncio.wait_for(_read_until_listening(process.stderr, log), START_TIMEOUT_S)
        dns_port = int(fields["dns"].split(",")[0].rsplit(":", 1)[1])
        rp = RouterProcess(process, config, dns_port, fields["control"], edges, log)
        rp.dns_listening = fields["dns"].split(",")
        tasks = [
            asyncio.create_task(_drain_log(process.stderr, log)),
            asyncio.create_task(_push_reports(edges, rp.control)),
        ]
        if wait_up:
            await poll(lambda: _all_up(rp))
        yield rp
    finally:
        for task in tasks:
            task.cancel()
        if process.returncode is None:
            process.send_signal(signal.SIGKILL)
        await process.wait()
        for edge in edges.values():
            await edge.server.close()


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[RouterProcess]:
    async with running_router(tmp_path) as rp:
        yield rp


async def _nodes(rp: RouterProcess) -> dict[str, dict[str, object]]:
    async with aiohttp.ClientSession() as s, s.get(rp.api("/api/v1/nodes")) as r:
        return {n["name"]: n for n in (await r.json())["nodes"]}


async def _all_up(rp: RouterProcess) -> bool:
    """Every node probed up and the reports of those that report accepted."""
    nodes = await _nodes(rp)
    return all(
        n["state"] == "up" and (n["seq"] or not rp.edges[name].alive) for name, n in nodes.items()
    )


async def _metrics(rp: RouterProcess) -> str:
    async with aiohttp.ClientSession() as s, s.get(rp.api("/metrics")) as r:
        return await r.text()


def _ecs_scope(response: dns.message.Message) -> int:
    return next(o.scopelen for o in response.options if isinstance(o, dns.edns.ECSOption))


async def test_answers_follow_the_client_subnet_rfc7871(router: RouterProcess) -> None:
    eu = await router.query(subnet="185.60.216.0")
    na = await router.query(subnet="8.8.8.0")
    assert await router.addresses("185.60.216.0") <= EU
    assert await router.addresses("8.8.8.0") <= NA
    assert _ecs_scope(eu) > 0 and _ecs_scope(na) > 0
    metrics = await _metrics(router)
    assert (
        'georouter_decisions_total{reason="geo",service="cdn.example.com"}' in metrics
    )  # not fail-open
    assert 'reason="fail_open"' not in metrics


async def test_a_shield_is_up_and_listed_but_never_in_dns_answers(router: RouterProcess) -> None:
    nodes = await _nodes(router)
    shields = {name for name, n in nodes.items() if n["role"] == "shield"}
    assert shields == {"shield-1", "shield-2"}
    assert {nodes[name]["state"] for name in shields} == {"up"}  # probed and reporting
    # shield-1 stands in na, shield-2 in eu: neither is answered, whichever region asks.
    answered: set[str] = set()
    for subnet in ("185.60.216.0", "8.8.8.0", "1.0.16.0", "127.0.0.1"):
        for _ in range(10):
            answered |= await router.addresses(subnet)
    assert answered and answered.isdisjoint({"127.0.0.21", "127.0.0.22"})


async def test_dead_node_leaves_answers_within_3_seconds(router: RouterProcess) -> None:
    assert await router.addresses() == EU
    edge = router.edges["edge-eu-1"]
    edge.alive = False  # its reports stop...
    await edge.server.close()  # ...and its health endpoint refuses connections

    async def gone() -> bool:
        return "127.0.0.13" not in await router.addresses()

    elapsed = await poll(gone, timeout=6.0)
    assert elapsed <= 3.0, f"dead node still answered after {elapsed:.2f} s"
    assert await router.addresses() == {"127.0.0.14"}


async def test_probing_starts_at_boot_and_fall_failures_take_a_node_out(
    tmp_path: Path,
) -> None:
    # edge-eu-1 never reports: only the router's own probes can put it in answers.
    async with running_router(tmp_path, silent=frozenset({"edge-eu-1"}), wait_up=False) as rp:

        async def named() -> bool:  # up by probes, not named by a fail-open answer
            up = (await _nodes(rp))["edge-eu-1"]["state"] == "up"
            return up and "127.0.0.13" in await rp.addresses()

        assert await poll(named, timeout=6.0) <= 1.5, "not up within ~1 probe interval"
        rp.edges["edge-eu-1"].healthy = False  # /healthz now answers 503

        async def gone() -> bool:
            return "127.0.0.13" not in await rp.addresses()

        # fall = 2 failures one probe interval (1 s) apart, the first within 1 s.
        assert await poll(gone, timeout=6.0) <= 3.0
        node = (await _nodes(rp))["edge-eu-1"]
        assert (node["state"], node["reason"], node["seq"]) == ("down", "probe_failures", None)


async def test_node_whose_reports_stop_leaves_answers_within_3_s_though_probes_pass(
    router: RouterProcess,
) -> None:
    assert await router.addresses() == EU
    router.edges["edge-eu-1"].alive = False  # reports stop, /healthz still answers 200

    async def gone() -> bool:
        return "127.0.0.13" not in await router.addresses()

    elapsed = await poll(gone, timeout=6.0)
    assert elapsed <= 3.0, f"silent node still answered after {elapsed:.2f} s"
    node = (await _nodes(router))["edge-eu-1"]
    assert (node["state"], node["reason"], node["last_probe_ok"]) == (
        "down",
        "report_expired",
        True,
    )


async def test_first_query_after_listening_is_a_geo_answer(tmp_path: Path) -> None:
    # One probe round runs before DNS binds, so healthy edges are known up at once.
    async with running_router(tmp_path, wait_up=False) as rp:
        response = await rp.query()
        assert {rr.address for rrset in response.answer for rr in rrset} <= EU
        metrics = await _metrics(rp)
        assert 'georouter_decisions_total{reason="geo",service="cdn.example.com"} 1.0' in metrics
        assert 'reason="fail_open"' not in metrics


async def test_drain_is_immediate_and_undrain_restores(router: RouterProcess) -> None:
    async with aiohttp.ClientSession(headers=OPERATOR) as s:
        async with s.post(router.api("/api/v1/nodes/edge-eu-1/drain")) as r:
            assert r.status == 200
        assert await router.addresses() == {"127.0.0.14"}  # the very next query
        async with s.post(router.api("/api/v1/nodes/edge-eu-1/undrain")) as r:
            assert r.status == 200
        assert await router.addresses() == EU


async def test_sighup_with_broken_config_keeps_the_old_one(router: RouterProcess) -> None:
    router.config.write_text("[router\nthis is not toml")
    router.process.send_signal(signal.SIGHUP)

    async def failed_counted() -> bool:
        return 'georouter_reloads_total{result="failed"} 1.0' in await _metrics(router)

    await poll(failed_counted)
    assert await router.addresses() == EU
    assert any("event=reload result=failed" in line for line in router.log)


async def test_sighup_with_changed_config_takes_effect(router: RouterProcess) -> None:
    record = '[[zones.records]]\nname = "fresh"\ntype = "TXT"\nvalue = "reloaded"\nttl = 60\n\n'
    write_config(router.config, router.edges, extra_records=record)
    before = await router.query("fresh.example.com", "TXT", subnet=None)
    assert not before.answer
    router.process.send_signal(signal.SIGHUP)

    async def answered() -> bool:
        return bool((await router.query("fresh.example.com", "TXT", subnet=None)).answer)

    await poll(answered)
    assert 'georouter_reloads_total{result="ok"} 1.0' in await _metrics(router)
    assert await _all_up(router)  # node state survived the reload


async def test_token_rotation_by_sighup_keeps_the_old_token_working(
    router: RouterProcess,
) -> None:
    old = 'token = "demo-edge-eu-1-token"'
    rotated = 'token = "new-token"\nprevious_tokens = ["demo-edge-eu-1-token"]'
    router.config.write_text(router.config.read_text().replace(old, rotated))
    router.process.send_signal(signal.SIGHUP)

    async def reloaded() -> bool:
        return 'georouter_reloads_total{result="ok"} 1.0' in await _metrics(router)

    await poll(reloaded)
    report = LoadReport("edge-eu-1", 10**6, "up", 1, 100.0, 2000.0, 0.05, 0.9).to_json()
    async with aiohttp.ClientSession() as s:
        for token, status in (
            ("demo-edge-eu-1-token", 200),
            ("new-token", 200),
            ("demo-edge-eu-2-token", 403),  # another node's credential
            ("other", 401),
        ):
            headers = {"Authorization": f"Bearer {token}"}
            async with s.post(router.api("/api/v1/report"), data=report, headers=headers) as r:
                assert r.status == status, token


async def test_sigterm_exits_0(router: RouterProcess) -> None:
    router.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(router.process.wait(), 10.0) == 0


async def _run_to_exit(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "georouter",
        "serve",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(process.communicate(), START_TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, err.decode()


async def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(TOPOLOGY.read_text().replace("answer_ttl = 20", "answer_ttl = -1"))
    code, err = await _run_to_exit(
        "--config", str(config), "--dns", "127.0.0.1:0", "--control", "127.0.0.1:0"
    )
    assert code == 2
    assert "policy.answer_ttl" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


async def test_port_in_use_exits_2_with_one_line(router: RouterProcess) -> None:
    code, err = await _run_to_exit(
        "--config", str(router.config), "--dns", "127.0.0.1:0", "--control", router.control
    )
    assert code == 2
    assert "control_listen" in err and "Traceback" not in err
