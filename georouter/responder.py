"""The DNS responder: one query message in, the response bytes out. No I/O, no clock.

Theory of operation: every answer that does not depend on the client is encoded at
construction, per (name, qtype), as a `Prepared` body (the sections after the question,
without OPT). Geo-routed names resolve to a `GeoQuestion`; the placer and picker choose the
nodes and the TTL (health-derived: it follows the decision's reason and the region's
state), and the encoded answer for that (TTL, node list) is cached in a bounded dict.

Everything in a response but its ID is decided by the query's bytes after the ID (and,
for a geo answer, by the placement and the picker's draw), so those bytes key a bounded
cache of shapes: a `_Response` (the response less its ID) for a static answer, a `_GeoShape`
for a geo-routed one, which keeps its ECS placement and its `_Response` per (scope, TTL,
node list). A repeated query then costs one dict lookup and a concatenation (static), or a placement
(by resolver address only), a pick and two lookups (geo); the parse, zone lookup and
encoding run once per shape. With the Selector and Geo (a `RoutingPicker` and a
`CachingPlacer`) a geo shape also keeps, per placement (per resolver address without ECS),
the Selector's `Route` and the response for each outcome of its draw: while the fleet
snapshot stands (`Route.generation`), a repeated geo query is one weighted draw and an
index, and a new snapshot makes the next query place and route afresh. Queries in 0x20
mixed case rarely repeat byte for byte: each is a miss, answered the same way at the cost
of a parse.

EDNS (RFC 6891): an OPT is answered with an OPT; the UDP payload size is clamped to
[512, MAX_UDP_PAYLOAD]; VERSION > 0 gets BADVERS. An answer that does not fit is replaced by
a header + question + OPT with TC set, so the client retries over TCP (RFC 7766 §8).

ECS (RFC 7871): the option is echoed with SCOPE PREFIX-LENGTH = the placement's prefix for
geo answers and 0 for everything else, negative answers included (§7.2.1, §7.4).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, runtime_checkable

from dnslib.dns import QTYPE

from georouter.config import Node, RouterConfig
from georouter.geo import Placement
from georouter.selector import Decision, Route
from georouter.tallies import HotPathTallies
from georouter.wire import (
    AA,
    ECHOED_FLAGS,
    HEADER,
    OPCODE_MASK,
    QR,
    TC,
    MalformedQuery,
    Query,
    encode_opt,
    encode_rr,
    name_to_wire,
    parse,
)
from georouter.zones import (
    CLASS_IN,
    QUESTION_POINTER,
    TYPE_A,
    TYPE_AAAA,
    TYPE_ANY,
    TYPE_AXFR,
    TYPE_CNAME,
    TYPE_DS,
    TYPE_IXFR,
    TYPE_NS,
    TYPE_SOA,
    Kind,
    Resolution,
    Zones,
)

log = logging.getLogger(__name__)

MAX_UDP_PAYLOAD = 1232  # our EDNS payload size: unfragmented on any path (DNS flag day 2020)
MIN_UDP_PAYLOAD = 512  # RFC 1035 §4.2.1 without EDNS; RFC 6891 §6.2.5 floor with it
MAX_TCP_MESSAGE = 65535  # the two-octet length prefix (RFC 1035 §4.2.2)
GEO_CACHE_ENTRIES = 4096  # encoded geo answers kept, oldest dropped first
SHAPE_CACHE_ENTRIES = 8192  # query shapes kept per transport; the cache is cleared when full
HOT_ENTRIES_PER_SHAPE = 64  # resolver addresses a geo shape keeps answers for; then cleared

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
_RCODE_LABELS = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP"}
_RCODE_LABELS |= {5: "REFUSED", 16: "BADVERS"}
_QTYPE_LABELS: dict[int, str] = dict(QTYPE.forward)  # bounded: unknown types count as "other"
_NO_QUESTION = -1
_UNSTORED_TYPE = 0  # a type no RRset has: stands for every other type a name lacks
_TRANSFERS = (TYPE_AXFR, TYPE_IXFR)  # zone transfer is not offered (RFC 5936 §2.2.1)
OPCODE_UPDATE = 5 << 11  # RFC 2136 §1.3, in the flags word
_META_CLASSES = (254, 255)  # NONE, ANY: never a zone's class (RFC 2136 §2.3)
Transport = Literal["udp", "tcp"]


class Placer(Protocol):
    def place(self, address: str, source_prefix: int | None = None) -> Placement: ...


class Picker(Protocol):
    def pick(self, region: str, family: Literal[4, 6], service: str) -> Decision: ...


@runtime_checkable
class RoutingPicker(Picker, Protocol):
    """A picker that can say ahead what a region's draw chooses between (the Selector):
    then a geo shape keeps, per placement, every answer the draw can give."""

    generation: int  # a Route from an older generation no longer holds

    def route(self, region: str, family: Literal[4, 6], service: str) -> Route | None: ...

    def draw(self, route: Route) -> int: ...


@runtime_checkable
class CachingPlacer(Placer, Protocol):
    """A placer whose answers are a function of its arguments (Geo): a placement may be
    kept and reused, and `reused` counts a reuse as the placer counts a cache hit."""

    def reused(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Prepared:
    """An encoded answer less header, question and OPT."""

    flags: int  # QR, AA and the low four bits of the RCODE
    rcode: int  # the full RCODE; bits above the fourth go in the OPT (RFC 6891 §6.1.3)
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0
    body: bytes = b""

    @classmethod
    def error(cls, rcode: int) -> Prepared:
        return cls(QR | (rcode & 0xF), rcode)

    @classmethod
    def of(cls, resolution: Resolution, qname: bytes) -> Prepared:
        rcode = {Kind.NXDOMAIN: NXDOMAIN, Kind.REFUSED: REFUSED}.get(resolution.kind, NOERROR)
        # A referral and a refusal carry no authoritative data (RFC 1034 §4.3.2 step 3b).
        aa = 0 if resolution.kind in (Kind.REFERRAL, Kind.REFUSED) else AA
        sections = (resolution.answer, resolution.authority, resolution.additional)
        an, ns, ar = (sum(len(rrset.rdatas) for rrset in section) for section in sections)
        body = b"".join(rrset.encoded(qname) for section in sections for rrset in section)
        return cls(QR | aa | rcode, rcode, an, ns, ar, body)


@dataclass(frozen=True, slots=True, eq=False)  # identity hash: a cheap geo-cache key
class GeoQuestion:
    """A geo-routed question: the static start of the answer, then the picker's nodes."""

    family: Literal[4, 6]
    service: str  # the geo-routed name, absolute: the picker's key for its policy
    label: str  # the service as a metric label (no trailing dot)
    owner: bytes  # owner of the address records: a pointer when it is the question name
    prefix: Prepared  # the CNAME chain leading to the service, if any
    nodata: Prepared  # when the decision holds no address of the family
    first_cname: Prepared | None  # RFC 7871 §7.2.1: all an ECS-tailored chain should carry


