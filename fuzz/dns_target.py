"""Fuzz target: the router's query path, `wire.parse` and `Responder.respond`, as served.

The responder is the one `georouter serve` builds: the shipped topology (georouter/data/cdn.toml),
the embedded GeoLite2-City database and the selector with no load reports yet (it fails
open to the configured nodes), so a query goes through GeoIP placement, ECS and encoding.
Per input, over UDP and over TCP, the properties are:

- `parse` raises nothing but MalformedQuery;
- `respond` raises nothing and logs no error (its guard turns a bug into SERVFAIL and a
  log line, which the target counts as a find);
- it drops (None) the messages that must get no answer (no readable header, or QR set:
  RFC 1035 §4.1.1), and answers every query `parse` accepts;
- an answer parses with dnspython, has the query's ID and QR set, and fits: over UDP in
  the requestor's payload clamped to [512, 1232] (RFC 6891 §6.2.5, 512 without EDNS per
  RFC 1035 §4.2.1), over TCP in 65535 octets.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Hashable, Sequence

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype

from fuzz.runner import FuzzFailure
from georouter.config import DEFAULT_CONFIG, load_config
from georouter.geo import open_geoip
from georouter.pipeline import build_answering
from georouter.responder import (
    MAX_TCP_MESSAGE,
    MAX_UDP_PAYLOAD,
    MIN_UDP_PAYLOAD,
    Transport,
)
from georouter.selector import Selector
from georouter.tallies import HotPathTallies
from georouter.wire import HEADER, OPCODE_MASK, QR, MalformedQuery, parse

CLIENTS = ("198.51.100.7", "203.0.113.9", "2001:db8:1::5", "127.0.0.1", "::ffff:192.0.2.1")
OPCODE_UPDATE = 5 << 11  # RFC 2136 §1.3
MAX_QUERY_BYTES = 4096  # what the DNS shells accept (dns_server.MAX_UDP_QUERY_BYTES)
NAMES: tuple[str, ...] = (
    "cdn.example.com.",
    "img.example.com.",
    "www.example.com.",
    "example.com.",
)
NAMES += ("nx.example.com.", "ns1.example.com.", "example.org.", "a.b.c.cdn.example.com.")
TYPES = ("A", "AAAA", "ANY", "SOA", "NS", "TXT", "CNAME", "AXFR", "DS", "MX", "TYPE65535")
ECS = (("198.51.100.0", 24), ("203.0.113.0", 20), ("2001:db8:1::", 56), ("0.0.0.0", 0))
TOKENS = (
    b"\xc0\x0c", b"\xc0\x00", b"\xc0\x0b", b"\xff\xff", b"\x00", b"\x3f", b"\x40",
    b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00",  # an empty root OPT record
    b"\x00\x08\x00\x07\x00\x01\x18\x00\xc6\x33\x64",  # an ECS option, IPv4 /24
    b"\x00\x0a\x00\x08", b"\x00\x01\x00\x01", b"\x00\xff\x00\x01", b"\x00\xfc\x00\x01",
    b"\x03cdn\x07example\x03com\x00", b"\x03CdN\x07ExAmPlE\x03cOm\x00",
)  # fmt: skip


class DnsTarget:
    """wire.parse and Responder.respond on one input, over both transports."""

    name = "dns"
    max_len = MAX_QUERY_BYTES
    tokens: Sequence[bytes] = TOKENS

    def __init__(self) -> None:
        config = load_config(DEFAULT_CONFIG)
        self._reader = open_geoip(None)
        selector = Selector(config.policy, config.regions, random.Random(0))
        self.responder = build_answering(config, self._reader, HotPathTallies(), selector)
        self._errors = _ErrorLog()
        logging.getLogger("georouter").addHandler(self._errors)

    def close(self) -> None:
        logging.getLogger("georouter").removeHandler(self._errors)
        self._reader.close()

    def seeds(self) -> list[bytes]:
        return dns_seeds()

    def check(self, data: bytes) -> Hashable:
        try:
            query = parse(data)
            edns, drop, parsed = query.edns, False, True
        except MalformedQuery as exc:
            edns, drop, parsed = exc.edns, exc.flags is None, False
        client = CLIENTS[data[-1] % len(CLIENTS)] if data else CLIENTS[0]
        signature: list[Hashable] = [drop]
        for transport in ("udp", "tcp"):
            self._errors.records.clear()
            reply = self.responder.respond(data, client, transport)
            if self._errors.records:
                raise FuzzFailure(f"responder logged an error ({transport}): {self._errors}")
            if reply is None:
                if parsed:
                    raise FuzzFailure(f"no answer ({transport}) to a query parse accepts")
                continue
            if drop:
                raise FuzzFailure(f"answered ({transport}) a message that must be dropped")
            payload = None if edns is None else edns.payload
            signature.append(check_reply(data, reply, transport, payload))
        return tuple(signature)


def allowed_size(transport: Transport, payload: int | None) -> int:
    """The largest answer the requestor accepts: RFC 6891 §6.2.5, RFC 1035 §4.2.1/§4.2.2."""
    if transport == "tcp":
        return MAX_TCP_MESSAGE
    if payload is None:
        return MIN_UDP_PAYLOAD
    return min(max(payload, MIN_UDP_PAYLOAD), MAX_UDP_PAYLOAD)


def check_reply(
    query: bytes, reply: bytes, transport: Transport, payload: int | None
) -> tuple[int, int, int]:
    """FuzzFailure unless `reply` is a well-formed answer to `query`; (rcode, flags, size)."""
    if len(reply) > allowed_size(transport, payload):
        raise FuzzFailure(f"{len(reply)}-octet answer over {transport}, payload {payload}")
    if len(reply) < HEADER.size or reply[:2] != query[:2]:
        raise FuzzFailure("answer does not carry the query's ID")
    if not int.from_bytes(reply[2:4]) & QR:
        raise FuzzFailure("answer without QR")
    flags = int.from_bytes(reply[2:4])
    if flags & OPCODE_MASK == OPCODE_UPDATE:
        # dnspython reads an UPDATE's question as a zone section (RFC 2136 §2.3, which
        # must be one SOA); our NOTIMP echoes whatever the query had: read it as a query.
        reply = reply[:2] + (flags & ~OPCODE_MASK).to_bytes(2) + reply[4:]
    try:
        message = dns.message.from_wire(reply)
    except dns.exception.DNSException as exc:
        raise FuzzFailure(f"answer dnspython cannot parse: {exc!r}") from exc
    return message.rcode(), message.flags, min(len(reply) // 64, 20)


def dns_seeds() -> list[bytes]:
    """Valid queries made with dnspython, the same list every time (fixed IDs): every name
    and type, EDNS with and without DO, ECS of both families, NSID, 0x20 mixed case, and a
    few odd ones (BADVERS, NOTIFY, class CH, a compressed owner name)."""
    rng = random.Random(20)
    seeds = []
    for i, name in enumerate(NAMES):
        for j, rdtype in enumerate(TYPES):
            query = dns.message.make_query(name, rdtype, id=(i * 31 + j) & 0xFFFF)
            seeds.append(query.to_wire())
            options: list[dns.edns.Option] = []
            if (i + j) % 2 == 0:
                address, prefix = ECS[(i + j) % len(ECS)]
                options.append(dns.edns.ECSOption(address, prefix))
            if j % 3 == 0:
                options.append(dns.edns.GenericOption(dns.edns.NSID, b""))
            query.use_edns(
                0, dns.flags.DO if j % 2 else 0, 1232 if i % 2 else 4096, options=options
            )
            seeds.append(query.to_wire())
    mixed = "".join(c.upper() if rng.random() < 0.5 else c for c in "cdn.example.com.")
    seeds.append(dns.message.make_query(mixed, "A", use_edns=0, id=0x20).to_wire())
    badvers = dns.message.make_query("cdn.example.com.", "A", id=0xBAD)
    badvers.use_edns(1)
    seeds.append(badvers.to_wire())
    notify = dns.message.make_query("example.com.", "SOA", id=4)
    notify.set_opcode(dns.opcode.NOTIFY)
    seeds.append(notify.to_wire())
    seeds.append(dns.message.make_query("cdn.example.com.", "A", "CH", id=3).to_wire())
    # Compression (RFC 1035 §4.1.4): an additional record owned by a pointer to the question.
    question = "abcd010000010000000000010363646e076578616d706c6503636f6d0000010001"
    seeds.append(bytes.fromhex(question + "c00c000100010000000000047f000001"))
    return seeds


class _ErrorLog(logging.Handler):
    """Collects ERROR records: the responder's guard logs a bug it turned into SERVFAIL."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __str__(self) -> str:
        return "; ".join(r.getMessage()[:200] for r in self.records)
