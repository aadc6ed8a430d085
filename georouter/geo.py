"""Client address → location → region, with a cache per GeoIP database network.

Theory of operation. `Geo.place` runs once per DNS query. The region of an address comes
from, in order: the longest matching rule (a config override, or an address block with no
geography, which goes to the default region), else the GeoIP record: its country, its
continent, the region nearest to its coordinates, else the default region.

The answer also says how far it generalises: `Placement.prefix_len`, the ECS SCOPE
PREFIX-LENGTH (RFC 7871 §7.2.1), i.e. every address sharing that many leading bits is placed
alike. It is the prefix length of whatever decided (the rule's network, or the GeoIP
network the lookup returned, including the empty subtree of a not-found address), widened
no further than the first bit that separates the address from any other rule's network,
since an answer cannot be uniform across a prefix that a rule cuts in two. It is then
capped at the query's SOURCE PREFIX-LENGTH: §7.2.1 allows a longer scope, but the answer
was computed from the source bits alone, so we never claim to know more.

That uniformity is what makes the cache sound: a placement whose scope is /24 or shorter
(IPv6: /48) is stored under the address's /24 (/48) as raw bytes, otherwise under the whole
address; a hit costs one `inet_pton` and at most two dict lookups. A reload builds a new Geo,
which is the cache's only invalidation.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path
from socket import AF_INET, AF_INET6, inet_pton
from typing import Any

from geolite2 import geolite2

from georouter.config import IPNetwork, RouterConfig
from georouter.errors import ConfigError
from georouter.geodb import CorruptDatabase, GeoDatabase
from georouter.tallies import HotPathTallies

IPAddress = IPv4Address | IPv6Address

GEO_CACHE_ENTRIES = 65_536  # per-network placements kept; the cache is cleared when full
RECORD_CACHE_ENTRIES = 65_536  # decoded GeoIP records kept (the fields we use); cleared when full
_BUCKET_BYTES = {4: 3, 16: 6}  # packed length → bytes of its /24 or /48 cache bucket
_MAPPED = ip_network("::ffff:0:0/96")  # IPv4-mapped IPv6 is placed by its IPv4 address
# Address blocks with no geography (RFC 6890 registries): private, shared, loopback,
# link-local, multicast, reserved, unspecified. The documentation and benchmarking blocks
# are deliberately absent: test databases give them locations.
_NO_GEOGRAPHY = tuple(
    ip_network(block)
    for block in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
    )
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Placement:
    """Where the DNS path should send a client, and how far that answer generalises."""

    region: str
    prefix_len: (
        int  # every address sharing this prefix is placed alike (the ECS scope, RFC 7871 §7.2.1)
    )


@dataclass(frozen=True, slots=True)
class Location:
    """What the GeoIP database says about an address (None where it says nothing)."""

    country: str | None  # ISO 3166-1 alpha-2 (the registered country if no other)
    continent: str | None  # MaxMind continent code
    latitude: float | None
    longitude: float | None
    network: IPNetwork  # the database network (or empty subtree) holding the address


@dataclass(frozen=True, slots=True)
class _Rule:
    network: IPNetwork
    region: str


def open_geoip(path: Path | None) -> GeoDatabase:
    """Load and verify a City or Country database (None: the embedded GeoLite2-City).

    The database is a sealed private copy (georouter/geodb.py): replacing or rewriting the
    file afterwards cannot touch it. A missing, corrupt or unsuitable file: ConfigError.
    """
    file = Path(geolite2.filename) if path is None else path
    try:
        database = GeoDatabase.load(file)
    except OSError as exc:
        raise ConfigError(str(file), "geoip", f"cannot read: {exc.strerror or exc}") from None
    except CorruptDatabase as exc:
        raise ConfigError(str(file), "geoip", f"not a valid MaxMind DB file ({exc})") from None
    _check_kind(database)
    return database


def _check_kind(database: GeoDatabase) -> None:
    kind = database.metadata().database_type
    if "City" not in kind and "Country" not in kind:
        database.close()
        message = f"unsupported database type {kind!r} (expected a City or Country database)"
        raise ConfigError(database.source, "geoip", message)


def adopt_geoip(fd: int, source: str) -> GeoDatabase:
    """A database another process loaded and verified, by its sealed memfd (DNS workers)."""
    try:
        return GeoDatabase(fd, source)
    except (OSError, CorruptDatabase) as exc:
        raise ConfigError(source, "geoip", f"cannot map the loaded copy ({exc})") from None


class Geo:
    """Places client addresses in regions; one instance per loaded config and database."""

    def __init__(self, config: RouterConfig, reader: GeoDatabase, tallies: HotPathTallies) -> None:
        self._reader = reader
        self._tallies = tallies
        self._regions = config.regions
        self._default = config.policy.default_region
        self._by_country = {code: r.name for r in config.regions for code in r.countries}
        self._by_continent = {code: r.name for r in config.regions for code in r.continents}
        rules = {net: self._default for net in _NO_GEOGRAPHY}
        rules.update((o.network, o.region) for o in config.overrides)  # overrides win ties
        self._rules = sorted((_Rule(n, r) for n, r in rules.items()), key=_specificity)
        self._edges = [*rules, _MAPPED]
        self._cache: dict[bytes, Placement] = {}
        self._capped: dict[tuple[str, int], Placement] = {}
        self._records: dict[int, _Fields] = {}  # data offset -> the fields placement uses

    def place(self, address: str, source_prefix: int | None = None) -> Placement:
        """The region for a client address (text) and the ECS scope of that answer.

        `source_prefix` is the ECS SOURCE PREFIX-LENGTH when `address` came from ECS (already
        truncated); the scope never exceeds it. ValueError if `address` is not an IP address.
        """
        self._tallies.geoip_lookups += 1
        try:
            packed = inet_pton(AF_INET6 if ":" in address else AF_INET, address)
        except OSError:
            raise ValueError(f"not an IP address: {address!r}") from None
        cache = self._cache
        bucket = packed[:3] if len(packed) == 4 else packed[:6]
        placement = cache.get(bucket) or cache.get(packed)
        if placement is None:
            placement = self._miss(packed)
        else:
            self._tallies.geoip_cache_hits += 1
        if source_prefix is not None and source_prefix < placement.prefix_len:
            return self._capped_at(placement.region, source_prefix)
        return placement

    def reused(self) -> None:
        """Count a placement the caller kept from an earlier `place` and uses again (the
        responder keeps one per query shape): a location served from a cache."""
        tallies = self._tallies
        tallies.geoip_lookups += 1
        tallies.geoip_cache_hits += 1

    def locate(self, address: str) -> Location:
        """The database's view of one address (uncached; for operators and tests)."""
        ip = ip_address(address)
        return self._lookup(_unmapped(ip) or ip)

    def region_for(self, location: Location) -> str:
        """Country, then continent, then the nearest region, then the default region."""
        if location.country in self._by_country:
            return self._by_country[location.country]
        if location.continent in self._by_continent:
            return self._by_continent[location.continent]
        lat, lon = location.latitude, location.longitude
        if lat is None or lon is None:
            return self._default
        return min(self._regions, key=lambda r: r.distance_km(lat, lon)).name

    def _miss(self, packed: bytes) -> Placement:
        placement = self._compute(ip_address(packed))
        if len(self._cache) >= GEO_CACHE_ENTRIES:
            self._cache.clear()
        bucket = _BUCKET_BYTES[len(packed)]
        self._cache[packed[:bucket] if placement.prefix_len <= bucket * 8 else packed] = placement
        return placement

    def _compute(self, ip: IPAddress) -> Placement:
        mapped = _unmapped(ip)
        if mapped is not None:
            inner = self._compute(mapped)
            return Placement(inner.region, inner.prefix_len + _MAPPED.prefixlen)
        rule = next((r for r in self._rules if ip in r.network), None)
        if rule is not None:
            region, prefix_len = rule.region, rule.network.prefixlen
        else:
            location = self._lookup(ip)
            region, prefix_len = self.region_for(location), location.network.prefixlen
        return Placement(region, max(prefix_len, self._uncut_prefix_len(ip)))

    def _uncut_prefix_len(self, ip: IPAddress) -> int:
        # A prefix of `ip` that overlaps a rule network not holding `ip` contains addresses the
        # rule places differently, so the scope must be one bit longer than the shared bits.
        bits, edge = ip.max_prefixlen, 0
        for network in self._edges:
            if network.version == ip.version and ip not in network:
                common = bits - (int(ip) ^ int(network.network_address)).bit_length()
                edge = max(edge, common + 1)
        return edge

    def _lookup(self, ip: IPAddress) -> Location:
        offset, prefix_len = self._reader.find(ip)
        fields = _NO_FIELDS
        if offset is not None:
            fields = self._records.get(offset) or self._decode(offset)
        return Location(*fields, network=ip_network((ip, prefix_len), strict=False))

    def _decode(self, offset: int) -> _Fields:
        try:
            fields = _fields(self._reader.record(offset))
        except CorruptDatabase:  # verified at load, yet a record inside can still be bad
            self._tallies.geoip_corrupt_records += 1
            fields = _NO_FIELDS
        if len(self._records) >= RECORD_CACHE_ENTRIES:
            self._records.clear()
        self._records[offset] = fields
        return fields

    def _capped_at(self, region: str, prefix_len: int) -> Placement:
        placement = self._capped.get((region, prefix_len))
        if placement is None:
            placement = self._capped[(region, prefix_len)] = Placement(region, prefix_len)
        return placement


