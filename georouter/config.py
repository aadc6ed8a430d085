"""Router configuration: TOML loaded once into frozen dataclasses.

DNS names are stored absolute, lower-case, with the trailing dot ("cdn.example.com.").
`load_config` validates everything once; each defect raises one
`ConfigError(file, key path, expectation)`, e.g.
`cdn.toml: nodes[2].region: unknown region 'apac' (known: ap, eu, na)`.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib.resources import files
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path
from typing import Literal

from cdn.config import (
    MAX_CAPACITY_RPS,
    MAX_TIMER_S,
    HostPort,
    bearer_token,
    http_url,
    parse_host_port,
    previous_tokens,
)
from cdn.jsonlog import JsonLogSettings, parse_json_log
from cdn.prewarm import MAX_HOT, MAX_ORDER_URLS
from cdn.tomltable import Table, read_toml
from georouter.cookies import SECRET_BYTES, CookieSecrets
from georouter.errors import ConfigError
from georouter.prewarm import PrewarmLimits
from georouter.rrl import MAX_RESPONSES_PER_SECOND, MAX_SLIP, MAX_WINDOW_S, RrlConfig
from georouter.zonedata import ALL_DOWN_POLICIES as ALL_DOWN_POLICIES
from georouter.zonedata import (
    MAX_TTL_S,
    Inventory,
    Zone,
    all_down_policy,
    ip_address_of,
    read_zones,
)
from georouter.zonedata import AllDownPolicy as AllDownPolicy
from georouter.zonedata import RecordType as RecordType
from georouter.zonedata import ServicePolicy as ServicePolicy
from georouter.zonedata import StaticRecord as StaticRecord

IPNetwork = IPv4Network | IPv6Network

# The default topology ships inside the package (package data), so an installed wheel finds it.
# Installed or editable, the package is a directory and the resource a plain file.
DEFAULT_CONFIG = Path(str(files("georouter") / "data" / "cdn.toml"))
DNS_LISTEN = "127.0.0.1:5300"
MAX_DNS_LISTEN = 16  # addresses in router.dns_listen (each is a UDP and a TCP socket)
CONTROL_LISTEN = "127.0.0.1:9153"
ANSWER_TTL_S = 20
DEGRADED_TTL_S = 5  # failover, spill, fail-open and degraded-region answers (health-derived TTL)
ANSWERS_PER_RESPONSE = 2
SATURATION_THRESHOLD = 0.85
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 0.5
PROBE_FALL = 2
PROBE_RISE = 2
REPORT_EXPIRY_S = 2.5
# A report channel pings when it has heard nothing for this long and gives up when the
# pong is not back within half of it: a frozen edge is out within 1.5 x this.
CHANNEL_HEARTBEAT_S = 1.0
FANOUT_TIMEOUT_S = 2.0  # a node that has not confirmed a purge by then is "pending"
STATE_DIR_NAME = "georouter"  # under $XDG_STATE_HOME (default ~/.local/state)
BUS_REPLICAS, MAX_BUS_REPLICAS = 1, 5  # JetStream replicas of the shared state (3 in a cluster)
DNS_WORKERS, MAX_DNS_WORKERS = 1, 64  # processes answering UDP; 1: the main process itself

MAX_ANSWERS = 8
MAX_SATURATION = 1.5
MAX_PROBE_COUNT = 100
EARTH_RADIUS_KM = 6371.0088
CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})  # MaxMind continent codes

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")  # region and node names (metric labels)
_COUNTRY = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class RouterSettings:
    dns_listens: tuple[HostPort, ...]  # router.dns_listen: one address or a list of them
    control_listen: HostPort
    token: str = ""  # shared by nodes without their own token (before per-node tokens)
    geoip: Path | None = None  # None: the embedded GeoLite2-City
    dns_workers: int = DNS_WORKERS
    previous_tokens: tuple[str, ...] = ()  # still accepted while edges move to `token`
    state_dir: Path | None = None  # None: default_state_dir(the config file)
    fanout_timeout_s: float = FANOUT_TIMEOUT_S
    operator_token: str = ""  # drain, undrain, weight, purge; "": router.token (a warning)
    previous_operator_tokens: tuple[str, ...] = ()  # still accepted during a rotation

    @property
    def dns_listen(self) -> HostPort:
        """The first DNS address (the one named in logs and in the demo's guide)."""
        return self.dns_listens[0]


@dataclass(frozen=True, slots=True)
class BusSettings:
    """NATS servers shared by several routers; none: this router keeps its state alone."""

    servers: tuple[str, ...] = ()
    replicas: int = BUS_REPLICAS


@dataclass(frozen=True, slots=True)
class Policy:
    default_region: str
    answer_ttl: int = ANSWER_TTL_S
    degraded_ttl: int = DEGRADED_TTL_S
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
    channel_heartbeat_s: float = CHANNEL_HEARTBEAT_S


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    latitude: float
    longitude: float
    countries: frozenset[str] = frozenset()  # ISO 3166-1 alpha-2, upper-case
    continents: frozenset[str] = frozenset()  # MaxMind continent codes: AF AN AS EU NA OC SA
    failover: tuple[str, ...] = ()  # after loading: every other region, nearest first unless given

    def distance_km(self, latitude: float, longitude: float) -> float:
        """Great-circle (haversine) distance from this region's coordinates."""
        lat1, lat2 = math.radians(self.latitude), math.radians(latitude)
        dlat, dlon = lat2 - lat1, math.radians(longitude - self.longitude)
        h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
        return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class Override:
    network: IPNetwork
    region: str


# "edge": handed to clients in DNS answers. "shield": a parent the edges fill from (edge
# edge.parents), probed, shown and purged like an edge but never in an answer.
NodeRole = Literal["edge", "shield"]
NODE_ROLES: tuple[NodeRole, ...] = ("edge", "shield")


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    region: str
    capacity_rps: float
    control_url: str  # probed at {control_url}/healthz
    ipv4: IPv4Address | None = None
    ipv6: IPv6Address | None = None
    tokens: tuple[str, ...] = ()  # its own token, then previous_tokens; (): router.token
    role: NodeRole = "edge"

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
    bus: BusSettings = BusSettings()
    rrl: RrlConfig | None = None  # [rrl]: off unless present, as in BIND
    cookies: CookieSecrets | None = None  # [cookies]: None = a random secret per start
    query_log: JsonLogSettings = JsonLogSettings()  # noqa: RUF009 (frozen) [query_log]: off
    prewarm: PrewarmLimits = PrewarmLimits()  # noqa: RUF009 (frozen) [prewarm]: quotas, popularity
    regions_by_name: dict[str, Region] = field(default_factory=dict, compare=False, repr=False)

    def region(self, name: str) -> Region:
        return self.regions_by_name[name]

    @property
    def state_dir(self) -> Path:
        """router.state_dir, else the default for this config file."""
        return self.router.state_dir or default_state_dir(self.source)

    @property
    def services(self) -> tuple[ServicePolicy, ...]:
        """Every geo-routed name's policy, zone by zone."""
        return tuple(policy for zone in self.zones for policy in zone.policies)


def load_config(path: Path) -> RouterConfig:
    """Read and validate a router config; each defect raises ConfigError(file, key, expectation)."""
    path = Path(path)
    source = str(path)
    with Table(source, "", read_toml(path, source, ConfigError), ConfigError) as top:
        router = _router(top.table("router"), path.absolute().parent)
        regions = _regions(top, top.tables("regions"))
        policy = _policy(top.table("policy"), regions)
        health = _health(top.table("health"))
        nodes = _nodes(top.tables("nodes"), regions)
        _check_credentials(top, router, nodes)
        fleet = Inventory(
            regions.keys(),
            {node.name: node.region for node in nodes if node.role == "edge"},
            frozenset(node.name for node in nodes if node.role == "shield"),
        )
        zones = read_zones(top, top.tables("zones"), fleet)
        overrides = _overrides(top.tables("overrides"), regions)
        bus = _bus(top.table("bus"))
        rrl = _rrl(top.table("rrl")) if top.has("rrl") else None
        cookies = _cookies(top.table("cookies")) if top.has("cookies") else None
        query_log = _query_log(top.table("query_log"), path.absolute().parent)
        prewarm = _prewarm(top.table("prewarm"))
    return RouterConfig(
        source=path,
        router=router,
        policy=policy,
        health=health,
        zones=zones,
        regions=tuple(regions.values()),
        nodes=nodes,
        overrides=overrides,
        bus=bus,
        rrl=rrl,
        cookies=cookies,
        query_log=query_log,
        prewarm=prewarm,
        regions_by_name=regions,
    )


def _router(t: Table, config_dir: Path) -> RouterSettings:
    with t:
        return RouterSettings(
            dns_listens=_dns_listens(t),
            control_listen=t.parsed("control_listen", parse_host_port, CONTROL_LISTEN),
            token=t.optional("token", bearer_token) or "",
            geoip=t.optional("geoip", lambda text: _file_path(text, config_dir)),
            dns_workers=t.integer("dns_workers", 1, MAX_DNS_WORKERS, DNS_WORKERS),
            previous_tokens=previous_tokens(t),
            state_dir=t.optional("state_dir", lambda text: _dir_path(text, config_dir)),
            fanout_timeout_s=t.real("fanout_timeout_s", 0, MAX_TIMER_S, FANOUT_TIMEOUT_S,
                                    lo_open=True),
            operator_token=t.optional("operator_token", bearer_token) or "",
            previous_operator_tokens=previous_tokens(t, "previous_operator_tokens"),
        )  # fmt: skip


def _dns_listens(t: Table) -> tuple[HostPort, ...]:
    """router.dns_listen: "HOST:PORT" or a list of them (IPv4 and IPv6 from one router)."""
    if not t.has("dns_listen") or isinstance(t.get("dns_listen", object), str):
        return (t.parsed("dns_listen", parse_host_port, DNS_LISTEN),)
    items = t.strings("dns_listen")
    if not 1 <= len(items) <= MAX_DNS_LISTEN:
        raise t.error("dns_listen", f"expected 1..{MAX_DNS_LISTEN} addresses")
    listens = tuple(t.item(key, text, parse_host_port) for key, text in items)
    for (key, _), where in zip(items[1:], listens[1:], strict=True):
        if listens.count(where) > 1:
            raise t.error(key, f"{where} listed twice")
    return listens


def _query_log(t: Table, config_dir: Path) -> JsonLogSettings:
    settings = parse_json_log(t)
    if settings.path is None:
        return settings
    if not settings.path:
        raise t.error("path", "expected a file path")
    return replace(settings, path=str(_file_path(settings.path, config_dir)))


def _check_credentials(top: Table, router: RouterSettings, nodes: tuple[Node, ...]) -> None:
    """Every node has a credential; no token is both a node's and an operator's, or two
    nodes' (either would let one holder act as another)."""
    owners: dict[str, str] = {}
    for i, node in enumerate(nodes):
        if not node.tokens and not router.token:
            raise top.error(f"nodes[{i}].token", "expected a token (or a shared router.token)")
        for token in node.tokens:
            if owners.setdefault(token, node.name) != node.name:
                raise top.error(f"nodes[{i}].token", f"same token as node {owners[token]!r}")
    if not router.operator_token and not router.token:
        raise top.error("router.operator_token", "expected a token for drain, weight and purge")
    for key, tokens in (
        ("operator_token", (router.operator_token, *router.previous_operator_tokens)),
        ("token", (router.token, *router.previous_tokens)),
    ):
        for token in tokens:
            if token in owners:
                raise top.error(f"router.{key}", f"same token as node {owners[token]!r}")
    _check_operator_not_shared(top, router)


def _check_operator_not_shared(top: Table, router: RouterSettings) -> None:
    """No operator token (current or previous) is one of the shared tokens (current or
    previous): edges without their own token hold those, and would act as operators."""
    shared = {router.token: "router.token"} if router.token else {}
    for j, token in enumerate(router.previous_tokens):
        shared.setdefault(token, f"router.previous_tokens[{j}]")
    operator = [("router.operator_token", router.operator_token)]
    operator += [
        (f"router.previous_operator_tokens[{i}]", token)
        for i, token in enumerate(router.previous_operator_tokens)
    ]
    for key, token in operator:
        if token in shared:
            raise top.error(key, f"must differ from {shared[token]} (edges hold it)")


def default_state_dir(config_path: Path) -> Path:
    """$XDG_STATE_HOME/georouter/<config name>-<hash of its absolute path> (XDG Base
    Directory spec; ~/.local/state if unset): one per config file, so a restart finds its
    state and two routers started from two files on one host never share one."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    where = str(Path(config_path).absolute())
    digest = hashlib.sha256(where.encode()).hexdigest()[:12]
    return Path(base) / STATE_DIR_NAME / f"{Path(config_path).stem}-{digest}"


def _dir_path(text: str, config_dir: Path) -> Path:
    if not text:
        raise ValueError("expected a directory path")
    return config_dir / Path(text).expanduser()


def _bus(t: Table) -> BusSettings:
    with t:
        servers = tuple(t.item(key, value, _nats_url) for key, value in t.strings("servers"))
        return BusSettings(
            servers=servers, replicas=t.integer("replicas", 1, MAX_BUS_REPLICAS, BUS_REPLICAS)
        )


def _prewarm(t: Table) -> PrewarmLimits:
    d = PrewarmLimits()
    with t:
        return PrewarmLimits(
            max_urls_per_task=t.integer("max_urls_per_task", 1, MAX_ORDER_URLS,
                                        d.max_urls_per_task),
            max_urls_per_day=t.integer("max_urls_per_day", 0, 10**9, d.max_urls_per_day),
            popularity=t.get("popularity", bool, d.popularity),
            popularity_top_k=t.integer("popularity_top_k", 1, MAX_HOT, d.popularity_top_k),
            popularity_interval_s=t.real("popularity_interval_s", 0, MAX_TIMER_S,
                                         d.popularity_interval_s),
        )  # fmt: skip


def _rrl(t: Table) -> RrlConfig:
    defaults = RrlConfig()
    with t:
        exempt = tuple(t.item(key, value, _network) for key, value in t.strings("exempt"))
        return RrlConfig(
            responses_per_second=t.real("responses_per_second", 0, MAX_RESPONSES_PER_SECOND,
                                        defaults.responses_per_second, lo_open=True),
            window_s=t.real("window_s", 1, MAX_WINDOW_S, defaults.window_s),
            slip=t.integer("slip", 0, MAX_SLIP, defaults.slip),
            ipv4_prefix=t.integer("ipv4_prefix", 0, 32, defaults.ipv4_prefix),
            ipv6_prefix=t.integer("ipv6_prefix", 0, 128, defaults.ipv6_prefix),
            exempt=exempt,
            log_only=t.get("log_only", bool, False),
        )  # fmt: skip


def _cookies(t: Table) -> CookieSecrets:
    with t:
        current = t.parsed("secret", _secret)
        previous = tuple(
            t.item(key, value, _secret) for key, value in t.strings("previous_secrets")
        )
        return CookieSecrets(current, previous)


def _secret(text: str) -> bytes:
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError("expected hex digits") from None
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"expected {SECRET_BYTES * 8} bits ({SECRET_BYTES * 2} hex digits)")
    return secret


def _nats_url(text: str) -> str:
    return http_url(text, schemes=("nats", "tls"))


def _file_path(text: str, config_dir: Path) -> Path:
    if not text:
        raise ValueError("expected a file path")
    return config_dir / Path(text).expanduser()  # an absolute path replaces config_dir


def _policy(t: Table, regions: Mapping[str, Region]) -> Policy:
    with t:
        default_region = t.get("default_region", str, next(iter(regions)))
        if default_region not in regions:
            raise t.error("default_region", _unknown_region(default_region, regions))
        return Policy(
            default_region=default_region,
            answer_ttl=t.integer("answer_ttl", 0, MAX_TTL_S, ANSWER_TTL_S),
            degraded_ttl=t.integer("degraded_ttl", 0, MAX_TTL_S, DEGRADED_TTL_S),
            answers_per_response=t.integer(
                "answers_per_response", 1, MAX_ANSWERS, ANSWERS_PER_RESPONSE
            ),
            saturation_threshold=t.real(
                "saturation_threshold", 0, MAX_SATURATION, SATURATION_THRESHOLD, lo_open=True
            ),
            all_down=t.parsed("all_down", all_down_policy, "fail-open"),
        )


def _health(t: Table) -> HealthSettings:
    def seconds(key: str, default: float) -> float:
        return t.real(key, 0, MAX_TIMER_S, default, lo_open=True)

    with t:
        return HealthSettings(
            probe_interval_s=seconds("probe_interval_s", PROBE_INTERVAL_S),
            probe_timeout_s=seconds("probe_timeout_s", PROBE_TIMEOUT_S),
            fall=t.integer("fall", 1, MAX_PROBE_COUNT, PROBE_FALL),
            rise=t.integer("rise", 1, MAX_PROBE_COUNT, PROBE_RISE),
            report_expiry_s=seconds("report_expiry_s", REPORT_EXPIRY_S),
            channel_heartbeat_s=seconds("channel_heartbeat_s", CHANNEL_HEARTBEAT_S),
        )


def _unique_name(t: Table, seen: set[str], what: str) -> str:
    name: str = t.get("name", str)
    if not _NAME.fullmatch(name):
        raise t.error("name", f"expected a {what} name (letters, digits, -_.), got {name!r}")
    if name in seen:
        raise t.error("name", f"duplicate {what} name {name!r}")
    seen.add(name)
    return name


def _unknown_region(name: str, regions: Mapping[str, Region]) -> str:
    return f"unknown region {name!r} (known: {', '.join(sorted(regions))})"


def _known_region(t: Table, regions: Mapping[str, Region]) -> str:
    name: str = t.get("region", str)
    if name not in regions:
        raise t.error("region", _unknown_region(name, regions))
    return name


def _regions(top: Table, tables: list[Table]) -> dict[str, Region]:
    if not tables:
        raise top.error("regions", "expected at least one [[regions]] table")
    seen: set[str] = set()
    claims: dict[str, str] = {}  # "country DE" / "continent EU" → region name
    parsed = [_region(t, seen, claims) for t in tables]
    regions = {region.name: region for region, _ in parsed}
    for t, (region, failover) in zip(tables, parsed, strict=True):
        order = _failover(t, failover, region, regions)
        regions[region.name] = replace(region, failover=order)
    return regions


def _region(
    t: Table, seen: set[str], claims: dict[str, str]
) -> tuple[Region, list[tuple[str, str]]]:
    with t:
        name = _unique_name(t, seen, "region")
        region = Region(
            name=name,
            latitude=t.real("latitude", -90, 90),
            longitude=t.real("longitude", -180, 180),
            countries=_codes(t, "countries", "country", name, claims),
            continents=_codes(t, "continents", "continent", name, claims),
        )
        return region, t.strings("failover")


def _codes(t: Table, key: str, what: str, region: str, claims: dict[str, str]) -> frozenset[str]:
    """Country or continent codes, each claimed by at most one region (else placement is moot)."""
    codes: set[str] = set()
    for item_key, code in t.strings(key):
        if what == "country" and not _COUNTRY.fullmatch(code):
            raise t.error(item_key, f"expected an upper-case ISO 3166-1 alpha-2 code, got {code!r}")
        if what == "continent" and code not in CONTINENTS:
            raise t.error(
                item_key, f"expected one of {', '.join(sorted(CONTINENTS))}, got {code!r}"
            )
        owner = claims.setdefault(f"{what} {code}", region)
        if owner != region or code in codes:
            raise t.error(item_key, f"{what} {code!r} already claimed by region {owner!r}")
        codes.add(code)
    return frozenset(codes)


def _failover(
    t: Table, items: list[tuple[str, str]], region: Region, regions: Mapping[str, Region]
) -> tuple[str, ...]:
    """The given failover regions, then every remaining region nearest first."""
    given: list[str] = []
    for key, name in items:
        if name not in regions:
            raise t.error(key, _unknown_region(name, regions))
        if name == region.name:
            raise t.error(key, "a region cannot fail over to itself")
        if name in given:
            raise t.error(key, f"region {name!r} listed twice")
        given.append(name)
    rest = [r for r in regions.values() if r.name != region.name and r.name not in given]
    rest.sort(key=lambda r: region.distance_km(r.latitude, r.longitude))
    return (*given, *(r.name for r in rest))


def _nodes(tables: list[Table], regions: Mapping[str, Region]) -> tuple[Node, ...]:
    seen: set[str] = set()
    return tuple(_node(t, seen, regions) for t in tables)


def _node(t: Table, seen: set[str], regions: Mapping[str, Region]) -> Node:
    with t:
        node = Node(
            name=_unique_name(t, seen, "node"),
            region=_known_region(t, regions),
            capacity_rps=t.real("capacity_rps", 0, MAX_CAPACITY_RPS, lo_open=True),
            control_url=t.parsed("control_url", http_url),
            ipv4=t.optional("ipv4", lambda text: ip_address_of(text, IPv4Address)),
            ipv6=t.optional("ipv6", lambda text: ip_address_of(text, IPv6Address)),
            tokens=_node_tokens(t),
            role=t.parsed("role", _role, "edge"),
        )
    if node.ipv4 is None and node.ipv6 is None:
        raise t.error("", "a node needs an ipv4 or an ipv6 address (or both)")
    return node


def _node_tokens(t: Table) -> tuple[str, ...]:
    token = t.optional("token", bearer_token)
    previous = previous_tokens(t)
    if token is None and previous:
        raise t.error("previous_tokens", "expected a token to rotate to")
    return () if token is None else (token, *previous)


def _role(text: str) -> NodeRole:
    for role in NODE_ROLES:
        if text == role:
            return role
    raise ValueError(f"expected {' | '.join(NODE_ROLES)}, got {text!r}")


def _overrides(tables: list[Table], regions: Mapping[str, Region]) -> tuple[Override, ...]:
    seen: set[IPNetwork] = set()
    overrides = []
    for t in tables:
        with t:
            network = t.parsed("network", _network)
            if network in seen:
                raise t.error("network", f"duplicate override for {network}")
            seen.add(network)
            overrides.append(Override(network, _known_region(t, regions)))
    return tuple(overrides)


def _network(text: str) -> IPNetwork:
    if "/" not in text:
        raise ValueError(f"expected a CIDR network such as 192.0.2.0/24, got {text!r}")
    try:
        return ip_network(text)
    except ValueError:
        pass
    try:
        fixed = ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"expected a CIDR network such as 192.0.2.0/24, got {text!r}") from None
    raise ValueError(f"{text} has host bits set (did you mean {fixed}?)")
