"""The zones section of the router config: zone data types, DNS names, static records.

Names a zone owns (services, record owners) are relative to the zone origin unless they end
with a dot, and "@" is the origin itself, as in a master file (RFC 1035 §5.1). Names a zone
points at (name servers, the SOA mailbox, CNAME and NS targets) usually lie outside it, so
they are always read as fully qualified, trailing dot optional. Stored names are absolute,
lower-case, with the trailing dot.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from typing import Literal, TypeVar, cast

from cdn.config import absolute_name
from cdn.tomltable import Table

RecordType = Literal["A", "AAAA", "CNAME", "TXT", "NS"]
AllDownPolicy = Literal["fail-open", "servfail"]
AddressT = TypeVar("AddressT", IPv4Address, IPv6Address)

RECORD_TYPES: tuple[RecordType, ...] = ("A", "AAAA", "CNAME", "TXT", "NS")
RECORD_TTL_S = 300
SOA_SERIAL = 1
SOA_REFRESH_S = 3600
SOA_RETRY_S = 600
SOA_EXPIRE_S = 604800
NEGATIVE_TTL_S = 60
MAX_TTL_S = 2**31 - 1  # RFC 2181 §8: TTLs and SOA timers are 31-bit
MAX_SERIAL = 2**32 - 1  # RFC 1982 serial numbers are 32-bit
MAX_TXT_OCTETS = 255  # one <character-string> (RFC 1035 §3.3.14)
ALL_DOWN_POLICIES: tuple[AllDownPolicy, ...] = ("fail-open", "servfail")


@dataclass(frozen=True, slots=True)
class StaticRecord:
    name: str  # absolute
    rtype: RecordType
    value: str  # CNAME/NS targets absolute
    ttl: int


@dataclass(frozen=True, slots=True)
class ServicePolicy:
    """One geo-routed name's own policy; None and () fall back to `[policy]` and every node."""

    name: str  # absolute
    nodes: frozenset[str] = frozenset()  # the pool, by node name; empty: every node
    ttl: int | None = None  # None: policy.answer_ttl
    degraded_ttl: int | None = None  # None: policy.degraded_ttl
    all_down: AllDownPolicy | None = None  # None: policy.all_down
    max_spill_regions: int | None = None  # failover regions it may use; None: all of them

    @property
    def label(self) -> str:
        """The metric label: the name without its trailing dot (bounded: from config)."""
        return self.name.rstrip(".")


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
    policies: tuple[ServicePolicy, ...] = ()  # one per service, in the same order


def owner_name(text: str, origin: str) -> str:
    """A name inside the zone `origin`: "@", relative to the origin, or absolute with a dot."""
    if text == "@":
        return origin
    name = absolute_name(text if text.endswith(".") else f"{text}.{origin}")
    if name != origin and not name.endswith("." + origin):
        raise ValueError(f"{name} is not inside the zone {origin}")
    return name


def ip_address_of(text: str, kind: type[AddressT]) -> AddressT:
    """`kind(text)` with a ValueError that says which address family was expected."""
    family = "IPv4" if kind is IPv4Address else "IPv6"
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"expected an {family} address, got {text!r}") from None


@dataclass(frozen=True, slots=True)
class Inventory:
    """What a service pool may name: the configured regions and nodes (node → region)."""

    regions: Collection[str]
    nodes: Mapping[str, str]  # the edges (answerable nodes)
    shields: Collection[str] = ()  # never answered, so never in a pool


def read_zones(top: Table, tables: list[Table], fleet: Inventory) -> tuple[Zone, ...]:
    """The `[[zones]]` tables of the config `top`: at least one, each origin once."""
    if not tables:
        raise top.error("zones", "expected at least one [[zones]] table")
    seen: set[str] = set()
    return tuple(_zone(t, seen, fleet) for t in tables)


