"""Pre-warm after failover: how warm the node that takes a killed edge's clients is.

The demo workload's popularity law (Zipf, s = 1.1, cdnlab/workload.py) over a catalog of
CATALOG objects of the demo origin, each `public, max-age=86400`. Two groups of eu
clients with their own interests (each its own half of the catalog): group 1 is served by
edge-eu-1, group 2 by edge-eu-2, each at RATE_RPS, for warm_s. Then edge-eu-1 is
kill -9'd and group 1 moves to edge-eu-2 at once (the router's answers move within
milliseconds: see the failover part; the clients are moved here directly, so the figure
is the cache's alone). The measure is group 1's hit ratio on edge-eu-2 over the next
measure_s (the issue's 10 s), next to its steady-state hit ratio on edge-eu-1 over the
last half of the warm phase: once with the router's popularity pre-warm (`[prewarm]
popularity = true`: the killed node's hot set, its top 32 objects, goes to edge-eu-2 as
soon as the router sees the node leave) and once without (reloaded with SIGHUP). Before
each trial edge-eu-1 is restarted empty and edge-eu-2 purged, so both runs start alike.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.cdn import BENCH_TOKEN, LOOPBACK, Cdn, all_nodes_up, cdn, start_edge
from benchmarks.processes import START_TIMEOUT_S, BenchError
from benchmarks.report import Table
from cdn.config import parse_host_port
from cdnlab.supervisor import READY_EVENT, running
from cdnlab.workload import zipf_weights
from georouter.config import RouterConfig

VICTIM, TAKER = "edge-eu-1", "edge-eu-2"
HOST = "cdn.example.com"
CATALOG = 2000  # objects; each group asks for its own half
RATE_RPS = 100.0  # per group
WORKERS = 8  # concurrent clients per group
GOAL_SHARE = 0.8  # the goal: >= 80 % of the steady-state hit ratio
SEED = 20261206
RELOAD_TIMEOUT_S = 10.0
UP_TIMEOUT_S = 20.0
FIRST_S = 1.0  # the cold start shows most in the first second


@dataclass(frozen=True, slots=True)
class Plan:
    warm_s: float
    measure_s: float
    trials: int


FULL = Plan(warm_s=12.0, measure_s=10.0, trials=2)
QUICK = Plan(warm_s=8.0, measure_s=10.0, trials=1)


@dataclass(frozen=True, slots=True)
class Trial:
    prewarm: bool
    steady: float  # group 1's hit ratio on the victim, last half of the warm phase
    after: float  # group 1's hit ratio on the taker over measure_s after the kill
    first: float  # the same over the first FIRST_S
    requests: int  # group 1's requests in that window


def catalog_dir(workdir: Path) -> Path:
    """A demo-origin root holding the catalog: CATALOG small images."""
    root = workdir / "catalog"
    (root / "img").mkdir(parents=True, exist_ok=True)
    for n in range(CATALOG):
        (root / "img" / f"obj-{n}.png").write_bytes(b"\x89PNG" + n.to_bytes(4, "big") * 256)
    return root


@contextmanager
def catalog_origin(root: Path) -> Iterator[str]:
    argv = [sys.executable, "-m", "cdnlab.origin", "--listen", f"{LOOPBACK}:0"]
    with running("origin", [*argv, "--root", str(root)], ready_event=READY_EVENT) as service:
        bound = parse_host_port(service.ready(START_TIMEOUT_S)["origin"])
        yield f"http://{bound}"


class Load:
    """Two groups of clients, each paced to RATE_RPS; group 1's target can move."""

    def __init__(self, targets: dict[int, str]) -> None:
        self.targets = dict(targets)
        self.records: list[tuple[float, int, str, bool]] = []  # (time, group, target, hit)
        weights = zipf_weights(CATALOG // 2)
        total = sum(weights)
        self._cumulative = [sum(weights[: i + 1]) / total for i in range(len(weights))]

    def path(self, group: int, rng: random.Random) -> str:
        point = rng.random()
        lo, hi = 0, len(self._cumulative) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self._cumulative[mid] < point:
                lo = mid + 1
            else:
                hi = mid
        return f"/img/obj-{lo * 2 + group - 1}.png"  # group 1: even objects, group 2: odd

    async def run(self, until: float) -> None:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._worker(session, group, w, until)
                                   for group in (1, 2) for w in range(WORKERS)))  # fmt: skip

    async def _worker(
        self, session: aiohttp.ClientSession, group: int, worker: int, until: float
    ) -> None:
        rng = random.Random(SEED * 100 + group * 10 + worker)
        interval = WORKERS / RATE_RPS
        next_at = time.monotonic() + rng.uniform(0, interval)
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))  # pacing, not a sync
            next_at += interval
            target = self.targets[group]
            try:
                async with session.get(
                    f"{target}{self.path(group, rng)}", headers={"Host": HOST}
                ) as response:
                    await response.read()
                    member = response.headers.get("Cache-Status", "").rsplit(",", 1)[-1]
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError, OSError):
                continue  # the killed edge's in-flight requests: not a cache outcome
            if ok:
                self.records.append((time.monotonic(), group, target, "; hit" in member))

    def ratio(self, group: int, target: str, start: float, end: float) -> tuple[float, int]:
        hits = [h for t, g, where, h in self.records
                if g == group and where == target and start <= t < end]  # fmt: skip
        return (sum(hits) / len(hits) if hits else 0.0), len(hits)


