"""Two real routers and six edges, sharing their control state through a real nats-server:
one router is killed (SIGKILL) and later restarted, one edge reaches only that router, and
a stream of dnspython queries checks every answer of every live router all along.

The edge that reaches only router B stops reporting to router A, so A takes it out of its
answers once its last report expires (a router that stops hearing from an edge cannot
tell a cut link from a frozen edge); B keeps naming it, and names it again after its
restart (its probes find it up before DNS opens, its reports resume).

What "correct throughout" means here, checked on every recorded answer:
- an answer for a region's client names only that region's nodes, and at least one;
- once a node is drained (through the surviving router) or killed, and the live routers
  have stopped naming it, no later answer from any router names it: not the survivor's,
  and not the restarted router's, from its very first answer (the drain comes back from
  NATS and the state file; the dead node fails the probe round that runs before DNS opens);
- no herding: where a region has two nodes up, each is the first answer of a fair share
  of queries, on both routers, and on the restarted one too;
- nothing lost: the drain and a purge sent while the router was down are known to it
  after the restart, and the edge that reaches only it reports to it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from cdn.config import HostPort
from cdnlab.loopback import SUBNETS, Cdn, free_dns_port, free_port, poll, resolve, start_cdn
from cdnlab.plan import ROUTER_LAYER, edge_spec
from cdnlab.supervisor import ChildSpec, Supervisor
from tests.nats_fixture import needs_nats, start_nats
from tests.test_fleet_e2e import AUTH, SELECTOR, bus_toml, get_json

ONLY_B = "edge-ap-2"  # the edge that reaches router B only
DRAINED = "edge-eu-2"  # drained through router A while router B is down
KILLED = "edge-na-2"  # killed while router B is down
FAIR_SHARE = 0.15  # of first answers, at least, for each of a region's two up nodes
SPREAD_ANSWERS = 150  # per router and region before the spread is judged
OUT_S = 10.0  # for the live routers to stop naming a drained or killed node


@dataclass(frozen=True, slots=True)
class Answer:
    at: float
    router: str
    region: str
    ips: tuple[str, ...]


@dataclass
class Watch:
    """The query stream's record, and what no answer may name from when on."""

    routers: dict[str, HostPort]  # the live ones: queried in turn
    answers: list[Answer] = field(default_factory=list)
    # (router, ip) -> since (monotonic); router None: every router
    forbidden: dict[tuple[str | None, str], float] = field(default_factory=dict)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for name, dns in list(self.routers.items()):
                for region, subnet in SUBNETS.items():
                    with contextlib.suppress(OSError, TimeoutError, Exception):
                        ips = await resolve(dns, subnet)
                        self.answers.append(Answer(time.monotonic(), name, region, tuple(ips)))
            await asyncio.sleep(0.005)

    def since(self, at: float, router: str | None = None) -> list[Answer]:
        return [a for a in self.answers if a.at >= at and router in (None, a.router)]


@dataclass
class RouterB:
    spec: ChildSpec
    dns: HostPort
    control: str


async def start_router_b(cdn: Cdn, tmp_path: Path) -> RouterB:
    """Router B: the same topology and bus from another config file (so its own state
    file), on its own ports, which a restart reuses."""
    config = tmp_path / "router-b.toml"
    config.write_text(cdn.config_path.read_text())
    host = cdn.plan.dns.host
    dns, control = HostPort(host, free_dns_port(host)), HostPort(host, free_port(host))
    argv = (sys.executable, "-m", "georouter", "serve", "--config", str(config),
            "--dns", str(dns), "--control", str(control))  # fmt: skip
    spec = ChildSpec("router-b", argv, layer=ROUTER_LAYER)
    await cdn.supervisor.start(spec)
    return RouterB(spec, dns, f"http://{control}")


async def report_to(cdn: Cdn, node: str, routers: list[str]) -> None:
    """Restart `node` so that it reports to `routers` (and only to them)."""
    await cdn.supervisor.stop(cdn.child(node))
    edge = next(e for e in cdn.plan.edges if e.name == node)
    spec = edge_spec(cdn.plan, edge)
    argv = list(spec.argv)
    at = argv.index("--router")
    del argv[at : at + 2]
    for url in routers:
        argv += ["--router", url]
    await cdn.supervisor.start(ChildSpec(spec.name, tuple(argv), layer=spec.layer))


async def nodes(session: aiohttp.ClientSession, control: str) -> dict[str, dict[str, object]]:
    _, body = await get_json(session, f"{control}/api/v1/nodes")
    return {n["name"]: n for n in body["nodes"]}


async def all_up(session: aiohttp.ClientSession, control: str, names: set[str]) -> None:
    """Wait until every node of `names` is up on the router at `control` (other nodes, a
    shield tier for one, may be in any state)."""
    await poll(
        lambda: nodes(session, control),
        lambda found: names <= {n for n, s in found.items() if s["state"] == "up"},
        15.0,
        f"every node up on {control}",
    )