@dataclass(frozen=True, slots=True)
class _GeoAnswer:
    prepared: Prepared
    tally_keys: tuple[tuple[str, str], ...]  # (region, node) per address given


@dataclass(frozen=True, slots=True)
class _Response:
    """A response less its two ID octets, and what answering with it counts."""

    tail: bytes
    tally: tuple[str, str, str]  # transport, qtype, rcode
    scope: int | None  # the ECS SCOPE PREFIX-LENGTH echoed; None: no ECS option
    answers: tuple[tuple[str, str], ...] = ()  # (region, node) per address given


@dataclass(frozen=True, slots=True, eq=False)
class _GeoShape:
    """A geo-routed query's shape: what placement and pick still decide per query."""

    query: Query  # its ID is the first asker's, never sent
    transport: Transport
    question: GeoQuestion
    address: str | None  # the ECS address to place; None: the resolver's own address
    source_prefix: int | None
    scope_cap: int  # the address width with ECS (scope is at most that), else 0
    responses: dict[tuple[int, int, tuple[str, ...]], _Response]  # by (scope, TTL, node names)
    # By resolver address ("" with ECS: the shape's own address decides): the placement,
    # the picker's route and the response per draw outcome, while the route holds.
    hot: dict[str, _Hot] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, eq=False)
class _Hot:
    """A geo shape's answering for one placement under one picker generation: the draw
    is the only choice left, and each of its outcomes has its response ready."""

    route: Route
    responses: tuple[_Response, ...]  # by draw outcome
    decided: tuple[tuple[Placement, Decision], ...]  # by draw outcome, for the query log
    decision_tally: tuple[str, str]  # service label, reason


@dataclass(frozen=True, slots=True)
class _NameEntry:
    by_qtype: dict[int, Prepared | GeoQuestion]
    other: Prepared  # every qtype not in by_qtype


class QueryRecorder(Protocol):
    """The query log (georouter/query_log.py), as the responder sees it."""

    def record(
        self,
        data: bytes,
        client_ip: str,
        transport: str,
        rcode: str,
        decided: tuple[Placement, Decision] | None,
    ) -> None: ...


