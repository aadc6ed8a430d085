"""Purge everywhere: how soon one POST to the router takes an object off every edge.

A user replaces a profile picture at the same URL. The demo origin serves it from a scratch
directory; every edge has the current version cached (`public, max-age=86400`). The harness
writes the next version at the origin, sends `POST /api/v1/purge {"url": ...}` to the router
and, from the same moment, asks every edge for the URL, each at its own pace, until each
answers with the new version (its cached copy is gone, so it fetched anew). A purge's time
is the send time of the request that first brought the new version from the *last* edge:
a client asking from then on gets the new picture everywhere. It overstates the true time
by up to one polling interval. The next purge starts once every edge has the new version
cached again. N = 6 and N = 50 edge processes (`edge serve`, as an operator runs it) each
on 127.0.0.1, started a few at a time by the one supervisor and each stopped by its PID;
the router's topology is the shipped one with N nodes over its three regions.

Then an edge cut off from every router during a purge, in a fleet of six whose every
router↔edge connection passes through a relay in the harness that can be cut
(benchmarks/cut_link.py: while cut, bytes are dropped and nobody is told, as in a network
partition; at restore, connections that lived through the cut are reset). The victim's
links are cut, the purge is sent (the router answers `pending` for it after
`router.fanout_timeout_s`), the cut lasts a while longer, then the links are restored.
Measured from the restore: when the victim first answers with the new version, and when
the router counts it `up` again; every answer of the old version from the moment the
router may have counted it up is a stale answer. Clients reach the edge directly all along
(only its path to the router is cut), so while cut it serves the old copy: nothing could
have told it. Each trial cuts another of the six edges, so a router's flap damping
(a channel closing again within 10 s) does not carry from one trial to the next.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from benchmarks import cdn
from benchmarks.cut_link import CutLink
from benchmarks.dns import percentile
from benchmarks.processes import BenchError, cpu_seconds, free_port, machine_samples
from benchmarks.report import Table
from cdnlab.supervisor import READY_EVENT, Running, running
from georouter.config import RouterConfig, load_config

T = TypeVar("T")
SITE = "img.example.com"
APPLIED = re.compile(
    r'(?m)^edge_fleet_purges_total\{(?=[^}]*result="applied")[^}]*via="(\w+)"[^}]*\} (\S+)$'
)
OBJECT_PATH = "/purge-bench/picture.jpg"
OBJECT_URL = f"http://{SITE}{OBJECT_PATH}"
OBJECT_BYTES = 16 * 1024  # a profile picture
PURGE_GOAL_P99_S = 0.2  # at N = 50 on loopback (Fastly advertises ~150 ms worldwide)
REACHABLE_GOAL_S = 2.0  # an edge that was cut off applies the purge within this
POLL_BUDGET_RPS = 1250.0  # every edge's poller together, at most (they share the 2 cores)
MIN_POLL_S = 0.005
VICTIM_POLL_S = 0.01
ROUTER_POLL_S = 0.05
TRIAL_TIMEOUT_S = 15.0
CUT_TIMEOUT_S = 60.0  # restore → new version and counted up (a flap hold is up to 10 s)
AFTER_UP_WATCH_S = 1.0  # answers still watched for staleness after both happened
START_WORKERS = 4  # edges started at once: more only makes each slower on two cores
START_TIMEOUT_S = 180.0  # the whole fleet
NODES_UP_TIMEOUT_S = 60.0
SHARED_SHARE = 0.25  # other work above this share of one core marks the machine shared


@dataclass(frozen=True, slots=True)
class Plan:
    fleets: tuple[int, ...]  # edge counts measured in turn
    purges: int  # per fleet
    cut_trials: int
    cut_edges: int
    cut_after_answer_s: float  # how long the cut lasts after the router's answer
    fanout_timeout_s: float | None  # None: the router's default


FULL = Plan(fleets=(6, 50), purges=100, cut_trials=6, cut_edges=6, cut_after_answer_s=1.0,
            fanout_timeout_s=None)  # fmt: skip
QUICK = Plan(fleets=(3,), purges=5, cut_trials=1, cut_edges=3, cut_after_answer_s=1.5,
             fanout_timeout_s=0.5)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Machine:
    """Where the machine's CPU went during a measurement, in % of one core."""

    ours: float  # the harness and every process it started
    others: float  # everything else busy
    stolen: float

    @property
    def shared(self) -> bool:
        return self.others >= 100.0 * SHARED_SHARE

    def cell(self) -> str:
        text = f"{self.others:.0f} % (stolen {self.stolen:.0f} %)"
        return f"**shared**: {text}" if self.shared else text