def _zone(t: Table, seen: set[str], fleet: Inventory) -> Zone:
    with t:
        origin = t.parsed("origin", absolute_name)
        if origin in seen:
            raise t.error("origin", f"duplicate zone {origin}")
        seen.add(origin)
        ns = tuple(t.item(key, text, absolute_name) for key, text in t.strings("ns"))
        if not ns:
            raise t.error("ns", "expected at least one name server name")
        policies = _services(t, origin, fleet)
        services = tuple(p.name for p in policies)
        records = _records(t.tables("records"), origin, services)
        return Zone(
            origin=origin,
            ns=ns,
            soa_rname=t.parsed("soa_rname", absolute_name, f"hostmaster.{origin}"),
            soa_serial=t.integer("soa_serial", 0, MAX_SERIAL, SOA_SERIAL),
            soa_refresh=t.integer("soa_refresh", 0, MAX_TTL_S, SOA_REFRESH_S),
            soa_retry=t.integer("soa_retry", 0, MAX_TTL_S, SOA_RETRY_S),
            soa_expire=t.integer("soa_expire", 0, MAX_TTL_S, SOA_EXPIRE_S),
            negative_ttl=t.integer("negative_ttl", 0, MAX_TTL_S, NEGATIVE_TTL_S),
            services=services,
            records=records,
            policies=policies,
        )


def _services(t: Table, origin: str, fleet: Inventory) -> tuple[ServicePolicy, ...]:
    """`services = ["cdn", …]` (names only) or `[[zones.services]]` tables, not a mix."""
    raw: list[object] = t.get("services", list, [])
    kinds = [isinstance(item, dict) for item in raw]
    if any(kinds) and not all(kinds):
        raise t.error(f"services[{kinds.index(not kinds[0])}]", _MIXED)
    named: list[tuple[str, str, _Pool | None]] = []
    if any(kinds):
        for i, table in enumerate(t.tables("services")):
            with table:
                named.append((f"services[{i}].name", table.get("name", str), _pool(table, fleet)))
    else:
        named = [(key, text, None) for key, text in t.strings("services")]
    policies: list[ServicePolicy] = []
    for key, text, pool in named:
        name = t.item(key, text, lambda s: owner_name(s, origin))
        if any(p.name == name for p in policies):
            raise t.error(key, f"service {name} listed twice")
        policies.append(ServicePolicy(name) if pool is None else pool.with_name(name))
    return tuple(policies)


_MIXED = (
    'expected every entry a name (services = ["cdn"]) or every one a [[zones.services]] '
    "table, not a mix"
)


@dataclass(frozen=True, slots=True)
class _Pool:
    """A [[zones.services]] table less its name (checked with the plain names)."""

    nodes: frozenset[str]
    ttl: int | None
    degraded_ttl: int | None
    all_down: AllDownPolicy | None
    max_spill_regions: int | None

    def with_name(self, name: str) -> ServicePolicy:
        return ServicePolicy(
            name=name,
            nodes=self.nodes,
            ttl=self.ttl,
            degraded_ttl=self.degraded_ttl,
            all_down=self.all_down,
            max_spill_regions=self.max_spill_regions,
        )


def _pool(t: Table, fleet: Inventory) -> _Pool:
    def maybe_int(key: str, hi: int) -> int | None:
        return t.integer(key, 0, hi) if t.has(key) else None

    if t.has("nodes") and t.has("regions"):
        raise t.error("regions", "give nodes or regions, not both")
    nodes: set[str] = set()
    for key, name in t.strings("nodes"):
        if name in fleet.shields:
            raise t.error(key, f"{name!r} is a shield (role), never named in answers")
        if name not in fleet.nodes:
            raise t.error(key, f"unknown node {name!r}")
        nodes.add(name)
    for key, name in t.strings("regions"):
        if name not in fleet.regions:
            known = ", ".join(sorted(fleet.regions))
            raise t.error(key, f"unknown region {name!r} (known: {known})")
        nodes.update(n for n, region in fleet.nodes.items() if region == name)
    for key in ("nodes", "regions"):
        if t.has(key) and not nodes:
            raise t.error(key, "expected at least one")
    return _Pool(
        nodes=frozenset(nodes),
        ttl=maybe_int("ttl", MAX_TTL_S),
        degraded_ttl=maybe_int("degraded_ttl", MAX_TTL_S),
        all_down=t.optional("all_down", all_down_policy),
        max_spill_regions=maybe_int("max_spill_regions", max(len(fleet.regions) - 1, 0)),
    )


def all_down_policy(text: str) -> AllDownPolicy:
    if text not in ALL_DOWN_POLICIES:
        raise ValueError(f"expected 'fail-open' or 'servfail', got {text!r}")
    return text


