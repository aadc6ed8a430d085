"""Zone data: which names exist, their static RRsets, and how a question resolves.

Resolution follows RFC 1034 §4.3.2 for an authoritative server: find the zone (else
REFUSED), stop at a zone cut with a referral, answer the RRset, restart at a CNAME target
held here, or say why there is nothing: NODATA for a name that exists (an empty
non-terminal included, RFC 8020 §2) and NXDOMAIN for one that does not, both with the SOA
in the authority section (RFC 2308 §2.1, §2.2). Geo-routed service names own their A and
AAAA answers; a `Resolution` only marks where those addresses go.

All RDATA is encoded here once, uncompressed, so an encoded RRset is valid wherever it
lands in a message; only an owner equal to the question name is compressed (to 0xC00C).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from dnslib.dns import AAAA, CNAME, NS, RD, SOA, TXT, A, DNSBuffer, DNSLabel

from georouter.wire import encode_rr, name_to_wire
from georouter.zonedata import StaticRecord, Zone

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_HINFO = 1, 2, 5, 6, 13
TYPE_TXT, TYPE_AAAA, TYPE_DS, TYPE_IXFR, TYPE_AXFR, TYPE_ANY = 16, 28, 43, 251, 252, 255
CLASS_IN = 1
QUESTION_POINTER = b"\xc0\x0c"  # the question name always starts at offset 12

SOA_TTL_S = 3600
NS_TTL_S = 3600
ANY_HINFO_TTL_S = 3600  # RFC 8482 §4.2 leaves the synthesized record's TTL to the operator
MAX_CNAME_CHAIN = 8  # restarts per question; a longer chain is answered as far as it got
_RECORD_TYPES = {"A": TYPE_A, "AAAA": TYPE_AAAA, "CNAME": TYPE_CNAME, "TXT": TYPE_TXT}
_RECORD_TYPES["NS"] = TYPE_NS


class Kind(enum.Enum):
    ANSWER = "answer"
    NODATA = "nodata"
    NXDOMAIN = "nxdomain"
    REFERRAL = "referral"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class RRset:
    owner: bytes  # lower-case wire name
    rtype: int
    ttl: int
    rdatas: tuple[bytes, ...]  # uncompressed RDATA
    wire: bytes = b""  # every record, owner written out
    wire_at_question: bytes = b""  # every record, owner as a pointer to the question name

    @classmethod
    def of(cls, owner: bytes, rtype: int, ttl: int, rdatas: Sequence[bytes]) -> RRset:
        unique = tuple(dict.fromkeys(rdatas))  # RFC 2181 §5: an RRset holds no duplicates

        def encode(name: bytes) -> bytes:
            return b"".join(encode_rr(name, rtype, CLASS_IN, ttl, rdata) for rdata in unique)

        return cls(owner, rtype, ttl, unique, encode(owner), encode(QUESTION_POINTER))

    def encoded(self, qname: bytes) -> bytes:
        return self.wire_at_question if self.owner == qname else self.wire


@dataclass(frozen=True, slots=True)
class Resolution:
    kind: Kind
    answer: tuple[RRset, ...] = ()
    authority: tuple[RRset, ...] = ()
    additional: tuple[RRset, ...] = ()
    service: bytes | None = None  # the answer goes on with the geo-routed A/AAAA of this name


REFUSED = Resolution(Kind.REFUSED)


@dataclass(frozen=True, slots=True)
class _Zone:
    origin: bytes
    rrsets: dict[bytes, dict[int, RRset]]
    services: frozenset[bytes]
    interior: frozenset[bytes]  # every name at or above a name with data, up to the origin
    cuts: frozenset[bytes]  # delegation points: NS records below the apex
    nodata: Resolution
    nxdomain: Resolution


class Zones:
    """Every zone this server is authoritative for, ready to resolve questions."""

    def __init__(self, zones: Sequence[Zone]) -> None:
        self._zones = {built.origin: built for built in map(_build, zones)}

    def names(self) -> Iterator[bytes]:
        """Every name that owns data or is geo-routed."""
        for zone in self._zones.values():
            yield from zone.rrsets
            yield from zone.services - zone.rrsets.keys()

    def data_types(self) -> frozenset[int]:
        """Every RR type stored anywhere: questions for any other type resolve alike."""
        return frozenset(t for z in self._zones.values() for rr in z.rrsets.values() for t in rr)

    def resolve(self, name: bytes, qtype: int) -> Resolution:
        """Resolve a lower-case wire name; REFUSED when no zone here contains it."""
        zone = self._find(name)
        return REFUSED if zone is None else self._resolve_in(zone, name, qtype, ())

    def _find(self, name: bytes) -> _Zone | None:
        for suffix in _suffixes(name):
            zone = self._zones.get(suffix)
            if zone is not None:
                return zone
        return None

    def _resolve_in(
        self, zone: _Zone, name: bytes, qtype: int, chain: tuple[bytes, ...]
    ) -> Resolution:
        cut = _closest_cut(zone, name)
        # The parent side of a cut answers DS itself (RFC 4035 §3.1.4.1); all else is referred.
        if cut is not None and not (cut == name and qtype == TYPE_DS):
            return self._referral(zone, cut)
        rrsets = zone.rrsets.get(name)
        if rrsets is None and name not in zone.services:
            return zone.nodata if name in zone.interior else zone.nxdomain
        rrsets = rrsets or {}
        cname = rrsets.get(TYPE_CNAME)
        if qtype == TYPE_ANY:
            # RFC 8482 §4.1: the CNAME if there is one, else §4.2: one synthesized HINFO.
            return Resolution(Kind.ANSWER, (cname or _hinfo(name),))
        if cname is not None and qtype != TYPE_CNAME:
            return self._chase(cname, qtype, (*chain, name))
        found = rrsets.get(qtype)
        if found is not None:
            glue = self._addresses(found.rdatas) if qtype == TYPE_NS else ()
            return Resolution(Kind.ANSWER, (found,), additional=glue)
        if name in zone.services and qtype in (TYPE_A, TYPE_AAAA):
            return Resolution(Kind.ANSWER, service=name)
        return zone.nodata

    def _chase(self, cname: RRset, qtype: int, chain: tuple[bytes, ...]) -> Resolution:
        """RFC 1034 §4.3.2 step 3a: restart at the target when it is ours (RFC 6604 rcodes)."""
        target = cname.rdatas[0].lower()
        zone = self._find(target)
        if zone is None or target in chain or len(chain) >= MAX_CNAME_CHAIN:
            return Resolution(Kind.ANSWER, (cname,))
        rest = self._resolve_in(zone, target, qtype, chain)
        if rest.kind in (Kind.REFERRAL, Kind.REFUSED):
            return Resolution(Kind.ANSWER, (cname,))
        return dataclasses.replace(rest, answer=(cname, *rest.answer))

    def _referral(self, zone: _Zone, cut: bytes) -> Resolution:
        ns = zone.rrsets[cut][TYPE_NS]
        return Resolution(Kind.REFERRAL, authority=(ns,), additional=self._addresses(ns.rdatas))

    def _addresses(self, targets: tuple[bytes, ...]) -> tuple[RRset, ...]:
        """Address records of in-zone name servers (RFC 1035 §3.3.11 additional processing)."""
        found: list[RRset] = []
        for target in targets:
            zone = self._find(target)
            rrsets = zone.rrsets.get(target, {}) if zone is not None else {}
            found.extend(rrsets[t] for t in (TYPE_A, TYPE_AAAA) if t in rrsets)
        return tuple(found)


def _suffixes(name: bytes) -> Iterator[bytes]:
    """The name, then each ancestor up to the root."""
    pos = 0
    while True:
        yield name[pos:]
        if name[pos] == 0:
            return
        pos += name[pos] + 1


def _closest_cut(zone: _Zone, name: bytes) -> bytes | None:
    if not zone.cuts:
        return None
    for suffix in _suffixes(name):
        if suffix == zone.origin:
            return None
        if suffix in zone.cuts:
            return suffix
    return None


def _hinfo(name: bytes) -> RRset:
    # CPU "RFC8482", OS the null string (RFC 8482 §4.2).
    return RRset.of(name, TYPE_HINFO, ANY_HINFO_TTL_S, [b"\x07RFC8482\x00"])


class _FlatBuffer(DNSBuffer):  # type: ignore[misc]
    """Writes every name in full: encoded RDATA must not point into a message it never saw."""

    def encode_name(self, name: object) -> None:
        self.encode_name_nocompress(name)


def _rdata(rd: RD) -> bytes:
    buffer = _FlatBuffer()
    rd.pack(buffer)
    return bytes(buffer.data)


def _record_rdata(record: StaticRecord) -> bytes:
    if record.rtype == "A":
        return _rdata(A(record.value))
    if record.rtype == "AAAA":
        return _rdata(AAAA(record.value))
    if record.rtype == "TXT":
        return _rdata(TXT([record.value.encode()]))  # config keeps it to one string
    return _rdata((CNAME if record.rtype == "CNAME" else NS)(DNSLabel(record.value)))


def _build(zone: Zone) -> _Zone:
    """Encode one zone; the config loader has already ruled out CNAME conflicts (RFC 2181)."""
    origin = name_to_wire(zone.origin)
    timers = (zone.soa_serial, zone.soa_refresh, zone.soa_retry, zone.soa_expire)
    soa = _rdata(SOA(zone.ns[0], zone.soa_rname, (*timers, zone.negative_ttl)))
    pending: dict[bytes, dict[int, tuple[int, list[bytes]]]] = {
        origin: {
            TYPE_SOA: (SOA_TTL_S, [soa]),
            TYPE_NS: (NS_TTL_S, list(map(name_to_wire, zone.ns))),
        }
    }
    for record in zone.records:
        types = pending.setdefault(name_to_wire(record.name), {})
        rtype = _RECORD_TYPES[record.rtype]
        types[rtype] = (record.ttl, [*types.get(rtype, (0, []))[1], _record_rdata(record)])
    rrsets = {
        name: {t: RRset.of(name, t, ttl, rd) for t, (ttl, rd) in types.items()}
        for name, types in pending.items()
    }
    services = frozenset(map(name_to_wire, zone.services))
    # RFC 2308 §5: a negative answer lives for min(SOA TTL, SOA MINIMUM).
    negative_soa = RRset.of(origin, TYPE_SOA, min(SOA_TTL_S, zone.negative_ttl), [soa])
    return _Zone(
        origin=origin,
        rrsets=rrsets,
        services=services,
        interior=frozenset(s for name in (*rrsets, *services) for s in _suffixes(name)),
        cuts=frozenset(n for n, types in rrsets.items() if TYPE_NS in types and n != origin),
        nodata=Resolution(Kind.NODATA, authority=(negative_soa,)),
        nxdomain=Resolution(Kind.NXDOMAIN, authority=(negative_soa,)),
    )