@dataclass(frozen=True, slots=True)
class FleetResult:
    edges: int
    poll_s: float
    answered_s: list[float]  # POST → the router's 200
    last_s: list[float]  # POST → the last edge answers with the new version
    last_low_s: list[float]  # POST → the last old answer of the edge that flipped last
    first_purge_s: float  # last_s of the fleet's first purge, not among the others
    first_s: list[float]  # POST → the first edge does
    not_done: int  # node results other than "done" in the router's answers
    machine: Machine


@dataclass(frozen=True, slots=True)
class CutTrial:
    victim: str
    result: str  # the router's answer for the victim
    went_out: bool  # the router stopped counting it up during the cut
    new_after_s: float  # restore → the victim's first answer with the new version
    up_after_s: float  # restore → the router counts it up again
    stale_after_up: int  # old answers sent once the router may have counted it up
    stale_before_new: int  # old answers between the restore and the first new one
    via: str  # how the victim got the purge: "report" (a report's reply) or "fanout"


@dataclass(frozen=True, slots=True)
class CutResult:
    edges: int
    cut_s: list[float]  # how long each cut lasted
    trials: list[CutTrial]
    machine: Machine


@dataclass(frozen=True, slots=True)
class PurgeResults:
    fleets: list[FleetResult] = field(default_factory=list)
    cut: CutResult | None = None


# ---- the origin's object ------------------------------------------------------------------


class Picture:
    """The object at the origin: version k is OBJECT_BYTES starting `v<k>:`."""

    def __init__(self, root: Path) -> None:
        self.path = root / OBJECT_PATH.lstrip("/")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.version = 0
        self.write(1)

    def write(self, version: int) -> None:
        head = f"v{version}:".encode()
        scratch = self.path.with_suffix(".tmp")
        scratch.write_bytes(head + b"x" * (OBJECT_BYTES - len(head)))
        os.replace(scratch, self.path)  # the origin opens the path per request
        self.version = version


def version_of(body: bytes) -> int:
    head = body[:16].split(b":", 1)[0]
    if not head.startswith(b"v") or not head[1:].isdigit():
        raise BenchError(f"purge: unexpected body {body[:32]!r}")
    return int(head[1:])


# ---- the fleet --------------------------------------------------------------------------


def fleet_toml(shipped_text: str, shipped: RouterConfig, count: int, router: str = "") -> str:
    """The shipped topology with `count` nodes round-robin over its regions (`router`:
    extra [router] settings)."""
    head = shipped_text.split("\n[[nodes]]\n", 1)[0] + "\n"
    if router:
        head = head.replace("[router]\n", f"[router]\n{router}\n", 1)
    regions = [r.name for r in shipped.regions]
    nodes = []
    for index in range(count):
        region, ordinal = regions[index % len(regions)], index // len(regions) + 1
        nodes.append(
            f'[[nodes]]\nname = "edge-{region}-{ordinal}"\nregion = "{region}"\n'
            f'ipv4 = "127.0.0.{11 + index}"\ncapacity_rps = {2000 if ordinal % 2 else 1000}\n'
            f'control_url = "http://127.0.0.1:9"\ntoken = "bench-edge-{region}-{ordinal}"\n'
        )
    return head + "\n".join(nodes)


