"""Part 1: DNS throughput and latency of georouter, gdnsd and PowerDNS under dnsperf.

dnsperf 2.10 can add one fixed EDNS option to every query (`-E code:hex`), but a text query
file cannot vary the ECS subnet per query. Its binary input mode (`-B`: length-prefixed
wire messages, RFC 1035 §4.2.2 framing; dnsperf rewrites only the message ID) can, so every
query mix is generated here as wire messages with dnspython: each query carries its own
EDNS Client Subnet option (RFC 7871 §6) and one dnsperf process drives the whole mix.

dnsperf 2.10 prints no latency histogram: the throughput runs give the average latency
from its summary, and the fixed-rate runs use `-v` (one line per response with its
latency) to compute percentiles.
"""

from __future__ import annotations

import ipaddress
import random
import re
import statistics
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.rdatatype
import maxminddb

from benchmarks.processes import BenchError, CpuShares, Endpoint, Placement, run_measured
from benchmarks.report import CPU_NOTE, EQUAL_TERMS_NOTE, Table, bottleneck, fmt, ratio
from georouter.config import RouterConfig

SEED = 7
QUERIES_PER_FILE = 20_000
SUBNETS_PER_REGION = 64
NXDOMAIN_SHARE = 0.10
NXDOMAIN_NAMES = 2_000
EDNS_PAYLOAD = 1232
DNSPERF_CLIENTS = 4
DNSPERF_OUTSTANDING = 200
DNSPERF_TIMEOUT_S = 2
SUPPRESS = "suppress=timeouts,congestion,sendfailed,sockready,unexpected"


@dataclass(frozen=True, slots=True)
class Mix:
    """A dnsperf binary query file and what it holds."""

    name: str
    description: str
    path: Path


@dataclass(frozen=True, slots=True)
class DnsRun:
    """One dnsperf run against one server."""

    server: str
    mix: str
    qps: float
    avg_ms: float
    lost: int
    sent: int
    cpu: CpuShares  # the load generator is dnsperf
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None
    tool: Placement | None = None  # how dnsperf was started


def _code(record: dict[str, Any], kind: str, key: str) -> str:
    part = record.get(kind)
    return str(part.get(key, "")) if isinstance(part, dict) else ""


def region_subnets(
    config: RouterConfig, reader: maxminddb.Reader, rng: random.Random
) -> dict[str, list[ipaddress.IPv4Network]]:
    """Random /24s the database places in a country or continent each region claims."""
    by_country = {c: r.name for r in config.regions for c in r.countries}
    by_continent = {c: r.name for r in config.regions for c in r.continents}
    found: dict[str, list[ipaddress.IPv4Network]] = {r.name: [] for r in config.regions}
    for _ in range(200_000):
        net = ipaddress.IPv4Network((rng.getrandbits(24) << 8, 24))
        record = reader.get(net.network_address) if net.is_global else None
        if not isinstance(record, dict):
            continue
        region = by_country.get(_code(record, "country", "iso_code")) or by_continent.get(
            _code(record, "continent", "code")
        )
        if region and len(found[region]) < SUBNETS_PER_REGION:
            found[region].append(net)
        if all(len(nets) >= SUBNETS_PER_REGION for nets in found.values()):
            return found
    raise BenchError("could not find enough located /24s per region in the GeoIP database")


def _wire(name: str, subnet: ipaddress.IPv4Network | None) -> bytes:
    options: list[dns.edns.Option] = (
        [dns.edns.ECSOption(str(subnet.network_address), 24)] if subnet else []
    )
    query = dns.message.make_query(
        name, dns.rdatatype.A, use_edns=0, payload=EDNS_PAYLOAD, options=options
    )
    query.flags = 0  # an authoritative server is asked without RD, as a resolver does
    return query.to_wire()


def _write_mix(path: Path, messages: Sequence[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack("!H", len(m)) + m for m in messages))


def subnets_by_region(
    config: RouterConfig, geoip: Path, seed: int = SEED
) -> dict[str, list[ipaddress.IPv4Network]]:
    """`region_subnets` from a database file, seeded: the same subnets on every run."""
    with maxminddb.open_database(str(geoip)) as reader:
        return region_subnets(config, reader, random.Random(seed))