class Responder:
    """Answers DNS queries for the configured zones; safe to share, cheap to replace."""

    def __init__(
        self,
        config: RouterConfig,
        placer: Placer,
        picker: Picker,
        tallies: HotPathTallies,
        query_log: QueryRecorder | None = None,  # None: off, one test per query
    ) -> None:
        self._query_log = query_log
        self._placer = placer
        self._picker = picker
        # Both a routing picker and a caching placer: geo shapes keep their answers ready.
        self._router = picker if isinstance(picker, RoutingPicker) else None
        self._caching = placer if isinstance(placer, CachingPlacer) else None
        self._tallies = tallies
        self._answer_count = config.policy.answers_per_response
        self._zones = Zones(config.zones)
        self._refused = Prepared.error(REFUSED)
        self._servfail = Prepared.error(SERVFAIL)
        self._notimp = Prepared.error(NOTIMP)
        self._badvers = Prepared.error(BADVERS)
        self._formerr = Prepared.error(FORMERR)
        self._services = {name_to_wire(s.name): s.name for s in config.services}
        # Keyed by TTL too: the TTL follows health, and a cached answer must follow it.
        self._geo_cache: dict[tuple[GeoQuestion, int, tuple[str, ...]], _GeoAnswer] = {}
        self._shapes: dict[Transport, dict[bytes, _Response | _GeoShape]] = {"udp": {}, "tcp": {}}
        types = self._zones.data_types() | {TYPE_A, TYPE_AAAA, TYPE_CNAME, TYPE_ANY, TYPE_DS}
        types |= {TYPE_NS, TYPE_SOA, *_TRANSFERS}
        self._names = {
            name: _NameEntry({t: self._prepare(name, t) for t in types}, self._prepare_other(name))
            for name in self._zones.names()
        }

    def respond(self, data: bytes, client_ip: str, transport: Transport) -> bytes | None:
        """One query datagram/message in, the response out (None = drop silently)."""
        shape = self._shapes[transport].get(data[2:])
        decided: tuple[Placement, Decision] | None = None
        try:
            if shape is None:
                shape = self._new_shape(data, transport)
                if shape is None:
                    return None
            if isinstance(shape, _Response):
                response = shape
            else:
                response, decided = self._answer_geo(shape, client_ip)
        except Exception:  # the one guard: a bug costs this query a SERVFAIL, not the server
            log.exception("answering %r failed", data)
            try:
                query = parse(data)
            except MalformedQuery:
                return None  # the bug struck while rejecting a malformed query: drop it
            response = self._response(query, self._servfail, 0, transport)
        tallies = self._tallies
        queries = tallies.queries
        queries[response.tally] = queries.get(response.tally, 0) + 1
        if response.scope is not None:
            tallies.ecs_scopes.observe(response.scope)
        answers = tallies.answers
        for key in response.answers:
            answers[key] = answers.get(key, 0) + 1
        if self._query_log is not None:
            self._query_log.record(data, client_ip, transport, response.tally[2], decided)
        return data[:2] + response.tail

    def _new_shape(self, data: bytes, transport: Transport) -> _Response | _GeoShape | None:
        """Parse and shape a query not seen before; remember the shape of a listed name's."""
        try:
            query = parse(data)
        except MalformedQuery as exc:
            return self._rejection(exc, transport)
        entry = self._names.get(query.name)
        shape = self._shape_of(query, entry, transport)
        # Names owning no data stay out: a flood of random names must not evict the rest.
        if entry is not None:
            shapes = self._shapes[transport]
            if len(shapes) >= SHAPE_CACHE_ENTRIES:
                shapes.clear()
            shapes[data[2:]] = shape
        return shape

    def _shape_of(
        self, query: Query, entry: _NameEntry | None, transport: Transport
    ) -> _Response | _GeoShape:
        if query.flags & OPCODE_MASK:
            return self._not_implemented(query, transport)
        if query.edns is not None and query.edns.version:
            return self._response(query, self._badvers, 0, transport)  # RFC 6891 §6.1.3
        if query.qclass != CLASS_IN:
            return self._response(query, self._refused, 0, transport)
        if entry is None:
            return self._response(query, self._unlisted(query), 0, transport)
        prepared = entry.by_qtype.get(query.qtype, entry.other)
        if isinstance(prepared, GeoQuestion):
            return self._geo_shape(query, prepared, transport)
        return self._response(query, prepared, 0, transport)

    def _unlisted(self, query: Query) -> Prepared:
        """A name owning no data: NXDOMAIN, an empty non-terminal's NODATA, a referral."""
        if query.qtype in _TRANSFERS:
            return self._refused
        return Prepared.of(self._zones.resolve(query.name, query.qtype), query.name)

    def _geo_shape(
        self, query: Query, question: GeoQuestion, transport: Transport
    ) -> _Response | _GeoShape:
        subnet = query.edns.subnet if query.edns is not None else None
        if subnet is None or subnet.source_prefix == 0:
            # No ECS, or ECS /0: the client opted out, so place by the resolver's own
            # address and answer for everyone with scope 0 (RFC 7871 §7.1.2).
            return _GeoShape(query, transport, question, None, None, 0, {})
        if question.first_cname is not None:
            return self._response(query, question.first_cname, 0, transport)
        cap = 32 if subnet.family == 1 else 128
        return _GeoShape(
            query, transport, question, subnet.address_text, subnet.source_prefix, cap, {}
        )

    def _answer_geo(
        self, shape: _GeoShape, client_ip: str
    ) -> tuple[_Response, tuple[Placement, Decision]]:
        router = self._router
        if router is not None and self._caching is not None:
            hot = shape.hot.get("" if shape.address else client_ip)
            if hot is not None and hot.route.generation == router.generation:
                self._caching.reused()
                return self._drawn(router, hot)
        placement = self._placer.place(shape.address or client_ip, shape.source_prefix)
        question = shape.question
        if router is not None and self._caching is not None:
            route = router.route(placement.region, question.family, question.service)
            if route is not None:
                hot = self._hot(shape, placement, route)
                if len(shape.hot) >= HOT_ENTRIES_PER_SHAPE:
                    shape.hot.clear()
                shape.hot["" if shape.address else client_ip] = hot
                return self._drawn(router, hot)
        decision = self._picker.pick(placement.region, question.family, question.service)
        decisions = self._tallies.decisions
        key = (question.label, decision.reason)
        decisions[key] = decisions.get(key, 0) + 1
        decided = (placement, decision)
        return self._geo_response(shape, placement, decision), decided

    def _drawn(
        self, router: RoutingPicker, hot: _Hot
    ) -> tuple[_Response, tuple[Placement, Decision]]:
        """The draw of a kept route: its outcome's prepared response, counted."""
        index = router.draw(hot.route)
        decisions = self._tallies.decisions
        decisions[hot.decision_tally] = decisions.get(hot.decision_tally, 0) + 1
        return hot.responses[index], hot.decided[index]

    def _hot(self, shape: _GeoShape, placement: Placement, route: Route) -> _Hot:
        decisions = route.decisions
        return _Hot(
            route,
            tuple(self._geo_response(shape, placement, d) for d in decisions),
            tuple((placement, d) for d in decisions),
            (shape.question.label, decisions[0].reason),
        )

    def _geo_response(
        self, shape: _GeoShape, placement: Placement, decision: Decision
    ) -> _Response:
        if decision.reason == "fail_closed":
            return self._response(shape.query, self._servfail, 0, shape.transport)
        question = shape.question
        names = tuple([n.name for n in decision.nodes])
        key = (min(placement.prefix_len, shape.scope_cap), decision.ttl, names)
        response = shape.responses.get(key)
        if response is None:
            geo = self._geo_answer(question, decision.ttl, decision.nodes)
            # A negative answer is cached as if for every client (RFC 7871 §7.4): scope 0.
            scope = key[0] if geo.tally_keys else 0
            response = self._response(
                shape.query, geo.prepared, scope, shape.transport, geo.tally_keys
            )
            shape.responses[key] = response
        return response

    def _geo_answer(self, question: GeoQuestion, ttl: int, nodes: tuple[Node, ...]) -> _GeoAnswer:
        key = (question, ttl, tuple([node.name for node in nodes]))
        found = self._geo_cache.get(key)
        if found is None:
            found = self._encode_geo(question, ttl, nodes)
            if len(self._geo_cache) >= GEO_CACHE_ENTRIES:
                del self._geo_cache[next(iter(self._geo_cache))]
            self._geo_cache[key] = found
        return found

    def _encode_geo(self, question: GeoQuestion, ttl: int, nodes: tuple[Node, ...]) -> _GeoAnswer:
        chosen: dict[bytes, Node] = {}  # by address: an RRset has no duplicates (RFC 2181 §5)
        for node in nodes:
            address = node.ipv4 if question.family == 4 else node.ipv6
            if address is not None and len(chosen) < self._answer_count:
                chosen.setdefault(address.packed, node)
        if not chosen:
            return _GeoAnswer(question.nodata, ())
        rtype = TYPE_A if question.family == 4 else TYPE_AAAA
        records = b"".join(
            encode_rr(question.owner, rtype, CLASS_IN, ttl, packed) for packed in chosen
        )
        prefix = question.prefix
        prepared = Prepared(
            prefix.flags, NOERROR, prefix.ancount + len(chosen), body=prefix.body + records
        )
        return _GeoAnswer(prepared, tuple((node.region, node.name) for node in chosen.values()))

    def _response(
        self,
        query: Query,
        prepared: Prepared,
        scope: int,
        transport: Transport,
        answers: tuple[tuple[str, str], ...] = (),
    ) -> _Response:
        edns = query.edns
        opt = b""
        limit = MIN_UDP_PAYLOAD
        echoed = None
        if edns is not None:
            option = b""
            if edns.subnet is not None:
                option = edns.subnet.echo(scope)
                echoed = scope
            opt = encode_opt(MAX_UDP_PAYLOAD, prepared.rcode, edns.dnssec_ok, option)
            limit = min(max(edns.payload, MIN_UDP_PAYLOAD), MAX_UDP_PAYLOAD)
        if transport == "tcp":
            limit = MAX_TCP_MESSAGE
        flags = prepared.flags | (query.flags & ECHOED_FLAGS)
        body = prepared.body
        an, ns, ar = prepared.ancount, prepared.nscount, prepared.arcount
        if HEADER.size + len(query.question) + len(body) + len(opt) > limit:
            flags |= TC
            body = b""
            an = ns = ar = 0
            answers = ()  # no address was given: the client retries over TCP
        qtype = _QTYPE_LABELS.get(query.qtype, "other") if query.question else "none"
        qdcount = 1 if query.question else 0
        header = HEADER.pack(0, flags, qdcount, an, ns, ar + (1 if opt else 0))
        tail = header[2:] + query.question + body + opt
        return _Response(tail, (transport, qtype, _RCODE_LABELS[prepared.rcode]), echoed, answers)

    def _rejection(self, exc: MalformedQuery, transport: Transport) -> _Response | None:
        if exc.flags is None:
            return None
        question = exc.question
        qtype = int.from_bytes(question[-4:-2]) if question else _NO_QUESTION
        qclass = int.from_bytes(question[-2:]) if question else CLASS_IN
        query = Query(exc.ident, exc.flags, question, b"", qtype, qclass, exc.edns)
        if exc.flags & OPCODE_MASK:  # NOTIMP whatever follows (RFC 1035 §4.1.1)
            return self._not_implemented(query, transport)
        return self._response(query, self._formerr, 0, transport)

    def _not_implemented(self, query: Query, transport: Transport) -> _Response:
        """NOTIMP with the ID and OPCODE copied (RFC 1035 §4.1.1), and nothing an opcode we
        do not know could read differently: RD and CD are Z bits to UPDATE (RFC 2136 §2.2),
        and its question is the zone section, which must ask for SOA in a zone's class
        (§2.3); one that does not is left out, as a parser would refuse the echo."""
        question = query.question
        if query.flags & OPCODE_MASK == OPCODE_UPDATE and (
            query.qtype != TYPE_SOA or query.qclass in _META_CLASSES
        ):
            question = b""
        echo = replace(query, flags=query.flags & OPCODE_MASK, question=question)
        return self._response(echo, self._notimp, 0, transport)

    def _prepare_other(self, name: bytes) -> Prepared:
        prepared = self._prepare(name, _UNSTORED_TYPE)
        assert isinstance(prepared, Prepared)  # only A and AAAA questions are geo-routed
        return prepared

    def _prepare(self, name: bytes, qtype: int) -> Prepared | GeoQuestion:
        if qtype in _TRANSFERS:
            return self._refused
        resolution = self._zones.resolve(name, qtype)
        if resolution.service is None:
            return Prepared.of(resolution, name)
        nodata = self._zones.resolve(name, _UNSTORED_TYPE)
        chain = resolution.answer
        service = self._services[resolution.service]
        return GeoQuestion(
            family=4 if qtype == TYPE_A else 6,
            service=service,
            label=service.rstrip("."),
            owner=QUESTION_POINTER if resolution.service == name else resolution.service,
            prefix=Prepared.of(resolution, name),
            nodata=Prepared.of(nodata, name),
            first_cname=Prepared.of(Resolution(Kind.ANSWER, chain[:1]), name) if chain else None,
        )