@dataclass(frozen=True, slots=True)
class Fleet:
    router_url: str
    router: Running
    edges: dict[str, cdn.Edge]
    links: dict[str, tuple[CutLink, CutLink]]  # node → (router → edge, edge → router)

    def content(self, node: str) -> str:
        endpoint = self.edges[node].content
        return f"http://{endpoint.host}:{endpoint.port}{OBJECT_PATH}"


Note = Callable[[str, int], None]


@contextlib.contextmanager
def fleet(
    workdir: Path, origin_url: str, count: int, plan: Plan, note: Note, *, cut: bool = False
) -> Iterator[Fleet]:
    """`count` edges and a router on loopback; with `cut`, every router↔edge connection
    through a CutLink. Every process is stopped by its PID on the way out."""
    shipped_text = cdn.TOPOLOGY.read_text()
    settings = (
        "" if plan.fanout_timeout_s is None else f"fanout_timeout_s = {plan.fanout_timeout_s}"
    )
    text = fleet_toml(shipped_text, load_config(cdn.TOPOLOGY), count, settings)
    draft = workdir / f"fleet-{count}-draft.toml"
    draft.write_text(text)
    config = load_config(draft)
    control_port = free_port()
    router_url = f"http://{cdn.LOOPBACK}:{control_port}"
    edges: dict[str, cdn.Edge] = {}
    links: dict[str, tuple[CutLink, CutLink]] = {}
    to_router: dict[str, CutLink] = {}  # node → its relay in front of the router
    try:
        for node in config.nodes if cut else ():
            to_router[node.name] = CutLink(cdn.LOOPBACK, control_port).start()
        with ThreadPoolExecutor(START_WORKERS) as pool:
            deadline = time.monotonic() + START_TIMEOUT_S
            futures = {
                node.name: pool.submit(
                    _start_edge,
                    node.name,
                    origin_url,
                    to_router[node.name].url if cut else router_url,
                    deadline,
                )
                for node in config.nodes
            }
            failure: BaseException | None = None
            for name, future in futures.items():
                try:
                    edges[name] = future.result()
                except BaseException as exc:  # the others are still collected and stopped
                    failure = failure or exc
            if failure is not None:
                raise failure
        for started in edges.values():
            note(f"edge (one of {count})", started.service.pid)
        controls = {n: e.control_url for n, e in edges.items()}
        if cut:
            for name, started in edges.items():
                port = int(started.control_url.rsplit(":", 1)[1])
                links[name] = (CutLink(started.content.host, port).start(), to_router[name])
                controls[name] = links[name][0].url
        config_path = workdir / f"fleet-{count}{'-cut' if cut else ''}.toml"
        config_path.write_text(cdn.bench_topology(config, controls, base=text))
        argv = [sys.executable, "-m", "georouter", "serve", "--config", str(config_path)]
        argv += ["--dns", f"{cdn.LOOPBACK}:0", "--control", f"{cdn.LOOPBACK}:{control_port}"]
        with running(f"georouter-{count}", argv, ready_event=READY_EVENT) as service:
            service.ready()
            note("georouter", service.pid)
            service.wait_ready(lambda: cdn.all_nodes_up(router_url), timeout_s=NODES_UP_TIMEOUT_S)
            # Steady state: every edge reports over its channel. An edge started before the
            # router backs its reports off; until one lands, the router counts it up on probes
            # alone (and a purge it owes would wait for that report).
            service.wait_ready(
                lambda: cdn.all_channels_open(router_url, count), timeout_s=NODES_UP_TIMEOUT_S
            )
            yield Fleet(router_url, service, edges, links)
    finally:
        for started in edges.values():
            started.service.stop()
        for to_edge, _ in links.values():
            to_edge.stop()
        for link in to_router.values():
            link.stop()