def build_mixes(config: RouterConfig, geoip: Path, workdir: Path) -> tuple[Mix, ...]:
    """The three query mixes of the issue, as dnsperf -B files."""
    rng = random.Random(SEED)
    subnets = subnets_by_region(config, geoip)
    service = config.zones[0].services[0]
    origin = config.zones[0].origin
    every = [net for nets in subnets.values() for net in nets]
    ecs = [_wire(service, rng.choice(every)) for _ in range(QUERIES_PER_FILE)]
    missing = [f"nx{rng.randrange(NXDOMAIN_NAMES)}.{origin}" for _ in range(QUERIES_PER_FILE)]
    mixed = [
        _wire(missing[i], rng.choice(every)) if rng.random() < NXDOMAIN_SHARE else ecs[i]
        for i in range(QUERIES_PER_FILE)
    ]
    specs = [
        (
            "plain",
            f"{service} A, EDNS, no ECS (placed by the resolver address)",
            [_wire(service, None)],
        ),
        ("ecs", f"{service} A with ECS /24s of all regions ({len(every)} subnets)", ecs),
        ("nx10", "as ecs, 10 % NXDOMAIN names (random labels)", mixed),
    ]
    mixes = []
    for name, description, messages in specs:
        path = workdir / f"{name}.bin"
        _write_mix(path, messages)
        mixes.append(Mix(name, description, path))
    return tuple(mixes)


_FIELDS = {
    "sent": re.compile(r"Queries sent:\s+(\d+)"),
    "lost": re.compile(r"Queries lost:\s+(\d+)"),
    "qps": re.compile(r"Queries per second:\s+([\d.]+)"),
    "avg": re.compile(r"Average Latency \(s\):\s+([\d.]+)"),
}
_VERBOSE = re.compile(r"^> \S+ .* ([\d.]+)$", re.MULTILINE)


def parse_dnsperf(output: str) -> dict[str, float]:
    """The summary figures of a dnsperf run; BenchError if one is missing."""
    values: dict[str, float] = {}
    for key, regex in _FIELDS.items():
        match = regex.search(output)
        if match is None:
            raise BenchError(f"dnsperf output has no {key!r}: {output[-300:]}")
        values[key] = float(match.group(1))
    return values


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    index = min(len(sorted_values) - 1, max(0, round(share * len(sorted_values)) - 1))
    return sorted_values[index]


def latencies_ms(output: str) -> list[float]:
    """Per-response latencies from `dnsperf -v` lines (`> NOERROR name A 0.000123`)."""
    return sorted(float(m) * 1000.0 for m in _VERBOSE.findall(output))


def run_dnsperf(
    server: Endpoint, mix: Mix, duration_s: float, rate_qps: float | None = None
) -> DnsRun:
    """One dnsperf run; at a fixed rate (`rate_qps`) it also records latency percentiles."""
    argv = [
        "dnsperf", "-B", "-d", str(mix.path), "-s", server.host, "-p", str(server.port),
        "-l", f"{duration_s:g}", "-c", str(DNSPERF_CLIENTS), "-q", str(DNSPERF_OUTSTANDING),
        "-t", str(DNSPERF_TIMEOUT_S), "-O", SUPPRESS,
    ]  # fmt: skip
    if rate_qps is not None:
        argv += ["-Q", str(int(rate_qps)), "-v"]
    measured = run_measured(argv, server.pid, duration_s + DNSPERF_TIMEOUT_S + 30)
    output = measured.output
    figures = parse_dnsperf(output)
    run = DnsRun(
        server=server.name, mix=mix.name, qps=figures["qps"], avg_ms=figures["avg"] * 1000.0,
        lost=int(figures["lost"]), sent=int(figures["sent"]), cpu=measured.cpu,
        tool=measured.tool,
    )  # fmt: skip
    if rate_qps is None:
        return run
    lat = latencies_ms(output)
    if not lat:
        raise BenchError(f"dnsperf -v printed no latencies against {server.name}")
    return replace(
        run,
        p50_ms=percentile(lat, 0.50),
        p99_ms=percentile(lat, 0.99),
        p999_ms=percentile(lat, 0.999),
    )


def median_of(runs: Sequence[DnsRun], field: str) -> float:
    values = [getattr(r, field) for r in runs if getattr(r, field) is not None]
    return statistics.median(values) if values else float("nan")


def throughput_rounds(
    servers: Sequence[Endpoint], mixes: Sequence[Mix], rounds: int, duration_s: float
) -> list[DnsRun]:
    """Max-rate runs, alternating servers (A B C A B C …) so drift hits all alike."""
    return [
        run_dnsperf(server, mix, duration_s)
        for _ in range(rounds)
        for mix in mixes
        for server in servers
    ]


def latency_rounds(
    servers: Sequence[Endpoint], mix: Mix, rate_qps: float, rounds: int, duration_s: float
) -> list[DnsRun]:
    """Fixed-rate runs (the same offered load for every server) to compare latency tails."""
    return [
        run_dnsperf(server, mix, duration_s, rate_qps) for _ in range(rounds) for server in servers
    ]


