"""Part: the edge's disk level (memory over disk, docs/caching.md).

Hit throughput: one `edge serve` process with a disk level; a closed loop of clients
(aiohttp, in the harness) asks for cached objects. Memory hits: the objects fit in
memory. Disk hits: the memory store holds a little over one object, so every request
is a memory miss answered from disk (read, checked, promoted, served). Restart: the
edge is filled with objects until its disk holds the target bytes, measured under a
Zipf workload, stopped with SIGTERM and started again; the table gives the time until
/healthz says 200 (the index is loaded) and the hit ratio of the same workload after
the restart against before it.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from benchmarks.report import Table, fmt

KiB = 1024
MiB = 1024 * KiB
CLIENTS = 16  # concurrent requests in the closed loop
DISK_OBJECTS = 8  # objects cycled through in the disk-hit run
ZIPF_ALPHA = 1.0
SEED = 5
HOST = {"Host": "bench.example"}  # one cache key across restarts (the port changes)


@dataclass(frozen=True, slots=True)
class Plan:
    run_s: float
    restart_bytes: int
    restart_object_bytes: int
    workload_requests: int


QUICK = Plan(run_s=3.0, restart_bytes=64 * MiB, restart_object_bytes=256 * KiB,
             workload_requests=2_000)  # fmt: skip
FULL = Plan(run_s=5.0, restart_bytes=1024 * MiB, restart_object_bytes=256 * KiB,
            workload_requests=20_000)  # fmt: skip


class _Origin:
    """Answers /o/<size>/<n> with <size> bytes, cacheable for an hour; counts fetches."""

    def __init__(self) -> None:
        self.fetches = 0
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/o/{size}/{n}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        size = int(request.match_info["size"])
        body = request.match_info["n"].encode().ljust(size, b".")
        return web.Response(body=body, headers={"Cache-Control": "max-age=3600"})


@dataclass
class _Edge:
    proc: asyncio.subprocess.Process
    content: str
    control: str


async def _start_edge(workdir: Path, origin: str, memory: str) -> _Edge:
    config = workdir / "edge.toml"
    config.write_text(f'[cache]\nsize = "{memory}"\ndisk_path = "disk"\ndisk_size = "2G"\n')
    argv = [sys.executable, "-m", "edge", "serve", "--config", str(config), "--name",
            "edge-bench-1", "--origin", origin, "--listen", "127.0.0.1:0",
            "--control", "127.0.0.1:0"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    while line := (await asyncio.wait_for(proc.stderr.readline(), 60)).decode():
        if "event=listening" in line:
            fields = dict(re.findall(r"(\w+)=(\S+)", line))
            asyncio.get_running_loop().create_task(_drain(proc.stderr))
            return _Edge(proc, fields["content"], fields["control"])
    raise RuntimeError("the edge exited before listening")


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def _stop_edge(edge: _Edge) -> None:
    if edge.proc.returncode is None:
        edge.proc.send_signal(signal.SIGINT)
        await edge.proc.wait()


async def _until_ready(session: aiohttp.ClientSession, edge: _Edge) -> None:
    while True:
        try:
            async with session.get(f"http://{edge.control}/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.005)


async def _closed_loop(
    session: aiohttp.ClientSession, edge: _Edge, paths: Callable[[int], str], run_s: float
) -> float:
    """Requests/s answered over ``run_s`` by CLIENTS concurrent clients."""
    deadline = time.monotonic() + run_s
    done = 0

    async def client(worker: int) -> None:
        nonlocal done
        n = worker
        while time.monotonic() < deadline:
            async with session.get(f"http://{edge.content}{paths(n)}", headers=HOST) as resp:
                await resp.read()
            n += CLIENTS
            done += 1

    start = time.monotonic()
    await asyncio.gather(*(client(w) for w in range(CLIENTS)))
    return done / (time.monotonic() - start)


async def _throughput(workdir: Path, origin: _Origin, run_s: float) -> list[list[str]]:
    rows = []
    for size, label in ((KiB, "1 KiB"), (MiB, "1 MiB")):
        for level in ("memory", "disk"):
            where = workdir / f"{level}-{size}"
            where.mkdir()
            memory = "256M" if level == "memory" else str(size * 3 // 2 + 8 * KiB)
            edge = await _start_edge(where, origin.url, memory)
            try:
                async with aiohttp.ClientSession() as session:
                    await _until_ready(session, edge)
                    path = _cycle(size)
                    await _closed_loop(session, edge, path, 1.0)  # warm: fill memory and disk
                    await asyncio.sleep(1.0)  # the disk writes are in the background
                    rps = await _closed_loop(session, edge, path, run_s)
            finally:
                await _stop_edge(edge)
            rows.append([label, level, fmt(rps), fmt(rps * size / MiB, 1)])
    return rows


def _cycle(size: int) -> Callable[[int], str]:
    return lambda n: f"/o/{size}/{n % DISK_OBJECTS}"


def _zipf(objects: int, requests: int) -> list[int]:
    rng = random.Random(SEED)
    weights = [1.0 / (rank + 1) ** ZIPF_ALPHA for rank in range(objects)]
    return rng.choices(range(objects), weights, k=requests)


async def _get_all(session: aiohttp.ClientSession, edge: _Edge, paths: list[str]) -> None:
    """Every path asked once, in order, by CLIENTS concurrent clients."""
    todo = iter(paths)

    async def client() -> None:
        for path in todo:  # shared: each path goes to the next free client
            async with session.get(f"http://{edge.content}{path}", headers=HOST) as resp:
                await resp.read()

    await asyncio.gather(*(client() for _ in range(CLIENTS)))


async def _hit_ratio(session: aiohttp.ClientSession, edge: _Edge, origin: _Origin,
                     paths: list[str]) -> float:  # fmt: skip
    before = origin.fetches
    await _get_all(session, edge, paths)
    return 1 - (origin.fetches - before) / len(paths)


async def _restart(workdir: Path, origin: _Origin, plan: Plan) -> list[list[str]]:
    size = plan.restart_object_bytes
    objects = plan.restart_bytes // size
    where = workdir / "restart"
    where.mkdir()
    edge = await _start_edge(where, origin.url, "256M")
    paths = [f"/o/{size}/{n}" for n in _zipf(objects, plan.workload_requests)]
    async with aiohttp.ClientSession() as session:
        try:
            await _until_ready(session, edge)
            # fill: every object once, one at a time, so the disk holds them all (faster
            # stores would outrun its write queue, which drops what does not fit)
            for n in range(objects):
                async with session.get(f"http://{edge.content}/o/{size}/{n}", headers=HOST) as resp:
                    await resp.read()
            warm = await _hit_ratio(session, edge, origin, paths)
            await asyncio.sleep(2.0)  # let the last writes reach the disk
        finally:
            await _stop_edge(edge)
        started = time.monotonic()
        edge = await _start_edge(where, origin.url, "256M")
        try:
            await _until_ready(session, edge)
            ready_s = time.monotonic() - started
            after = await _hit_ratio(session, edge, origin, paths)
        finally:
            await _stop_edge(edge)
    on_disk = f"{objects * size / MiB:,.0f} MiB ({objects:,} objects)"
    return [[on_disk, fmt(ready_s, 2), fmt(100 * warm, 1), fmt(100 * after, 1),
             fmt(100 * after / warm if warm else float("nan"), 0)]]  # fmt: skip


async def _measure(workdir: Path, plan: Plan) -> tuple[Table, Table]:
    origin = _Origin()
    await origin.start()
    try:
        hits = await _throughput(workdir, origin, plan.run_s)
        restart = await _restart(workdir, origin, plan)
    finally:
        await origin.stop()
    notes = [
        f"One edge process, {CLIENTS} concurrent aiohttp clients in the harness, "
        f"{plan.run_s:g} s per run. Disk hits: memory holds ~1.5 objects and {DISK_OBJECTS} "
        "objects are cycled, so every request is a memory miss read back from disk.",
    ]
    hit_table = Table("Hit throughput: memory vs disk",
                      ["object", "level", "hits/s", "MiB/s"], hits, notes)  # fmt: skip
    restart_notes = [
        f"Zipf alpha = {ZIPF_ALPHA:g} workload of {plan.workload_requests:,} requests over the "
        f"stored objects ({CLIENTS} concurrent clients), before and after the "
        "restart; ready = start of the new process "
        "until /healthz answers 200 (disk index loaded).",
    ]
    restart_table = Table(
        "Restart with a full disk",
        ["on disk", "ready s", "hit % before", "hit % after", "after / before %"],
        restart,
        restart_notes,
    )
    return hit_table, restart_table


def measure(workdir: Path, plan: Plan) -> tuple[Table, Table]:
    """Both tables of the part."""
    return asyncio.run(_measure(workdir, plan))
