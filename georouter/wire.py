"""DNS wire format: the query parser and the few encoders the responder patches per query.

Theory of operation: a query is one question, no answer or authority records and at most
one additional record, the OPT (RFC 1035 §4.1.2, RFC 6891 §6.1.1). `parse` checks that
shape in the header before reading anything else: any other shape is malformed at once,
whatever its size, so no packet can make the parser walk hundreds of records. The common
case (an uncompressed question, nothing or an OPT after it) is read straight from the bytes;
the rest (an additional record whose owner is compressed, a record other than OPT,
trailing bytes, damage) goes to the full parse. Its name decoder follows a compression
pointer only backwards, past the header, at most MAX_POINTER_JUMPS times, and stops at 255
octets, so its work is bounded by those limits and never by the message (RFC 1035 §2.3.4,
§4.1.4; Knot's `knot_dname_wire_check` has the same rules). Both paths share the EDNS and
ECS rules, so they agree wherever both accept a query (a property test holds them to it).

Names stay in wire format: the question's bytes are echoed exactly (0x20 case randomisation,
draft-vixie-dnsext-dns0x20), and lookups use `bytes.lower()` of the wire name, which folds
only A-Z (RFC 4343 §3) and never touches length octets (all below 64).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from dnslib.dns import DNSLabel

from georouter.errors import GeoRouterError

HEADER = struct.Struct(">HHHHHH")
_TYPE_CLASS = struct.Struct(">HH")
_RR_FIXED = struct.Struct(">HHIH")  # TYPE, CLASS, TTL, RDLENGTH
_OPT_FIXED = struct.Struct(">HHBBHH")  # TYPE, CLASS=payload, EXTENDED-RCODE, VERSION, flags, RDLEN
_OPTION_HEAD = struct.Struct(">HH")
_ECS_HEAD = struct.Struct(">HBB")  # FAMILY, SOURCE PREFIX-LENGTH, SCOPE PREFIX-LENGTH
_ECS_ECHO = struct.Struct(">HHHBB")  # OPTION-CODE, OPTION-LENGTH, then _ECS_HEAD

# Header flag bits (RFC 1035 §4.1.1, RFC 4035 §3.1.6 for CD).
QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
CD = 0x0010
ECHOED_FLAGS = OPCODE_MASK | RD | CD  # copied from query to response

TYPE_OPT = 41
OPTION_ECS = 8  # RFC 7871 §6
DNSSEC_OK = 0x8000  # the DO bit in the OPT TTL flags (RFC 3225 §3)
MAX_NAME_WIRE = 255  # RFC 1035 §2.3.4, length octets included
MAX_LABEL = 63
MAX_POINTER_JUMPS = 16  # per name; a query's one compressible owner needs one or two
MAX_EDNS_OPTIONS = 16  # per OPT: real queries carry a handful (ECS, COOKIE, padding, ...)
# RFC 7871 §6: FAMILY is an IANA address family, 1 IPv4 or 2 IPv6; 0 is reserved, so an
# option with FAMILY 0 is malformed (§7.2.1), even with SOURCE 0: §7.1.2 tells stubs to
# opt out with FAMILY 1 or 2, and an echoed FAMILY 0 is unreadable to dnspython (as gdnsd).
_FAMILY_BITS = {1: 32, 2: 128}
_FAMILY_AF = {1: (socket.AF_INET, 4), 2: (socket.AF_INET6, 16)}


@dataclass(frozen=True, slots=True)
class ClientSubnet:
    """An ECS option from a query (RFC 7871 §6), kept as received so the answer can echo it."""

    family: int
    source_prefix: int
    address: bytes  # exactly ceil(source_prefix / 8) octets

    @property
    def address_text(self) -> str:
        af, width = _FAMILY_AF[self.family]
        return socket.inet_ntop(af, self.address.ljust(width, b"\0"))

    def echo(self, scope_prefix: int) -> bytes:
        """The option for the response: FAMILY, SOURCE and ADDRESS as received (§7.2.1)."""
        size = 4 + len(self.address)
        head = _ECS_ECHO.pack(OPTION_ECS, size, self.family, self.source_prefix, scope_prefix)
        return head + self.address


@dataclass(frozen=True, slots=True)
class Edns:
    """The query's OPT record (RFC 6891 §6.1.2); unknown options are dropped, never echoed."""

    payload: int  # requestor's UDP payload size as advertised
    version: int
    dnssec_ok: bool
    subnet: ClientSubnet | None = None


@dataclass(frozen=True, slots=True)
class Query:
    id: int
    flags: int  # the raw header flags word
    question: bytes  # name + QTYPE + QCLASS exactly as received (uncompressed)
    name: bytes  # wire-format QNAME folded to lower case: the lookup key
    qtype: int
    qclass: int
    edns: Edns | None