def _records(
    tables: list[Table], origin: str, services: tuple[str, ...]
) -> tuple[StaticRecord, ...]:
    records: list[StaticRecord] = []
    tables_of: list[Table] = []
    types_at: dict[str, set[str]] = {}
    ttl_of: dict[tuple[str, str], int] = {}  # RRset → its TTL
    for t in tables:
        record = _record(t, origin)
        here = types_at.setdefault(record.name, set())
        conflict = _conflict(record, origin, services, here)
        rrset_ttl = ttl_of.setdefault((record.name, record.rtype), record.ttl)
        if conflict is None and rrset_ttl != record.ttl:
            conflict = (
                f"TTL differs within the {record.rtype} RRset at {record.name} (RFC 2181 §5.2)"
            )
        if conflict is None and record in records:
            conflict = "duplicate record"
        if conflict is not None:
            raise t.error("", conflict)
        here.add(record.rtype)
        records.append(record)
        tables_of.append(t)
    _check_zone_cuts(list(zip(tables_of, records, strict=True)), origin, services)
    return tuple(records)


def _check_zone_cuts(
    parsed: list[tuple[Table, StaticRecord]], origin: str, services: tuple[str, ...]
) -> None:
    """An NS record below the apex is a zone cut (RFC 1034 §4.2.1): the names at and below
    it belong to the child zone, and the router answers them with a referral. So no
    geo-routed service may lie there (it would never be geo-routed), and the only other
    data allowed is glue: addresses of the cut's own name servers."""
    cuts: dict[str, set[str]] = {}
    for _, record in parsed:
        if record.rtype == "NS" and record.name != origin:
            cuts.setdefault(record.name, set()).add(record.value)
    for t, record in parsed:
        # The cut nearest the apex: data below a nested NS is as misplaced as any other.
        cut = min((c for c in cuts if _at_or_below(record.name, c)), key=len, default=None)
        if cut is None:
            continue
        if record.rtype == "NS" and record.name == cut:
            service = next((s for s in services if _at_or_below(s, cut)), None)
            if service is not None:
                raise t.error("", f"NS at {cut} delegates the geo-routed service {service}")
        elif record.rtype not in ("A", "AAAA") or record.name not in cuts[cut]:
            raise t.error(
                "",
                f"{record.rtype} at {record.name} is below the zone cut at {cut}: only glue "
                "(addresses of its name servers) may be there (RFC 1034 §4.2.1)",
            )


def _at_or_below(name: str, ancestor: str) -> bool:
    return name == ancestor or name.endswith("." + ancestor)


def _record(t: Table, origin: str) -> StaticRecord:
    with t:
        name = t.parsed("name", lambda s: owner_name(s, origin))
        rtype = t.parsed("type", _record_type)
        return StaticRecord(
            name=name,
            rtype=rtype,
            value=t.parsed("value", _RECORD_VALUES[rtype]),
            ttl=t.integer("ttl", 0, MAX_TTL_S, RECORD_TTL_S),
        )


def _record_type(text: str) -> RecordType:
    if text.upper() not in RECORD_TYPES:
        raise ValueError(f"expected one of {', '.join(RECORD_TYPES)}, got {text!r}")
    return cast(RecordType, text.upper())


def _txt(text: str) -> str:
    if len(text.encode()) > MAX_TXT_OCTETS:
        raise ValueError(f"TXT value longer than {MAX_TXT_OCTETS} octets (RFC 1035 §3.3.14)")
    return text


_RECORD_VALUES: dict[RecordType, Callable[[str], str]] = {
    "A": lambda text: str(ip_address_of(text, IPv4Address)),
    "AAAA": lambda text: str(ip_address_of(text, IPv6Address)),
    "CNAME": absolute_name,
    "NS": absolute_name,
    "TXT": _txt,
}


def _conflict(
    record: StaticRecord, origin: str, services: tuple[str, ...], types_here: set[str]
) -> str | None:
    """Why `record` cannot coexist with the zone's other data at its name, if it cannot."""
    where = record.name
    if record.rtype == "CNAME" and where in services:
        return f"CNAME at the geo-routed service {where} (RFC 1034 §3.6.2: no other data)"
    if record.rtype == "CNAME" and where == origin:
        return f"CNAME at the zone apex {where}, which has SOA and NS (RFC 1034 §3.6.2)"
    if types_here and (record.rtype == "CNAME" or "CNAME" in types_here):
        return f"CNAME alongside other data at {where} (RFC 1034 §3.6.2)"
    if record.rtype in ("A", "AAAA") and where in services:
        return f"static {record.rtype} at the geo-routed service {where}"
    if record.rtype == "NS" and where == origin:
        return "NS at the zone apex: the apex NS set comes from the zone's ns list"
    return None