def _start_edge(name: str, origin_url: str, router_url: str, deadline: float) -> cdn.Edge:
    if time.monotonic() > deadline:
        raise BenchError(f"purge: the fleet took over {START_TIMEOUT_S:.0f} s to start")
    return cdn.start_edge(name, cdn.LOOPBACK, origin_url, [router_url])


class MachineWatch:
    """CPU of this process tree (harness and children) and of the rest of the machine."""

    def __init__(self) -> None:
        self.ours = cpu_seconds(os.getpid())
        self.busy, self.stolen = machine_samples()
        self.wall = time.monotonic()

    def read(self) -> Machine:
        busy, stolen = machine_samples()
        wall = busy.wall_s - self.wall
        ours = 100.0 * (cpu_seconds(os.getpid()) - self.ours) / wall if wall > 0 else 0.0
        others = max(0.0, busy.percent_since(self.busy) - ours)
        return Machine(ours, others, stolen.percent_since(self.stolen))


# ---- timed purges --------------------------------------------------------------------------


class Client:
    """The harness's HTTP client: the router's API and the edges' content ports."""

    def __init__(self, session: aiohttp.ClientSession, router_url: str) -> None:
        self.session = session
        self.router_url = router_url

    async def fetch(self, url: str) -> tuple[int, bool]:
        """(version, was it a cache hit) of one GET of the object at an edge."""
        async with self.session.get(url, headers={"Host": SITE}) as response:
            body = await response.read()
            if response.status != 200:
                raise BenchError(f"purge: GET {url} answered {response.status}")
            hit = "; hit" in response.headers.get("Cache-Status", "")
        return version_of(body), hit

    async def purge(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {cdn.BENCH_TOKEN}"}
        url = f"{self.router_url}/api/v1/purge"
        async with self.session.post(url, json={"url": OBJECT_URL}, headers=headers) as response:
            body: dict[str, Any] = await response.json()
            if response.status != 200:
                raise BenchError(f"purge: the router answered {response.status}: {body}")
        return body

    async def state(self, node: str) -> str:
        async with self.session.get(f"{self.router_url}/api/v1/nodes") as response:
            nodes = (await response.json())["nodes"]
        return str(next(n["state"] for n in nodes if n["name"] == node))

    async def applied(self, control_url: str) -> dict[str, float]:
        """An edge's purges applied so far, by way (edge_fleet_purges: fanout, report)."""
        async with self.session.get(f"{control_url}/metrics") as response:
            text = await response.text()
        found = APPLIED.findall(text)
        return {via: float(value) for via, value in found}

    async def settle(self, urls: list[str], version: int) -> None:
        """Until every edge answers `version` from its cache (a miss first stores it); the
        edges are asked concurrently, between the timed purges."""
        deadline = time.monotonic() + TRIAL_TIMEOUT_S

        async def one(url: str) -> None:
            while await self.fetch(url) != (version, True):
                if time.monotonic() > deadline:
                    raise BenchError(f"purge: {url} did not cache version {version}")

        await asyncio.gather(*(one(url) for url in urls))


async def _until_new(
    client: Client, url: str, version: int, start: float, poll_s: float
) -> tuple[float, float]:
    """Poll `url` from `start` every `poll_s` until it answers `version` or later: the send
    times of the last request answered with an older version (`start` if none) and of the
    first answered with the new one. The edge dropped its copy between the two."""
    at, last_old = start, start
    while True:
        await asyncio.sleep(max(0.0, at - time.monotonic()))  # pacing, not synchronisation
        sent = time.monotonic()
        if sent - start > TRIAL_TIMEOUT_S:
            raise BenchError(f"purge: {url} still serves the old version")
        found, _ = await client.fetch(url)
        if found >= version:
            return last_old, sent
        last_old = sent
        at = max(at + poll_s, time.monotonic())


async def _timed(coro: Awaitable[T]) -> tuple[T, float]:
    """The result of `coro` and the monotonic time it ended."""
    result = await coro
    return result, time.monotonic()


def poll_interval(edges: int) -> float:
    """Each edge's polling interval: together at most POLL_BUDGET_RPS."""
    return max(MIN_POLL_S, edges / POLL_BUDGET_RPS)


async def _timed_purges(fleet: Fleet, picture: Picture, purges: int) -> FleetResult:
    urls = [fleet.content(n) for n in fleet.edges]
    poll_s = poll_interval(len(urls))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(session, fleet.router_url)
        await client.settle(urls, picture.version)
        watch = MachineWatch()
        answered, last, last_low, first, not_done = [], [], [], [], 0
        for _ in range(purges + 1):  # the first apart: the router opens its connections
            picture.write(picture.version + 1)
            start = time.monotonic()
            post = asyncio.create_task(_timed(client.purge()))
            phases = [start + poll_s * i / len(urls) for i in range(len(urls))]
            flips = await asyncio.gather(
                *(
                    _until_new(client, u, picture.version, p, poll_s)
                    for u, p in zip(urls, phases, strict=True)
                )
            )
            body, answered_at = await post
            answered.append(answered_at - start)
            not_done += sum(result != "done" for result in body["nodes"].values())
            last.append(max(new for _, new in flips) - start)
            last_low.append(max(old for old, _ in flips) - start)
            first.append(min(new for _, new in flips) - start)
            await client.settle(urls, picture.version)
        machine = watch.read()
    return FleetResult(
        edges=len(urls),
        poll_s=poll_s,
        answered_s=answered[1:],
        last_s=last[1:],
        last_low_s=last_low[1:],
        first_purge_s=last[0],
        first_s=first[1:],
        not_done=not_done,
        machine=machine,
    )


# ---- the cut edge --------------------------------------------------------------------------


async def _cut_trial(
    client: Client, fleet: Fleet, picture: Picture, victim: str, plan: Plan
) -> tuple[CutTrial, float]:
    urls = [fleet.content(n) for n in fleet.edges]
    await client.settle(urls, picture.version)
    picture.write(picture.version + 1)
    links = fleet.links[victim]
    control = fleet.edges[victim].control_url  # direct: the harness is not cut off
    applied_before = await client.applied(control)
    cut_at = time.monotonic()
    for link in links:
        await asyncio.to_thread(link.cut)
    body = await client.purge()
    result = body["nodes"][victim]
    if result == "done":
        raise BenchError(f"purge: {victim} confirmed the purge through a cut link")
    went_out = False
    restore_at = time.monotonic() + plan.cut_after_answer_s
    while time.monotonic() < restore_at:  # the cut goes on; watch the router meanwhile
        went_out |= await client.state(victim) != "up"
        await asyncio.sleep(ROUTER_POLL_S)  # pacing
    for link in links:
        await asyncio.to_thread(link.restore)
    restored = time.monotonic()
    cut_s = restored - cut_at
    url = fleet.content(victim)
    new_at: float | None = None
    up_from: float | None = None  # the earliest moment the router may have counted it up
    answers: list[tuple[float, int]] = []

    async def watch_edge() -> None:
        nonlocal new_at
        at = restored
        while (
            up_from is None
            or new_at is None
            or time.monotonic() < max(up_from, new_at) + AFTER_UP_WATCH_S
        ):
            if time.monotonic() - restored > CUT_TIMEOUT_S:
                raise BenchError(f"purge: {victim} still serves the old version after the cut")
            await asyncio.sleep(max(0.0, at - time.monotonic()))  # pacing
            sent = time.monotonic()
            found, _ = await client.fetch(url)
            answers.append((sent, found))
            if found >= picture.version and new_at is None:
                new_at = sent
            at = max(at + VICTIM_POLL_S, time.monotonic())

    async def watch_router() -> None:
        nonlocal up_from, went_out
        last_down = restored
        while up_from is None:
            if time.monotonic() - restored > CUT_TIMEOUT_S:
                raise BenchError(f"purge: the router never counted {victim} up after the cut")
            state = await client.state(victim)
            if state == "up":
                up_from = last_down
            else:
                went_out, last_down = True, time.monotonic()
                await asyncio.sleep(ROUTER_POLL_S)  # pacing

    await asyncio.gather(watch_edge(), watch_router())
    assert new_at is not None and up_from is not None
    applied = await client.applied(control)
    ways = [w for w, n in sorted(applied.items()) if n > applied_before.get(w, 0.0)]
    trial = CutTrial(
        victim=victim,
        result=result,
        went_out=went_out,
        new_after_s=new_at - restored,
        up_after_s=max(0.0, up_from - restored),
        stale_after_up=sum(1 for sent, v in answers if sent >= up_from and v < picture.version),
        stale_before_new=sum(1 for sent, v in answers if sent < new_at and v < picture.version),
        via=" and ".join(ways) or "none",
    )
    return trial, cut_s


async def _cut_trials(fleet: Fleet, picture: Picture, plan: Plan) -> CutResult:
    names = list(fleet.edges)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = Client(session, fleet.router_url)
        watch = MachineWatch()
        trials, cuts = [], []
        for index in range(plan.cut_trials):
            victim = names[index % len(names)]
            trial, cut_s = await _cut_trial(client, fleet, picture, victim, plan)
            trials.append(trial)
            cuts.append(cut_s)
        machine = watch.read()
    return CutResult(len(names), cuts, trials, machine)


# ---- the part -------------------------------------------------------------------------------


def measure(workdir: Path, plan: Plan, note: Note) -> PurgeResults:
    """Every fleet of the plan, then the cut trials; every process stopped by its PID."""
    root = workdir / "origin"
    root.mkdir(parents=True, exist_ok=True)
    picture = Picture(root)
    fleets: list[FleetResult] = []
    cut: CutResult | None = None
    with cdn.origin(root) as origin:
        note("origin (purge part)", origin.pid)
        origin_url = f"http://{origin.host}:{origin.port}"
        for count in plan.fleets:
            with fleet(workdir, origin_url, count, plan, note) as started:
                fleets.append(asyncio.run(_timed_purges(started, picture, plan.purges)))
        if plan.cut_trials:
            with fleet(workdir, origin_url, plan.cut_edges, plan, note, cut=True) as started:
                cut = asyncio.run(_cut_trials(started, picture, plan))
    return PurgeResults(fleets, cut)


def _ms(value: float) -> str:
    return f"{value * 1000:,.0f}"


def purge_table(results: PurgeResults) -> Table:
    rows = []
    for r in results.fleets:
        last, low, answered = sorted(r.last_s), sorted(r.last_low_s), sorted(r.answered_s)
        rows.append([
            str(r.edges),
            str(len(r.last_s)),
            f"{_ms(percentile(last, 0.5))} / **{_ms(percentile(last, 0.99))}** / {_ms(last[-1])}",
            f"{_ms(percentile(low, 0.5))} / {_ms(percentile(low, 0.99))}",
            _ms(r.first_purge_s),
            f"{_ms(statistics.median(r.first_s))}",
            f"{_ms(percentile(answered, 0.5))} / {_ms(percentile(answered, 0.99))}",
            str(r.not_done),
            f"{r.poll_s * 1000:g}",
            r.machine.cell(),
        ])  # fmt: skip
    notes = [
        "Time from sending `POST /api/v1/purge` until the last edge answers with the new "
        "version: the send time of the first request that brought it, so up to one polling "
        "interval more than the true time; the lower bound is the send time of that edge's "
        "last request still answered with the old version (the true time lies between). "
        "Nearest-rank percentiles over the purges after the first; the first purge after the "
        "fleet started (the router opens its connections to the edges then) is shown apart.",
        f"Goal: p99 < {PURGE_GOAL_P99_S * 1000:.0f} ms at N = 50 on loopback (Fastly "
        "advertises ~150 ms worldwide, Akamai's fast purge about 5 s).",
        "The router answers once every edge confirmed; `not done` counts node results other "
        "than `done` in its answers (0: every edge confirmed within the fan-out deadline).",
        "Every edge and the router run on one 2-core machine, as do the pollers (each edge "
        f"polled at most {POLL_BUDGET_RPS:,.0f} requests/s together); `other work` is the "
        "CPU the rest of the machine used meanwhile, in % of one core (**shared** from "
        f"{SHARED_SHARE * 100:.0f} %: the figures then include waiting for it).",
    ]
    columns = [
        "edges", "purges", "last edge serves new: p50 / p99 / max ms",
        "lower bound: p50 / p99 ms", "first purge ms", "first edge: median ms",
        "router's 200: p50 / p99 ms", "not done", "poll every ms", "other work",
    ]  # fmt: skip
    notes += shared_note([r.machine for r in results.fleets])
    title = "Purge everywhere: the last edge stops serving the old object"
    return Table(title, columns, rows, notes)


def shared_note(machines: list[Machine]) -> list[str]:
    """A note when other work shared the machine during the measurement."""
    if not any(m.shared for m in machines):
        return []
    most = max(m.others for m in machines)
    return [
        f"**The machine was shared with other work during this run** (up to {most:.0f} % of "
        "a core besides this part's processes): the figures include waiting for the CPU."
    ]


def cut_table(result: CutResult) -> Table:
    trials = result.trials
    new = [t.new_after_s for t in trials]
    up = [t.up_after_s for t in trials]
    results = sorted({t.result for t in trials})
    row = [
        str(result.edges),
        str(len(trials)),
        f"{statistics.median(result.cut_s):.1f}",
        ", ".join(results),
        ", ".join(f"{way} {n}" for way, n in sorted(Counter(t.via for t in trials).items())),
        f"{sum(t.went_out for t in trials)} of {len(trials)}",
        f"{_ms(statistics.median(new))} / **{_ms(max(new))}**",
        f"{_ms(statistics.median(up))} / {_ms(max(up))}",
        f"**{sum(t.stale_after_up for t in trials)}**",
        str(sum(t.stale_before_new for t in trials)),
        result.machine.cell(),
    ]
    notes = [
        "Each trial cuts both directions of one edge's link to the router (bytes dropped, "
        "nobody told), sends the purge, keeps the cut a while after the router's answer, "
        "then restores the link (connections that saw the cut are reset). Times from the "
        "restore: until the edge first answers with the new version, and until the router "
        "counts it `up` again (the earliest moment it may have). Stale answers: answers of "
        "the old version to requests sent from that moment on (the edge polled every "
        f"{VICTIM_POLL_S * 1000:.0f} ms until {AFTER_UP_WATCH_S:g} s after both).",
        f"Goals: new version within {REACHABLE_GOAL_S:g} s of being reachable again; zero "
        "stale answers once the router counts it up.",
        "Old answers before the new one are expected: the edge was cut off and kept serving "
        "its copy to the clients that still reach it.",
        "Applied via: how the edge got the purge, from its `edge_fleet_purges` counter "
        "(`report`: with the router's reply to one of its load reports; `fanout`: the "
        "router's direct request).",
    ]
    columns = [
        "edges", "trials", "cut s (median)", "router's answer for it", "applied via (trials)",
        "left answers",
        "restore → new version: median / max ms", "restore → counted up: median / max ms",
        "stale after up", "old answers after restore, before new", "other work",
    ]  # fmt: skip
    notes += shared_note([result.machine])
    return Table("An edge cut off from every router during the purge", columns, [row], notes)


def tables(results: PurgeResults) -> list[Table]:
    out = [purge_table(results)]
    if results.cut is not None:
        out.append(cut_table(results.cut))
    return out