class MalformedQuery(GeoRouterError):
    """The message cannot be answered normally: the sender's fault.

    `flags` is None when there must be no answer at all (header unreadable, or QR set so the
    message is a response, RFC 1035 §4.1.1); otherwise the question and OPT are filled in as
    far as they could be read, so the FORMERR/NOTIMP answer can carry them.
    """

    def __init__(
        self,
        reason: str,
        ident: int = 0,
        flags: int | None = None,
        question: bytes = b"",
        edns: Edns | None = None,
    ) -> None:
        super().__init__(reason)
        self.ident = ident
        self.flags = flags
        self.question = question
        self.edns = edns


def parse(data: bytes) -> Query:
    """Decode one query message; raise MalformedQuery when it cannot be answered normally."""
    if len(data) < HEADER.size:
        raise MalformedQuery("short header")
    ident, flags, qdcount, ancount, nscount, arcount = HEADER.unpack_from(data)
    if flags & QR:
        raise MalformedQuery("not a query")
    if qdcount != 1:
        raise MalformedQuery("QDCOUNT is not 1", ident, flags)
    if ancount or nscount or arcount > 1:
        # Judged from the header alone: no record of such a message is ever read.
        raise MalformedQuery("records a query never has", ident, flags, _question(data))
    query = parse_common(data)
    return query if query is not None else parse_full(data)


def parse_common(data: bytes) -> Query | None:
    """The fast path: one uncompressed question and at most one OPT record, nothing else.

    Returns None for any other shape (and for damage), leaving the verdict to `parse_full`.
    """
    ident, flags, _, _, _, arcount = HEADER.unpack_from(data)
    end = len(data)
    pos = HEADER.size
    limit = min(end, HEADER.size + MAX_NAME_WIRE)
    while True:
        if pos >= limit:
            return None
        length = data[pos]
        if length == 0:
            break
        if length > MAX_LABEL:
            return None
        pos += length + 1
    name_end = pos + 1
    qend = name_end + 4
    if qend > end:
        return None
    qtype, qclass = _TYPE_CLASS.unpack_from(data, name_end)
    question = data[HEADER.size : qend]
    edns = None
    if arcount:
        if qend + 11 > end or data[qend] != 0:
            return None
        rtype, payload, _, version, eflags, rdlen = _OPT_FIXED.unpack_from(data, qend + 1)
        if rtype != TYPE_OPT or qend + 11 + rdlen != end:
            return None
        edns = _edns(data, qend + 11, end, payload, version, eflags, (ident, flags, question))
    elif qend != end:
        return None
    return Query(ident, flags, question, data[HEADER.size : name_end].lower(), qtype, qclass, edns)


def parse_full(data: bytes) -> Query:
    """Any well-formed query of the shape `parse` admits, its one record's owner compressed
    or not; the question must not be: nothing precedes it that a pointer could name."""
    ident, flags, *_, arcount = HEADER.unpack_from(data)
    try:
        name, pos = read_name(data, HEADER.size, compressed=False)
        qtype, qclass = _TYPE_CLASS.unpack_from(data, pos)
    except (ValueError, struct.error) as exc:
        raise MalformedQuery("bad question", ident, flags, _question(data)) from exc
    pos += _TYPE_CLASS.size
    question = data[HEADER.size : pos]
    context = (ident, flags, question)
    edns = None
    if arcount:
        try:
            owner, pos = read_name(data, pos)
            rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(data, pos)
        except (ValueError, struct.error) as exc:
            raise MalformedQuery("bad record", *context) from exc
        start, pos = pos + _RR_FIXED.size, pos + _RR_FIXED.size + rdlen
        if pos > len(data):
            raise MalformedQuery("bad record", *context)
        if rtype == TYPE_OPT:
            if owner != b"\0":  # RFC 6891 §6.1.2: owned by the root
                raise MalformedQuery("OPT not owned by the root", *context)
            version, eflags = (ttl >> 16) & 0xFF, ttl & 0xFFFF
            edns = _edns(data, start, pos, rclass, version, eflags, context)
        # Any other record (TSIG, SIG(0)) is not understood and is ignored.
    if pos != len(data):
        raise MalformedQuery("trailing bytes", *context, edns)
    return Query(ident, flags, question, name.lower(), qtype, qclass, edns)


