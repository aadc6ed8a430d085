"""What the scaling part feeds the router: generated topologies and wide ECS query mixes.

A topology keeps the shipped topology's shape (its [router], [policy] and zones verbatim, its three
regions first, two nodes per region alternating 2,000 and 1,000 capacity) and grows in one
direction at a time: more nodes (round-robin over the regions), more regions (each new one
claims one or more real countries, which win over the shipped regions' continents), more
CIDR overrides (random public /24s, round-robin over the regions). Every node's control URL
is one stub health endpoint, probed once at start (PROBE_INTERVAL_S): the nodes are up, and
no control-plane work competes with the answers being measured.

A query mix is a dnsperf -B file (RFC 1035 §4.2.2 framing) of one name asked with EDNS
Client Subnet /24s (RFC 7871 §6): one template message whose last three bytes, the
truncated ECS address, are replaced per query, so a million distinct /24s take a second.
"""

from __future__ import annotations

import random
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, ip_network
from pathlib import Path

import dns.edns
import dns.message
import dns.rdatatype

from georouter.config import Region, RouterConfig

SEED = 16
NODE_BLOCK = ip_network("198.18.0.0/15")  # RFC 2544 benchmarking block: answers only
PROBE_INTERVAL_S = 3600.0  # one probe round at start, none while measuring
PROBE_TIMEOUT_S = 300.0  # the first round queues thousands of probes behind aiohttp's pool
EDNS_PAYLOAD = 1232
ECS_TEMPLATE_ADDRESS = bytes((192, 0, 2))  # RFC 5737 TEST-NET-1, replaced per query
# First octets of blocks with no geography (private, loopback, link-local, CGNAT, multicast,
# reserved): their /24s are left out of mixes and overrides, as georouter's rules cover them.
UNPLACED_OCTETS = frozenset({0, 10, 100, 127, 169, 172, 192, *range(224, 256)})
# Countries claimed by the regions added beyond the shipped three (none of them claimed by a
# shipped region), largest Internet populations first.
EXTRA_COUNTRIES = (
    "US", "CN", "IN", "BR", "JP", "DE", "GB", "FR", "RU", "KR", "ID", "MX", "CA", "IT", "ES",
    "AU", "NL", "PL", "VN", "TH", "PH", "MY", "AR", "CO", "ZA", "EG", "NG", "KE", "UA", "SE",
    "CH", "BE", "AT", "CZ", "RO", "PT", "GR", "HU", "DK", "FI", "NO", "IE", "NZ", "SG", "HK",
    "TW", "PK", "BD", "CL", "PE", "VE", "MA", "DZ", "IR", "IQ", "KZ", "BY", "RS", "BG", "HR",
)  # fmt: skip
_HEALTH = re.compile(r"(?ms)^\[health\]\n.*?(?=^\[)")
_FIRST_REGION = re.compile(r"(?m)^\[\[regions\]\]")


@dataclass(frozen=True, slots=True)
class Shape:
    """How big a generated topology is."""

    nodes: int
    regions: int
    overrides: int

    @property
    def label(self) -> str:
        return f"{self.nodes:,} nodes, {self.regions} regions, {self.overrides:,} overrides"


def random_slash24s(count: int, rng: random.Random) -> list[int]:
    """`count` distinct public /24s as 24-bit prefixes (address >> 8), in drawing order."""
    chosen: dict[int, None] = {}
    while len(chosen) < count:
        prefix = rng.getrandbits(24)
        if prefix >> 16 not in UNPLACED_OCTETS:
            chosen[prefix] = None
    return list(chosen)


def _network(prefix: int) -> IPv4Network:
    return IPv4Network((prefix << 8, 24))


