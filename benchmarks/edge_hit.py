"""Part 2: the cache-hit path of our edge and of nginx proxy_cache, both before the demo origin.

Each server is warmed (one miss, then a request that must be a hit) and driven by wrk on
loopback for a small and a large cached object; only hits are measured. wrk prints its
latency percentiles with `--latency`.
"""

from __future__ import annotations

import functools
import re
import statistics
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmarks.cdn import DEMO_ROOT
from benchmarks.processes import BenchError, CpuShares, Endpoint, Placement, run_measured
from benchmarks.report import CPU_NOTE, EQUAL_TERMS_NOTE, Table, bottleneck, fmt, ratio

WRK_THREADS = 1
WRK_CONNECTIONS = 32
OBJECT_TARGETS = (1024, 100 * 1024)  # the sizes the issue asks for, in bytes
CACHEABLE_DIRS = ("img", "static")  # long max-age: nothing expires during a run
HIT_MARKERS = ("hit", "HIT")
# The bench edge again with cache.fast_path = false: every hit through aiohttp's objects.
FULL_PATH_EDGE = "edge-full-path"


@dataclass(frozen=True, slots=True)
class CachedObject:
    path: str  # URL path on the origin
    size: int


@dataclass(frozen=True, slots=True)
class HitRun:
    server: str
    path: str
    size: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    cpu: CpuShares  # the load generator is wrk
    tool: Placement | None = None  # how wrk was started


def pick_objects(root: Path = DEMO_ROOT) -> list[CachedObject]:
    """For each target size, the long-lived demo object closest to it (by size ratio)."""
    files = [f for d in CACHEABLE_DIRS for f in (root / d).iterdir() if f.is_file()]
    if not files:
        raise BenchError(f"no cacheable objects under {root}")

    def distance(target: int, file: Path) -> float:
        size = file.stat().st_size
        return max(size, target) / max(1, min(size, target))

    chosen = [min(files, key=functools.partial(distance, target)) for target in OBJECT_TARGETS]
    return [CachedObject("/" + str(f.relative_to(root)), f.stat().st_size) for f in chosen]


def cache_status(url: str) -> str:
    """The cache verdict headers of one GET (ours: Cache-Status, nginx: X-Cache-Status)."""
    with urllib.request.urlopen(url, timeout=5.0) as response:
        response.read()
        headers = response.headers
        return f"{headers.get('Cache-Status', '')} {headers.get('X-Cache-Status', '')}"


def warm(server: Endpoint, obj: CachedObject) -> None:
    """Fill the cache and check the next request is a hit (else the run would time misses)."""
    url = f"http://{server.host}:{server.port}{obj.path}"
    cache_status(url)
    verdict = cache_status(url)
    if not any(marker in verdict for marker in HIT_MARKERS):
        raise BenchError(f"{server.name} did not serve {obj.path} from cache: {verdict!r}")


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _latency_ms(output: str, percent: str) -> float:
    match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
    if match is None:
        raise BenchError(f"wrk output has no {percent}% latency: {output[-300:]}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(output: str) -> tuple[float, float, float, int]:
    """Requests/s, p50 and p99 latency (ms), and error count from `wrk --latency` output."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if rps is None:
        raise BenchError(f"wrk output has no Requests/sec: {output[-300:]}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non2xx.group(1)) if non2xx else 0
    return float(rps.group(1)), _latency_ms(output, "50"), _latency_ms(output, "99"), errors


def run_wrk(server: Endpoint, obj: CachedObject, duration_s: float) -> HitRun:
    url = f"http://{server.host}:{server.port}{obj.path}"
    argv = ["wrk", "-t", str(WRK_THREADS), "-c", str(WRK_CONNECTIONS), "-d", f"{duration_s:g}s"]
    measured = run_measured([*argv, "--latency", url], server.pid, duration_s + 30)
    rps, p50, p99, errors = parse_wrk(measured.output)
    return HitRun(
        server.name, obj.path, obj.size, rps, p50, p99, errors, measured.cpu, measured.tool
    )


def hit_table(runs: Sequence[HitRun], ours: str) -> Table:
    """Per object and server: median requests/s and latency of the rounds, CPU, our ratio."""
    rows = []
    for path in dict.fromkeys(r.path for r in runs):
        baseline = statistics.median(r.rps for r in runs if r.path == path and r.server == ours)
        for server in dict.fromkeys(r.server for r in runs):
            chosen = [r for r in runs if r.path == path and r.server == server]
            rps = statistics.median(r.rps for r in chosen)
            cpu = CpuShares.median([r.cpu for r in chosen])
            rows.append([
                f"{path} ({chosen[0].size:,} B)", server, fmt(rps),
                fmt(statistics.median(r.p50_ms for r in chosen), 2),
                fmt(statistics.median(r.p99_ms for r in chosen), 2),
                str(sum(r.errors for r in chosen)), fmt(cpu.server),
                fmt(cpu.server * 1e4 / rps if rps else 0.0, 1), fmt(cpu.tool),
                fmt(cpu.others), fmt(cpu.stolen), bottleneck(cpu, "wrk"),
                "" if server == ours else ratio(baseline, rps),
            ])  # fmt: skip
    rounds = sum(1 for r in runs if r.server == ours and r.path == runs[0].path)
    notes = [
        f"wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} --latency, cache hits only (warmed and "
        f"checked first); medians of {rounds} alternating round(s).",
        "The demo objects closest to 1 KiB and 100 KiB; nginx runs one worker process, "
        "like one edge process.",
        f"{FULL_PATH_EDGE} is the same edge with `cache.fast_path = false`: every hit through "
        "aiohttp's request and response objects, as before the fast path (docs/caching.md).",
        "CPU µs/hit: the server's CPU time over the run divided by the requests answered.",
        CPU_NOTE,
        EQUAL_TERMS_NOTE,
    ]
    columns = ["object", "server", "req/s", "p50 ms", "p99 ms", "errors", "server CPU %"]
    columns += ["CPU µs/hit"]
    columns += ["wrk CPU %", "others CPU %", "stolen CPU %", "limited by", "edge / server"]
    return Table("Cache hits (wrk)", columns, rows, notes)
