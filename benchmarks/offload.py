"""Part: origin offload of the shield tier (docs/edge.md, "Shield tier").

Six `edge serve` processes in front of one origin that counts its fetches per object, first
each going to the origin itself, then all six behind two shields (`edge serve` too, named by
`--parent`). The same seeded request stream runs against both: objects drawn by the demo
workload's popularity (Zipf, s = 1.1, cdnlab/workload.py) from a catalogue of small
cacheable objects, each request sent to one of the six edges at random (clients spread over
the regions), a closed loop of concurrent clients. The figure is origin fetches per distinct
object requested: each edge fetching each object itself gives up to 6; with shields every
object has one home shield (rendezvous hash) that coalesces the edges' fetches, so the goal
is at most 1.05.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from benchmarks.cdn import LOOPBACK, Edge, start_edge
from benchmarks.report import Table, fmt
from cdnlab.workload import zipf_weights

EDGES = 6
SHIELDS = 2
GOAL = 1.05  # origin fetches per distinct object, with shields
SEED = 13
OBJECT_BYTES = 2048
HOST = {"Host": "cdn.example.com"}
COLUMNS = ("layout", "requests", "objects", "origin fetches", "per object", "edge hit %",
           "errors", "goal")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Plan:
    requests: int
    objects: int  # the catalogue the Zipf draws from
    clients: int  # concurrent requests in the closed loop


QUICK = Plan(requests=3_000, objects=500, clients=16)
FULL = Plan(requests=30_000, objects=5_000, clients=32)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One layout's run: what the clients saw and what the origin served."""

    requests: int
    distinct: int  # objects requested at least once
    origin_fetches: int
    edge_hits: int  # answers whose own (last) Cache-Status member is a hit
    errors: int  # answers other than 200

    @property
    def per_object(self) -> float:
        return self.origin_fetches / self.distinct if self.distinct else float("nan")


class _Origin:
    """Answers /o/<n> with OBJECT_BYTES, cacheable for an hour; counts fetches per path."""

    def __init__(self) -> None:
        self.fetches: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/o/{n}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, 0).start()
        self.url = f"http://{LOOPBACK}:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.fetches[request.path] += 1
        body = request.path.encode().ljust(OBJECT_BYTES, b".")
        return web.Response(body=body, headers={"Cache-Control": "max-age=3600"})


def workload(plan: Plan, seed: int = SEED) -> list[tuple[int, str]]:
    """(edge index, path) per request: objects by the demo's Zipf popularity, edges uniform."""
    rng = random.Random(seed)
    weights = zipf_weights(plan.objects)
    objects = rng.choices(range(plan.objects), weights, k=plan.requests)
    return [(rng.randrange(EDGES), f"/o/{n}") for n in objects]


@contextlib.contextmanager
def layout(
    origin_url: str, shields: int, note: Callable[[str, int], None] | None = None
) -> Iterator[list[Edge]]:
    """EDGES edges, behind `shields` shields (0: straight to the origin); stopped by PID."""
    started: list[Edge] = []
    try:
        for i in range(shields):
            started.append(start_edge(f"shield-{i + 1}", LOOPBACK, origin_url, []))
        parents = tuple(f"http://{e.content.host}:{e.content.port}" for e in started)
        for i in range(EDGES):
            started.append(start_edge(f"edge-{i + 1}", LOOPBACK, origin_url, [], parents=parents))
        for edge in started:
            if note is not None:
                note(f"edge for offload ({edge.name})", edge.service.pid)
        yield started[shields:]
    finally:
        for edge in started:
            edge.service.stop()


async def drive(
    edges: list[Edge], requests: list[tuple[int, str]], clients: int
) -> tuple[int, int]:
    """Send every request through its edge, `clients` at a time: (edge hits, errors)."""
    queue = iter(requests)
    hits = errors = 0

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal hits, errors
        for index, path in queue:
            edge = edges[index].content
            async with session.get(f"http://{edge.host}:{edge.port}{path}", headers=HOST) as resp:
                await resp.read()
                mine = resp.headers.get("Cache-Status", "").split(",")[-1]
                hits += "; hit" in mine
                errors += resp.status != 200

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    return hits, errors


async def _run(plan: Plan, shields: int, note: Callable[[str, int], None] | None) -> Outcome:
    origin = _Origin()
    await origin.start()
    requests = workload(plan)
    try:
        with layout(origin.url, shields, note) as edges:
            hits, errors = await drive(edges, requests, plan.clients)
    finally:
        await origin.stop()
    return Outcome(
        requests=len(requests),
        distinct=len({path for _, path in requests}),
        origin_fetches=sum(origin.fetches.values()),
        edge_hits=hits,
        errors=errors,
    )


def measure(plan: Plan, note: Callable[[str, int], None] | None = None) -> Table:
    """The part's table: the same workload on 6 edges direct and 6 edges behind 2 shields."""
    rows = []
    for label, shields in ((f"{EDGES} edges direct", 0),
                           (f"{EDGES} edges behind {SHIELDS} shields", SHIELDS)):  # fmt: skip
        out = asyncio.run(_run(plan, shields, note))
        goal = "" if not shields else ("met" if out.per_object <= GOAL else "missed")
        rows.append([label, f"{out.requests:,}", f"{out.distinct:,}", f"{out.origin_fetches:,}",
                     fmt(out.per_object, 3), fmt(100 * out.edge_hits / out.requests, 1),
                     str(out.errors), goal])  # fmt: skip
    notes = [
        f"{plan.requests:,} requests over {plan.objects:,} objects of {OBJECT_BYTES:,} bytes "
        f"(Zipf s = 1.1, seed {SEED}), each to one of {EDGES} edges at random, "
        f"{plan.clients} concurrent clients; the origin counts its fetches.",
        f"Goal with shields: at most {GOAL:g} origin fetches per distinct object.",
    ]
    return Table("Origin offload: fetches per object", COLUMNS, rows, notes)