def _post(url: str, body: object) -> None:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {BENCH_TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=5.0) as response:
        response.read()


def _metric(url: str, pattern: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=2.0) as response:
        text = response.read().decode()
    match = re.search(rf"(?m)^{pattern} (\S+)", text)
    return float(match.group(1)) if match else 0.0


def _set_popularity(fleet: Cdn, config_path: Path, on: bool) -> None:
    """Rewrite [prewarm] popularity and SIGHUP the router; return once it reloaded."""
    text = re.sub(r"(?ms)\n\[prewarm\]\npopularity = \w+\n", "\n", config_path.read_text())
    config_path.write_text(text + f"\n[prewarm]\npopularity = {'true' if on else 'false'}\n")
    ok = 'georouter_reloads_total\\{result="ok"\\}'
    before = _metric(fleet.router.control_url, ok)
    os.kill(fleet.router.service.pid, signal.SIGHUP)
    _wait(lambda: _metric(fleet.router.control_url, ok) > before, RELOAD_TIMEOUT_S, "reload")


def _wait(done: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise BenchError(f"pre-warm after failover: no {what} within {timeout_s} s")
        time.sleep(0.05)


def trial(fleet: Cdn, origin_url: str, plan: Plan, prewarm: bool) -> Trial:
    victim, taker = fleet.edges[VICTIM], fleet.edges[TAKER]
    _post(f"{taker.control_url}/purge", {"prefix": f"http://{HOST}/"})
    victim_url = f"http://{victim.content.host}:{victim.content.port}"
    taker_url = f"http://{taker.content.host}:{taker.content.port}"
    load = Load({1: victim_url, 2: taker_url})

    async def scenario() -> tuple[float, float]:
        start = time.monotonic()
        running_load = asyncio.create_task(load.run(start + plan.warm_s + plan.measure_s))
        await asyncio.sleep(plan.warm_s)  # the warm phase's length, not a sync
        killed = time.monotonic()
        victim.service.kill()
        load.targets[1] = taker_url
        await running_load
        return start, killed

    start, killed = asyncio.run(scenario())
    steady, _ = load.ratio(1, victim_url, start + plan.warm_s / 2, killed)
    after, requests = load.ratio(1, taker_url, killed, killed + plan.measure_s)
    first, _ = load.ratio(1, taker_url, killed, killed + FIRST_S)
    fleet.edges[VICTIM] = start_edge(
        victim.name, victim.content.host, origin_url, [fleet.router.control_url], victim.ports
    )
    _wait(lambda: all_nodes_up(fleet.router.control_url), UP_TIMEOUT_S, "restarted edge up")
    return Trial(prewarm, steady, after, first, requests)


def measure(config: RouterConfig, workdir: Path, plan: Plan) -> list[Trial]:
    """`plan.trials` kills of edge-eu-1, each with and without popularity pre-warming."""
    workdir.mkdir(parents=True, exist_ok=True)
    results: list[Trial] = []
    with (
        catalog_origin(catalog_dir(workdir)) as origin_url,
        cdn(config, workdir, origin_url) as fleet,
    ):
        config_path = workdir / "cdn.toml"
        for _ in range(plan.trials):
            for prewarm in (True, False):
                _set_popularity(fleet, config_path, prewarm)
                results.append(trial(fleet, origin_url, plan, prewarm))
    return results


def prewarm_table(results: list[Trial], plan: Plan) -> Table:
    rows = []
    for prewarm in (True, False):
        runs = [t for t in results if t.prewarm == prewarm]
        steady = statistics.median(t.steady for t in runs)
        after = statistics.median(t.after for t in runs)
        share = after / steady if steady else 0.0
        rows.append([
            "with popularity pre-warm" if prewarm else "without",
            f"{steady:.1%}",
            f"{after:.1%}",
            f"{share:.0%}" + (" (goal ≥ 80 %)" if prewarm else ""),
            f"{statistics.median(t.first for t in runs):.1%}",
            f"{statistics.median(t.requests for t in runs):.0f}",
        ])  # fmt: skip
    notes = [
        f"Zipf (s = 1.1) over {CATALOG // 2} objects per group, {RATE_RPS:.0f} requests/s per "
        f"group; warm {plan.warm_s:.0f} s, then kill -9 {VICTIM}; its clients' hit ratio on "
        f"{TAKER} over the next {plan.measure_s:.0f} s; median of {plan.trials} trial(s).",
        "The pre-warm sends the killed node's top 32 objects (what its clients asked for most, "
        "by its last load report); the rest of the tail fills on demand.",
    ]
    columns = ["router", f"steady state on {VICTIM}", f"on {TAKER}, first {plan.measure_s:.0f} s",
               "share of steady state", f"first {FIRST_S:.0f} s", "requests"]  # fmt: skip
    return Table("Pre-warm after failover", columns, rows, notes)