def _select(runs: Sequence[DnsRun], server: str, mix: str) -> list[DnsRun]:
    return [r for r in runs if r.server == server and r.mix == mix]


def _throughput_row(chosen: Sequence[DnsRun], baselines: Sequence[float | None]) -> list[str]:
    """One server's cells; a baseline of None marks one of our own configurations."""
    qps = median_of(chosen, "qps")
    cpu = CpuShares.median([r.cpu for r in chosen])
    spread = f"{min(r.qps for r in chosen):,.0f} to {max(r.qps for r in chosen):,.0f}"
    return [
        chosen[0].mix,
        chosen[0].server,
        fmt(qps),
        spread,
        fmt(median_of(chosen, "avg_ms"), 2),
        str(sum(r.lost for r in chosen)),
        fmt(cpu.server),
        fmt(cpu.tool),
        fmt(cpu.others),
        fmt(cpu.stolen),
        bottleneck(cpu, "dnsperf"),
        *("" if base is None else ratio(base, qps) for base in baselines),
    ]


def throughput_table(runs: Sequence[DnsRun], mixes: Sequence[Mix], ours: Sequence[str]) -> Table:
    """Per mix and server: median q/s of the rounds, latency, loss, CPU, and our ratios.

    `ours` names georouter's configurations (one process, workers): each gets a ratio column.
    """
    servers = list(dict.fromkeys(r.server for r in runs))
    rows = []
    for mix in mixes:
        ours_qps = {name: median_of(_select(runs, name, mix.name), "qps") for name in ours}
        for server in servers:
            baselines = [None if server in ours_qps else ours_qps[name] for name in ours]
            rows.append(_throughput_row(_select(runs, server, mix.name), baselines))
    rounds = len(_select(runs, ours[0], mixes[0].name))
    notes = [f"{m.name}: {m.description}" for m in mixes] + [
        f"Medians of {rounds} alternating round(s); range: slowest to fastest round; "
        "lost: sum over the rounds.",
        CPU_NOTE,
        EQUAL_TERMS_NOTE,
        "On 2 cores dnsperf and the server share the CPU: a server faster than dnsperf "
        "(gdnsd) shows a lower bound. PowerDNS does not packet-cache answers with an ECS "
        "scope, so every ecs query goes through its geoip backend.",
    ]
    columns = ["mix", "server", "q/s", "range", "avg ms", "lost", "server CPU %"]
    columns += ["dnsperf CPU %", "others CPU %", "stolen CPU %", "limited by"]
    columns += [f"{name} / server" for name in ours]
    return Table("Throughput (dnsperf at max rate)", columns, rows, notes)


def latency_table(runs: Sequence[DnsRun], rate_qps: float) -> Table:
    """Per server at one offered load: latency percentiles (median of the rounds, and the
    p99's range over them: on a shared machine it moves more than the median), loss, CPU,
    and the p99 of the round the hypervisor stole least from (its stalls reach every
    server's tail, and the load generator's)."""
    rows = []
    for server in dict.fromkeys(r.server for r in runs):
        chosen = [r for r in runs if r.server == server]
        cells = [fmt(median_of(chosen, f), 3) for f in ("avg_ms", "p50_ms", "p99_ms")]
        p99s = [r.p99_ms for r in chosen if r.p99_ms is not None]
        spread = f"{min(p99s):.2f} to {max(p99s):.2f}"
        lost = str(sum(r.lost for r in chosen))
        p999 = fmt(median_of(chosen, "p999_ms"), 3)
        cpu = CpuShares.median([r.cpu for r in chosen])
        quietest = min(chosen, key=lambda r: r.cpu.stolen)
        quiet_p99 = f"{fmt(quietest.p99_ms or float('nan'), 3)} ({quietest.cpu.stolen:.0f} %)"
        rows.append(
            [server, *cells, spread, p999, lost, fmt(cpu.server), fmt(cpu.stolen), quiet_p99]
        )
    rounds = len(runs) // max(1, len(rows))
    notes = [
        f"Offered {rate_qps:,.0f} q/s (dnsperf -Q), ecs mix; percentiles from dnsperf -v;"
        f" medians of {rounds} alternating rounds.",
        CPU_NOTE,
        EQUAL_TERMS_NOTE,
    ]
    columns = [
        "server", "avg ms", "p50 ms", "p99 ms", "p99 range ms", "p99.9 ms", "lost",
        "server CPU %", "stolen CPU %", "p99 ms, least-stolen round (stolen)",
    ]  # fmt: skip
    return Table(f"Latency at a fixed {rate_qps:,.0f} q/s", columns, rows, notes)