def read_name(data: bytes, pos: int, compressed: bool = True) -> tuple[bytes, int]:
    """The name stored at `pos`, uncompressed, and the offset just after it.

    A compression pointer (RFC 1035 §4.1.4) must point past the header and before the
    labels read since the last jump, so every jump goes strictly backwards and the walk
    ends; more than MAX_POINTER_JUMPS, or a name over 255 octets, is malformed.
    """
    labels = []
    size = 1
    after = 0  # where the name ends in the message: after its first pointer
    floor = pos  # a pointer must aim below every label read since the last jump
    end = len(data)
    for _ in range(MAX_POINTER_JUMPS + 1):
        while pos < end and 0 < (length := data[pos]) <= MAX_LABEL:
            size += length + 1
            if size > MAX_NAME_WIRE:
                raise ValueError("name longer than 255 octets")
            labels.append(data[pos : pos + length + 1])
            pos += length + 1
        if pos >= end:
            raise ValueError("name runs past the message")
        if data[pos] == 0:
            return b"".join(labels) + b"\0", after or pos + 1
        target = ((data[pos] & 0x3F) << 8) | data[pos + 1] if pos + 1 < end else -1
        if data[pos] & 0xC0 != 0xC0 or not compressed or not HEADER.size <= target < floor:
            raise ValueError("bad label type or compression pointer")
        after = after or pos + 2
        pos = floor = target
    raise ValueError("too many compression pointers")


def _question(data: bytes) -> bytes:
    """The question as received, if it can be read without decompression; else empty."""
    try:
        _, pos = read_name(data, HEADER.size, compressed=False)
    except ValueError:
        return b""
    end = pos + _TYPE_CLASS.size
    return data[HEADER.size : end] if end <= len(data) else b""


def name_to_wire(name: str) -> bytes:
    """Lower-case wire form of a presentation name ("cdn.example.com.")."""
    return _wire_name(tuple(DNSLabel(name).label)).lower()


def _wire_name(labels: tuple[bytes, ...]) -> bytes:
    """Uncompressed wire form of decoded labels; dnslib itself checks neither limit."""
    if any(len(label) > MAX_LABEL for label in labels):
        raise ValueError("label longer than 63 octets")
    wire = b"".join(bytes((len(label),)) + label for label in labels) + b"\0"
    if len(wire) > MAX_NAME_WIRE:
        raise ValueError("name longer than 255 octets")
    return wire


def _edns(
    data: bytes,
    start: int,
    end: int,
    payload: int,
    version: int,
    eflags: int,
    context: tuple[int, int, bytes],
) -> Edns:
    edns = Edns(payload, version, bool(eflags & DNSSEC_OK))
    if version:
        # Option semantics belong to the version; BADVERS is answered without reading them.
        return edns
    subnet = None
    pos = start
    for _ in range(MAX_EDNS_OPTIONS + 1):
        if pos >= end:
            break
        if pos + 4 > end:
            raise MalformedQuery("truncated EDNS option", *context, edns)
        code, length = _OPTION_HEAD.unpack_from(data, pos)
        pos += 4 + length
        if pos > end:
            raise MalformedQuery("truncated EDNS option", *context, edns)
        if code == OPTION_ECS:
            if subnet is not None:
                raise MalformedQuery("repeated ECS option", *context, edns)
            subnet = _client_subnet(data[pos - length : pos])
            if subnet is None:
                raise MalformedQuery("invalid ECS option", *context, edns)
    else:
        raise MalformedQuery("too many EDNS options", *context, edns)
    return Edns(payload, version, edns.dnssec_ok, subnet) if subnet else edns


def _client_subnet(option: bytes) -> ClientSubnet | None:
    """Validate an ECS option per RFC 7871 §6 and §7.2.1; None means FORMERR."""
    if len(option) < 4:
        return None
    family, source, scope = _ECS_HEAD.unpack_from(option)
    address = option[4:]
    bits = _FAMILY_BITS.get(family)
    if bits is None or source > bits or scope != 0 or len(address) != (source + 7) // 8:
        return None
    spare = -source % 8
    if address and address[-1] & ((1 << spare) - 1):
        return None  # bits set beyond SOURCE PREFIX-LENGTH
    return ClientSubnet(family, source, address)


def encode_rr(owner: bytes, rtype: int, rclass: int, ttl: int, rdata: bytes) -> bytes:
    """One resource record; `owner` is an uncompressed wire name or a compression pointer."""
    return owner + _RR_FIXED.pack(rtype, rclass, ttl, len(rdata)) + rdata


def encode_opt(payload: int, rcode: int, dnssec_ok: bool, options: bytes = b"") -> bytes:
    """The response's OPT record: upper 8 bits of a 12-bit RCODE go here (RFC 6891 §6.1.3)."""
    flags = DNSSEC_OK if dnssec_ok else 0
    return b"\0" + _OPT_FIXED.pack(TYPE_OPT, payload, rcode >> 4, 0, flags, len(options)) + options