def _specificity(rule: _Rule) -> int:
    return -rule.network.prefixlen  # longest prefix first, so the first match is the best


def _unmapped(ip: IPAddress) -> IPv4Address | None:
    return ip.ipv4_mapped if isinstance(ip, IPv6Address) else None


# What placement reads from a record: country, continent, latitude, longitude.
_Fields = tuple[str | None, str | None, float | None, float | None]
_NO_FIELDS: _Fields = (None, None, None, None)


def _fields(record: Any) -> _Fields:
    data = record if isinstance(record, dict) else {}
    position = data.get("location")
    position = position if isinstance(position, dict) else {}
    lat, lon = _coordinate(position, "latitude", 90), _coordinate(position, "longitude", 180)
    has_position = lat is not None and lon is not None
    return (
        # MaxMind leaves `country` out for some networks (satellite, anycast) but still knows
        # where the block is registered, which beats no country at all.
        _code(data, "country", "iso_code") or _code(data, "registered_country", "iso_code"),
        _code(data, "continent", "code"),
        lat if has_position else None,
        lon if has_position else None,
    )


def _coordinate(position: dict[str, Any], key: str, limit: float) -> float | None:
    value = position.get(key)
    if isinstance(value, int | float) and -limit <= value <= limit:
        return float(value)
    return None


def _code(data: dict[str, Any], key: str, field: str) -> str | None:
    sub = data.get(key)
    value = sub.get(field) if isinstance(sub, dict) else None
    return value if isinstance(value, str) else None