def _strings(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"


def _region_table(region: Region) -> str:
    lines = ["[[regions]]", f'name = "{region.name}"']
    for key, codes in (("continents", region.continents), ("countries", region.countries)):
        if codes:
            lines.append(f"{key} = {_strings(sorted(codes))}")
    lines += [f"latitude = {region.latitude}", f"longitude = {region.longitude}"]
    if region.failover:
        lines.append(f"failover = {_strings(region.failover)}")
    return "\n".join(lines) + "\n"


def _regions(shipped: RouterConfig, count: int, rng: random.Random) -> list[Region]:
    if count < len(shipped.regions):
        raise ValueError(f"at least the shipped {len(shipped.regions)} regions, got {count}")
    extra = count - len(shipped.regions)
    added = [
        Region(
            name=f"r{index + len(shipped.regions) + 1:02d}",
            latitude=round(rng.uniform(-55.0, 70.0), 2),
            longitude=round(rng.uniform(-180.0, 180.0), 2),
            countries=frozenset(EXTRA_COUNTRIES[index::extra]) if extra else frozenset(),
        )
        for index in range(extra)
    ]
    return [*shipped.regions, *added]


def _node_tables(regions: Sequence[Region], count: int, health_url: str) -> Iterator[str]:
    if count >= NODE_BLOCK.num_addresses - 1:
        raise ValueError(f"at most {NODE_BLOCK.num_addresses - 2} nodes, got {count}")
    for index in range(count):
        region = regions[index % len(regions)].name
        ordinal = index // len(regions) + 1
        yield (
            f'[[nodes]]\nname = "edge-{region}-{ordinal}"\nregion = "{region}"\n'
            f'ipv4 = "{NODE_BLOCK[index + 1]}"\ncapacity_rps = {2000 if ordinal % 2 else 1000}\n'
            f'control_url = "{health_url}"\ntoken = "scaling-edge-{region}-{ordinal}"\n'
        )  # each node its own credential, as in the shipped topology


def _override_tables(regions: Sequence[Region], count: int, rng: random.Random) -> Iterator[str]:
    for index, prefix in enumerate(random_slash24s(count, rng)):
        region = regions[index % len(regions)].name
        yield f'[[overrides]]\nnetwork = "{_network(prefix)}"\nregion = "{region}"\n'


def topology_toml(shipped_text: str, shipped: RouterConfig, shape: Shape, health_url: str) -> str:
    """A router config of `shape` in the shipped file's shape (module docstring), as TOML.

    `shipped_text` is georouter/data/cdn.toml's text and `shipped` that file loaded; every node is
    probed at `health_url`. ValueError if the shape cannot be built.
    """
    rng = random.Random(SEED)
    head = _FIRST_REGION.split(shipped_text, maxsplit=1)[0]
    health = (
        f"[health]\nprobe_interval_s = {PROBE_INTERVAL_S}\nprobe_timeout_s = {PROBE_TIMEOUT_S}\n"
        f"fall = {shipped.health.fall}\nrise = {shipped.health.rise}\n"
        f"report_expiry_s = {shipped.health.report_expiry_s}\n\n"
    )
    head, replaced = _HEALTH.subn(health, head, count=1)
    if not replaced:
        raise ValueError("the shipped topology has no [health] table before its zones")
    regions = _regions(shipped, shape.regions, rng)
    parts = [head, *map(_region_table, regions)]
    parts += _node_tables(regions, shape.nodes, health_url)
    parts += _override_tables(regions, shape.overrides, rng)
    return "\n".join(parts)


def ecs_head(name: str) -> bytes:
    """A query for `name` A with EDNS and ECS /24, without its last three bytes (the address).

    RD is clear, as a resolver asks an authoritative server.
    """
    option = dns.edns.ECSOption(str(_network(0xC00002).network_address), 24)
    query = dns.message.make_query(
        name, dns.rdatatype.A, use_edns=0, payload=EDNS_PAYLOAD, options=[option]
    )
    query.flags = 0
    wire = query.to_wire()
    if not wire.endswith(ECS_TEMPLATE_ADDRESS):  # the ECS option must be the message's end
        raise ValueError("the ECS address is not the end of the query message")
    return wire[: -len(ECS_TEMPLATE_ADDRESS)]


def ecs_queries(name: str, subnets: Sequence[int]) -> list[bytes]:
    """One query message per /24 prefix, in order."""
    head = ecs_head(name)
    return [head + prefix.to_bytes(3, "big") for prefix in subnets]


def write_mix(path: Path, name: str, subnets: Sequence[int], length: int) -> None:
    """A dnsperf -B file of `length` queries cycling through `subnets` in order."""
    head = ecs_head(name)
    framed = struct.pack("!H", len(head) + 3) + head
    count = len(subnets)
    with path.open("wb") as out:
        out.write(b"".join(framed + subnets[i % count].to_bytes(3, "big") for i in range(length)))
