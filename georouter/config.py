"""Router configuration: TOML loaded once into frozen dataclasses.

DNS names are stored absolute, lower-case, with the trailing dot ("cdn.example.com.").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Literal

AllDownPolicy = Literal["fail-open", "servfail"]
IPNetwork = IPv4Network | IPv6Network

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "data" / "cdn.toml"
DNS_LISTEN = "127.0.0.1:5300"
CONTROL_LISTEN = "127.0.0.1:9153"
ANSWER_TTL_S = 20
ANSWERS_PER_RESPONSE = 2
SATURATION_THRESHOLD = 0.85
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 0.5
PROBE_FALL = 2
PROBE_RISE = 2
REPORT_EXPIRY_S = 2.5


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class RouterSettings:
    dns_listen: HostPort
    control_listen: HostPort
    token: str
    geoip: Path | None = None  # None: the embedded GeoLite2-City


@dataclass(frozen=True, slots=True)
class Policy:
    default_region: str
    answer_ttl: int = ANSWER_TTL_S
    answers_per_response: int = ANSWERS_PER_RESPONSE
    saturation_threshold: float = SATURATION_THRESHOLD
    all_down: AllDownPolicy = "fail-open"


@dataclass(frozen=True, slots=True)
class HealthSettings:
    probe_interval_s: float = PROBE_INTERVAL_S
    probe_timeout_s: float = PROBE_TIMEOUT_S
    fall: int = PROBE_FALL
    rise: int = PROBE_RISE
    report_expiry_s: float = REPORT_EXPIRY_S


@dataclass(frozen=True, slots=True)
class StaticRecord:
    name: str  # absolute
    rtype: Literal["A", "AAAA", "CNAME", "TXT", "NS"]
    value: str  # CNAME/NS targets absolute
    ttl: int


@dataclass(frozen=True, slots=True)
class Zone:
    origin: str  # absolute
    ns: tuple[str, ...]  # absolute
    soa_rname: str  # absolute
    soa_serial: int
    soa_refresh: int
    soa_retry: int
    soa_expire: int
    negative_ttl: int  # SOA MINIMUM and the TTL of negative answers (RFC 2308 §5)
    services: tuple[str, ...]  # absolute geo-routed names
    records: tuple[StaticRecord, ...] = ()


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    latitude: float
    longitude: float
    countries: frozenset[str] = frozenset()  # ISO 3166-1 alpha-2, upper-case
    continents: frozenset[str] = frozenset()  # MaxMind continent codes: AF AN AS EU NA OC SA
    failover: tuple[str, ...] = ()  # after loading: every other region, nearest first unless given


@dataclass(frozen=True, slots=True)
class Override:
    network: IPNetwork
    region: str


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    region: str
    capacity_rps: float
    control_url: str  # probed at {control_url}/healthz
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None

    @property
    def health_url(self) -> str:
        return self.control_url.rstrip("/") + "/healthz"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    source: Path
    router: RouterSettings
    policy: Policy
    health: HealthSettings
    zones: tuple[Zone, ...]
    regions: tuple[Region, ...]
    nodes: tuple[Node, ...]
    overrides: tuple[Override, ...] = ()
    regions_by_name: dict[str, Region] = field(default_factory=dict, compare=False, repr=False)

    def region(self, name: str) -> Region:
        return self.regions_by_name[name]


def load_config(path: Path) -> RouterConfig:
    """Read and validate a router config; every defect raises ConfigError(file, key, expectation)."""
    raise NotImplementedError