async def out_of_answers(watch: Watch, ip: str, router: str | None = None) -> None:
    """Wait until `router` (None: every live router) has answered for half a second without
    naming `ip`; from then on no answer of it may name it."""
    start = time.monotonic()

    async def clean() -> bool:
        recent = watch.since(max(start, time.monotonic() - 0.5), router)
        return (
            bool(recent) and time.monotonic() - start > 0.5 and not any(ip in a.ips for a in recent)
        )

    await poll(clean, bool, OUT_S, f"{ip} out of the answers of {router or 'every router'}")
    watch.forbidden[router, ip] = time.monotonic()


def first_shares(answers: list[Answer], region: str) -> Counter[str]:
    return Counter(a.ips[0] for a in answers if a.region == region and a.ips)


async def spread(watch: Watch, router: str, region: str, ips: set[str]) -> None:
    """Wait for SPREAD_ANSWERS of `router` for `region`, then check each of `ips` leads a
    fair share of them (no herding onto one node)."""
    start = time.monotonic()

    async def enough() -> bool:
        return sum(first_shares(watch.since(start, router), region).values()) >= SPREAD_ANSWERS

    await poll(enough, bool, 30.0, f"{SPREAD_ANSWERS} answers from {router} for {region}")
    shares = first_shares(watch.since(start, router), region)
    total = sum(shares.values())
    assert set(shares) == ips, (router, region, shares)
    assert all(n / total >= FAIR_SHARE for n in shares.values()), (router, region, shares)


@needs_nats
@pytest.mark.timeout(240)
async def test_two_routers_six_edges_one_router_killed_and_restarted(tmp_path: Path) -> None:
    nats_supervisor = Supervisor(tmp_path)
    stop = asyncio.Event()
    try:
        (nats,) = await start_nats(nats_supervisor, tmp_path / "nats")
        async with (
            start_cdn(tmp_path, extra=bus_toml([nats])) as cdn,
            aiohttp.ClientSession() as session,
        ):
            names = {e.name for e in cdn.plan.edges}
            router_a = cdn.plan.control_url
            b = await start_router_b(cdn, tmp_path)
            await asyncio.gather(
                *(
                    report_to(
                        cdn, e.name, [b.control] if e.name == ONLY_B else [router_a, b.control]
                    )
                    for e in cdn.plan.edges
                )
            )
            await all_up(session, router_a, names - {ONLY_B})
            await all_up(session, b.control, names)
            watch = Watch({"a": cdn.dns, "b": b.dns})
            watcher = asyncio.create_task(watch.run(stop))
            await out_of_answers(watch, cdn.ip(ONLY_B), "a")  # its last report to A expired

            # Both routers spread each region over its two nodes (A: where it has two).
            for router, region in [("a", "na"), ("a", "eu"), *(("b", r) for r in SUBNETS)]:
                await spread(watch, router, region, cdn.ips(region))

            # Router B dies; A answers alone. A drain and a purge go through A, an edge dies.
            cdn.supervisor.kill(cdn.supervisor.by_name("router-b"))
            del watch.routers["b"]
            b_killed = time.monotonic()
            async with session.post(f"{router_a}/api/v1/nodes/{DRAINED}/drain", headers=AUTH) as r:
                assert r.status == 200
            await out_of_answers(watch, cdn.ip(DRAINED))
            async with session.post(f"{router_a}/api/v1/purge", json=SELECTOR, headers=AUTH) as r:
                assert r.status == 200
                purge_id = (await r.json())["id"]
            cdn.supervisor.kill(cdn.child(KILLED))
            await out_of_answers(watch, cdn.ip(KILLED))

            # Router B comes back on the same ports, and answers right from its first query.
            await cdn.supervisor.start(b.spec)
            b_back = time.monotonic()
            watch.routers["b"] = b.dns
            await spread(watch, "b", "ap", cdn.ips("ap"))  # no herding after the restart
            found = await nodes(session, b.control)
            assert found[DRAINED]["drained"] is True
            assert found[KILLED]["state"] != "up"
            status, body = await get_json(session, f"{b.control}/api/v1/purge/{purge_id}")
            assert status == 200, body  # the purge sent while B was down is known to B
            await poll(  # the edge that reaches only B reports to it again
                lambda: nodes(session, b.control),
                lambda found: found[ONLY_B]["report_age_s"] is not None,
                10.0,
                f"{ONLY_B} reports to the restarted router",
            )
            stop.set()
            await watcher
    finally:
        stop.set()
        await nats_supervisor.stop_all()

    # Every answer, from every live router, all along.
    assert watch.since(b_back, "b") and watch.since(b_killed, "a")
    for answer in watch.answers:
        assert answer.ips, answer
        assert set(answer.ips) <= cdn.ips(answer.region), answer
        for (router, ip), since in watch.forbidden.items():
            late = answer.at >= since and router in (None, answer.router)
            assert not (late and ip in answer.ips), (router, ip, answer)
        if answer.router == "b" and answer.at >= b_back:  # from its very first answer
            assert cdn.ip(DRAINED) not in answer.ips and cdn.ip(KILLED) not in answer.ips
