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

import dns.edns
import dns.message
import dns.rdatatype
import maxminddb

from benchmarks.processes import BenchError, Endpoint, cpu_sample, run_tool
from georouter.config import RouterConfig

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
    server_cpu: float  # % of one core, the server's whole process tree
    tool_cpu: float  # % of one core, dnsperf
    p50_ms: float | None = None
    p99_ms: float | None = None
    p999_ms: float | None = None


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
        country = (record.get("country") or {}).get("iso_code")
        continent = (record.get("continent") or {}).get("code")
        region = by_country.get(country) or by_continent.get(continent)
        if region and len(found[region]) < SUBNETS_PER_REGION:
            found[region].append(net)
        if all(len(nets) >= SUBNETS_PER_REGION for nets in found.values()):
            return found
    raise BenchError("could not find enough located /24s per region in the GeoIP database")


def _wire(name: str, subnet: ipaddress.IPv4Network | None) -> bytes:
    options = [dns.edns.ECSOption(str(subnet.network_address), 24)] if subnet else []
    query = dns.message.make_query(
        name, dns.rdatatype.A, use_edns=0, payload=EDNS_PAYLOAD, options=options
    )
    query.flags = 0  # an authoritative server is asked without RD, as a resolver does
    return query.to_wire()


def _write_mix(path: Path, messages: Sequence[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack("!H", len(m)) + m for m in messages))


def build_mixes(
    config: RouterConfig, geoip: Path, workdir: Path, seed: int = 7
) -> tuple[tuple[Mix, ...], dict[str, list[ipaddress.IPv4Network]]]:
    """The three query mixes of the issue, as dnsperf -B files, and the subnets used."""
    rng = random.Random(seed)
    with maxminddb.open_database(str(geoip)) as reader:
        subnets = region_subnets(config, reader, rng)
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
    return tuple(mixes), subnets


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
    before = cpu_sample(server.pid)
    output, tool_cpu = run_tool(argv, timeout_s=duration_s + DNSPERF_TIMEOUT_S + 30)
    server_cpu = cpu_sample(server.pid).percent_since(before)
    figures = parse_dnsperf(output)
    run = DnsRun(
        server=server.name, mix=mix.name, qps=figures["qps"], avg_ms=figures["avg"] * 1000.0,
        lost=int(figures["lost"]), sent=int(figures["sent"]), server_cpu=server_cpu,
        tool_cpu=tool_cpu,
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
