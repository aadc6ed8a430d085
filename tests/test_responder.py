"""Responder: bytes in, bytes out, checked by parsing every answer with dnspython."""

from __future__ import annotations

import dataclasses
import random
import struct
from ipaddress import IPv6Address
from typing import Literal

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest

from georouter import responder as responder_module
from georouter.config import DEFAULT_CONFIG, RouterConfig, load_config
from georouter.fleet import Fleet
from georouter.geo import Placement
from georouter.metrics import RouterMetrics
from georouter.responder import MAX_UDP_PAYLOAD, Responder
from georouter.selector import Decision, DecisionReason, Selector
from georouter.tallies import HotPathTallies
from georouter.zonedata import StaticRecord

CLIENT = "192.0.2.53"
BIG_TXT_RECORDS = 6  # 6 x 255 octets: over 512 and over MAX_UDP_PAYLOAD, well under 64 KiB


class FakePlacer:
    """Places by a fixed table, recording each call."""

    def __init__(self, table: dict[str, Placement] | None = None) -> None:
        self.table = table or {}
        self.calls: list[tuple[str, int | None]] = []

    def place(self, address: str, source_prefix: int | None = None) -> Placement:
        self.calls.append((address, source_prefix))
        return self.table.get(address, Placement("na", 16))


class FakePicker:
    """Answers with the region's configured nodes of the family, in config order."""

    def __init__(self, config: RouterConfig, reason: DecisionReason = "geo") -> None:
        self.config = config
        self.reason = reason
        self.calls: list[tuple[str, int]] = []

    def pick(self, region: str, family: Literal[4, 6], service: str = "") -> Decision:
        self.calls.append((region, family))
        if self.reason == "fail_closed":
            return Decision(region, (), "fail_closed")
        nodes = tuple(
            n
            for n in self.config.nodes
            if n.region == region
            and n.role == "edge"  # as the fleet's pools: shields are never answered
            and (n.ipv4 if family == 4 else n.ipv6) is not None
        )
        return Decision(region, nodes, self.reason, self.config.policy.answer_ttl)


def router_config() -> RouterConfig:
    """The shipped topology plus names for the edge cases: a big RRset, a delegation, an
    empty non-terminal, a dangling CNAME, and one IPv6 node in "eu"."""
    config = load_config(DEFAULT_CONFIG)
    zone = config.zones[0]

    def record(
        name: str, rtype: Literal["A", "AAAA", "CNAME", "TXT", "NS"], value: str
    ) -> StaticRecord:
        return StaticRecord(f"{name}.example.com.", rtype, value, 300)

    extra = (
        *(record("big", "TXT", f"{i}" * 255) for i in range(BIG_TXT_RECORDS)),
        record("sub", "NS", "ns.sub.example.com."),
        record("ns.sub", "A", "127.0.0.2"),
        record("leaf.deep", "TXT", "below an empty non-terminal"),
        record("dangling", "CNAME", "missing.example.com."),
        record("away", "CNAME", "cdn.example.org."),
    )
    zone = dataclasses.replace(zone, records=zone.records + extra)
    nodes = list(config.nodes)
    nodes[2] = dataclasses.replace(nodes[2], ipv6=IPv6Address("::1"))
    return dataclasses.replace(config, zones=(zone,), nodes=tuple(nodes))


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    return router_config()


@pytest.fixture
def placer() -> FakePlacer:
    return FakePlacer({"198.51.100.0": Placement("eu", 20), CLIENT: Placement("na", 16)})


@pytest.fixture
def metrics() -> RouterMetrics:
    return RouterMetrics()


@pytest.fixture(scope="module")
def shared_responder(config: RouterConfig) -> Responder:
    """One responder for property tests (hypothesis reruns a test body, not its fixtures)."""
    return Responder(config, FakePlacer(), FakePicker(config), HotPathTallies())


@pytest.fixture
def responder(config: RouterConfig, placer: FakePlacer, metrics: RouterMetrics) -> Responder:
    return Responder(config, placer, FakePicker(config), metrics.tallies)


def ask(
    responder: Responder,
    query: dns.message.Message | bytes,
    transport: Literal["udp", "tcp"] = "udp",
) -> dns.message.Message:
    wire = query if isinstance(query, bytes) else query.to_wire()
    out = responder.respond(wire, CLIENT, transport)
    assert out is not None
    return dns.message.from_wire(out)


def ecs(address: str, prefix: int) -> list[dns.edns.Option]:
    return [dns.edns.ECSOption(address, prefix)]


def names(section: list[dns.rrset.RRset]) -> list[tuple[str, str]]:
    return [(rrset.name.to_text(), dns.rdatatype.to_text(rrset.rdtype)) for rrset in section]


def test_aa_set_ra_clear_id_and_rd_echoed_rfc1035_4_1_1(responder: Responder) -> None:
    query = dns.message.make_query("cdn.example.com", "A")
    answer = ask(responder, query)
    assert answer.id == query.id
    assert answer.flags & dns.flags.AA and answer.flags & dns.flags.QR
    assert not answer.flags & dns.flags.RA
    assert answer.flags & dns.flags.RD
    norec = dns.message.make_query("cdn.example.com", "A", flags=0)
    assert not ask(responder, norec).flags & dns.flags.RD


def test_question_letter_case_echoed_for_0x20(responder: Responder) -> None:
    for qname in ("cDn.ExAmPle.CoM", "NOPE.example.COM", "WwW.example.com", "EXAMPLE.com"):
        query = dns.message.make_query(qname, "A")
        wire = responder.respond(query.to_wire(), CLIENT, "udp")
        assert wire is not None
        assert query.to_wire()[12:][: len(qname) + 6] == wire[12:][: len(qname) + 6]
        assert dns.message.from_wire(wire).question[0].name.to_text() == qname + "."


def test_geo_a_answer_from_the_decision(responder: Responder, placer: FakePlacer) -> None:
    answer = ask(responder, dns.message.make_query("cdn.example.com", "A"))
    (rrset,) = answer.answer
    assert [r.address for r in rrset] == ["127.0.0.11", "127.0.0.12"]
    assert rrset.ttl == 20
    assert placer.calls == [(CLIENT, None)]
    assert answer.edns < 0  # no OPT asked, none given (RFC 6891 §7)


def test_geo_answer_capped_at_answers_per_response(config: RouterConfig) -> None:
    config = dataclasses.replace(
        config, policy=dataclasses.replace(config.policy, answers_per_response=1)
    )
    responder = Responder(config, FakePlacer(), FakePicker(config), HotPathTallies())
    (rrset,) = ask(responder, dns.message.make_query("cdn.example.com", "A")).answer
    assert [r.address for r in rrset] == ["127.0.0.11"]


def test_aaaa_asks_for_family_6(config: RouterConfig) -> None:
    picker = FakePicker(config)
    placer = FakePlacer({CLIENT: Placement("eu", 24)})
    responder = Responder(config, placer, picker, HotPathTallies())
    (rrset,) = ask(responder, dns.message.make_query("img.example.com", "AAAA")).answer
    assert [r.address for r in rrset] == ["::1"]
    assert picker.calls == [("eu", 6)]


def test_aaaa_without_ipv6_nodes_is_nodata_rfc2308_2_2(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("cdn.example.com", "AAAA"))
    assert answer.rcode() == dns.rcode.NOERROR and not answer.answer
    assert names(answer.authority) == [("example.com.", "SOA")]


def test_soa_at_apex_mname_is_first_ns_rfc1035_3_3_13(responder: Responder) -> None:
    (rrset,) = ask(responder, dns.message.make_query("example.com", "SOA")).answer
    soa = rrset[0]
    assert soa.mname.to_text() == "ns1.example.com."
    assert soa.rname.to_text() == "hostmaster.example.com."
    assert (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum) == (
        2026112101,
        3600,
        600,
        604800,
        60,
    )


def test_ns_at_apex_with_address_in_additional_rfc1035_3_3_11(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("example.com", "NS"))
    assert [r.target.to_text() for r in answer.answer[0]] == ["ns1.example.com."]
    assert names(answer.additional) == [("ns1.example.com.", "A")]


def test_static_txt_at_apex(responder: Responder) -> None:
    (rrset,) = ask(responder, dns.message.make_query("example.com", "TXT")).answer
    assert rrset[0].strings == (b"georouter demo zone",)
    assert rrset.ttl == 300


def test_nxdomain_has_soa_with_negative_ttl_rfc2308_2_1_and_5(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("nope.example.com", "A"))
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert answer.flags & dns.flags.AA and not answer.answer
    (soa,) = answer.authority
    assert soa.name.to_text() == "example.com." and soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == min(3600, soa[0].minimum) == 60


def test_nxdomain_below_a_name_with_data_rfc8020(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("x.y.cdn.example.com", "A"))
    assert answer.rcode() == dns.rcode.NXDOMAIN


def test_nodata_has_soa_rfc2308_2_2(responder: Responder) -> None:
    for qname, qtype in (
        ("cdn.example.com", "TXT"),
        ("example.com", "MX"),
        ("ns1.example.com", "AAAA"),
    ):
        answer = ask(responder, dns.message.make_query(qname, qtype))
        assert answer.rcode() == dns.rcode.NOERROR and not answer.answer, qname
        assert names(answer.authority) == [("example.com.", "SOA")]
        assert answer.authority[0].ttl == 60


def test_empty_non_terminal_is_nodata_not_nxdomain_rfc8020_2(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("deep.example.com", "A"))
    assert answer.rcode() == dns.rcode.NOERROR and not answer.answer
    assert names(answer.authority) == [("example.com.", "SOA")]


def test_cname_followed_to_geo_name_rfc1034_4_3_2(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("www.example.com", "A"))
    assert names(answer.answer) == [("www.example.com.", "CNAME"), ("cdn.example.com.", "A")]
    assert [r.address for r in answer.answer[1]] == ["127.0.0.11", "127.0.0.12"]


def test_cname_question_is_not_followed_rfc1034_4_3_2(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("www.example.com", "CNAME"))
    assert names(answer.answer) == [("www.example.com.", "CNAME")]


def test_cname_to_absent_name_is_nxdomain_with_the_cname_rfc6604_2(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("dangling.example.com", "A"))
    assert answer.rcode() == dns.rcode.NXDOMAIN
    assert names(answer.answer) == [("dangling.example.com.", "CNAME")]
    assert names(answer.authority) == [("example.com.", "SOA")]


def test_cname_to_nodata_target_carries_soa_rfc2308_2_2(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("www.example.com", "TXT"))
    assert answer.rcode() == dns.rcode.NOERROR
    assert names(answer.answer) == [("www.example.com.", "CNAME")]
    assert names(answer.authority) == [("example.com.", "SOA")]


def test_cname_out_of_our_zones_stops_there(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("away.example.com", "A"))
    assert answer.rcode() == dns.rcode.NOERROR and not answer.authority
    assert names(answer.answer) == [("away.example.com.", "CNAME")]


def test_delegation_answers_with_referral_and_glue_rfc1034_4_3_2(responder: Responder) -> None:
    for qname in ("sub.example.com", "www.sub.example.com", "ns.sub.example.com"):
        answer = ask(responder, dns.message.make_query(qname, "A"))
        assert not answer.flags & dns.flags.AA and not answer.answer, qname
        assert names(answer.authority) == [("sub.example.com.", "NS")]
        assert names(answer.additional) == [("ns.sub.example.com.", "A")]


def test_ds_at_a_delegation_is_answered_by_the_parent_rfc4035_3_1_4_1(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("sub.example.com", "DS"))
    assert answer.flags & dns.flags.AA and not answer.answer
    assert names(answer.authority) == [("example.com.", "SOA")]


@pytest.mark.parametrize("qname", ["example.org", "com", ".", "example.com.evil.net"])
def test_names_outside_our_zones_are_refused(responder: Responder, qname: str) -> None:
    answer = ask(responder, dns.message.make_query(qname, "A"))
    assert answer.rcode() == dns.rcode.REFUSED and not answer.flags & dns.flags.AA


def test_other_classes_are_refused(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("example.com", "TXT", rdclass="CH"))
    assert answer.rcode() == dns.rcode.REFUSED


def test_zone_transfer_refused_rfc5936_2_2_1(responder: Responder) -> None:
    for qname in ("example.com", "nope.example.com"):
        answer = ask(responder, dns.message.make_query(qname, "AXFR"), "tcp")
        assert answer.rcode() == dns.rcode.REFUSED


def test_any_gets_one_synthesized_hinfo_rfc8482_4_2(responder: Responder) -> None:
    for qname in ("example.com", "cdn.example.com"):
        (rrset,) = ask(responder, dns.message.make_query(qname, "ANY")).answer
        assert rrset.rdtype == dns.rdatatype.HINFO and len(rrset) == 1
        assert (rrset[0].cpu, rrset[0].os) == (b"RFC8482", b"")


def test_any_at_a_cname_gets_the_cname_rfc8482_4_1(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("www.example.com", "ANY"))
    assert names(answer.answer) == [("www.example.com.", "CNAME")]


def test_other_opcode_is_notimp_rfc1035_4_1_1(responder: Responder) -> None:
    query = dns.message.make_query("example.com", "SOA")
    query.set_opcode(dns.opcode.NOTIFY)
    answer = ask(responder, query)
    assert answer.rcode() == dns.rcode.NOTIMP
    assert answer.opcode() == dns.opcode.NOTIFY


def update(zone: str, rdtype: str = "SOA", records: bool = True) -> bytes:
    """An RFC 2136 UPDATE: the zone section, a prerequisite and an update."""
    message = dns.message.make_query(zone, rdtype, rdclass="IN", flags=dns.flags.RD)
    message.set_opcode(dns.opcode.UPDATE)
    wire = bytearray(message.to_wire())
    if records:
        wire[6:10] = b"\0\1\0\1"  # PRCOUNT, UPCOUNT
        wire += b"\x01x\xc0\x0c" + struct.pack(">HHIH", 255, 255, 0, 0)  # name in use
        wire += b"\x01y\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4) + bytes(4)
    return bytes(wire)


@pytest.mark.parametrize(
    ("zone", "rdtype", "records", "echoed"),
    [
        ("example.com", "SOA", True, True),
        ("example.com", "SOA", False, True),
        ("example.com", "A", False, False),  # not a zone section (RFC 2136 §2.3)
        ("example.com", "TXT", True, False),
    ],
)
def test_update_is_notimp_and_readable_rfc2136_2_3(
    responder: Responder, zone: str, rdtype: str, records: bool, echoed: bool
) -> None:
    """dnspython reads the answer as an UPDATE: a zone section only if it asks for SOA,
    and no RD bit (a Z bit under UPDATE, RFC 2136 §2.2)."""
    query = update(zone, rdtype, records)
    wire = responder.respond(query, CLIENT, "udp")
    assert wire is not None
    answer = dns.message.from_wire(wire)
    assert answer.id == int.from_bytes(query[:2]) and answer.opcode() == dns.opcode.UPDATE
    assert answer.rcode() == dns.rcode.NOTIMP and answer.flags & 0xFFF0 == dns.flags.QR | 0x2800
    assert len(answer.question) == int(echoed)


def test_a_response_is_never_answered_rfc1035_4_1_1(responder: Responder) -> None:
    query = dns.message.make_query("example.com", "SOA")
    query.flags |= dns.flags.QR
    assert responder.respond(query.to_wire(), CLIENT, "udp") is None


@pytest.mark.parametrize("qdcount", [0, 2])
def test_qdcount_other_than_one_is_formerr(responder: Responder, qdcount: int) -> None:
    wire = bytearray(dns.message.make_query("example.com", "SOA").to_wire())
    wire[4:6] = qdcount.to_bytes(2)
    answer = ask(responder, bytes(wire))
    assert answer.rcode() == dns.rcode.FORMERR and not answer.question


def test_truncated_question_is_formerr_and_short_header_dropped(responder: Responder) -> None:
    wire = dns.message.make_query("example.com", "SOA").to_wire()
    assert ask(responder, wire[:20]).rcode() == dns.rcode.FORMERR
    assert responder.respond(wire[:11], CLIENT, "udp") is None


def test_edns_version_1_is_badvers_rfc6891_6_1_3(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("example.com", "SOA", use_edns=1))
    assert answer.rcode() == dns.rcode.BADVERS
    assert answer.edns == 0 and not answer.answer


def test_opt_answered_with_our_payload_and_do_echoed_rfc6891_6_2_3_rfc3225_3(
    responder: Responder,
) -> None:
    query = dns.message.make_query("example.com", "SOA", use_edns=0, payload=4096, want_dnssec=True)
    answer = ask(responder, query)
    assert answer.edns == 0 and answer.payload == MAX_UDP_PAYLOAD
    assert answer.ednsflags & dns.flags.DO


def test_unknown_options_are_not_echoed_rfc6891_6_1_2(responder: Responder) -> None:
    option = dns.edns.GenericOption(65001, b"hello")
    answer = ask(
        responder, dns.message.make_query("example.com", "SOA", use_edns=0, options=[option])
    )
    assert answer.edns == 0 and answer.options == ()


def test_two_opt_records_are_formerr_rfc6891_6_1_1(responder: Responder) -> None:
    wire = bytearray(dns.message.make_query("example.com", "SOA", use_edns=0).to_wire())
    opt = bytes(wire[-11:])
    wire[10:12] = (2).to_bytes(2)
    answer = ask(responder, bytes(wire) + opt)
    assert answer.rcode() == dns.rcode.FORMERR


def test_answer_over_512_without_edns_is_truncated_rfc1035_4_2_1(responder: Responder) -> None:
    query = dns.message.make_query("big.example.com", "TXT")
    wire = responder.respond(query.to_wire(), CLIENT, "udp")
    assert wire is not None and len(wire) <= 512
    answer = dns.message.from_wire(wire)
    assert answer.flags & dns.flags.TC and not answer.answer and answer.question


def test_truncated_answer_keeps_question_and_opt_rfc7766_8(responder: Responder) -> None:
    query = dns.message.make_query("big.example.com", "TXT", use_edns=0, payload=65000)
    answer = ask(responder, query)
    assert answer.flags & dns.flags.TC and not answer.answer
    assert answer.edns == 0 and answer.question[0].name.to_text() == "big.example.com."


def test_small_advertised_payload_counts_as_512_rfc6891_6_2_5(responder: Responder) -> None:
    query = dns.message.make_query("example.com", "NS", use_edns=0, payload=100)
    answer = ask(responder, query)
    assert not answer.flags & dns.flags.TC and answer.answer


def test_tcp_answers_in_full_and_never_sets_tc_rfc7766_8(responder: Responder) -> None:
    answer = ask(responder, dns.message.make_query("big.example.com", "TXT"), "tcp")
    assert not answer.flags & dns.flags.TC
    assert len(answer.answer[0]) == BIG_TXT_RECORDS


def test_ecs_places_by_subnet_and_scopes_rfc7871_7_2_1(
    responder: Responder, placer: FakePlacer, metrics: RouterMetrics
) -> None:
    query = dns.message.make_query(
        "cdn.example.com", "A", use_edns=0, options=ecs("198.51.100.0", 22)
    )
    answer = ask(responder, query)
    (option,) = answer.options
    assert isinstance(option, dns.edns.ECSOption)
    assert (option.address, option.srclen, option.scopelen) == ("198.51.100.0", 22, 20)
    assert placer.calls == [("198.51.100.0", 22)]
    assert [r.address for r in answer.answer[0]] == ["127.0.0.13", "127.0.0.14"]
    assert metrics.registry.get_sample_value("georouter_ecs_scope_prefix_length_sum") == 20


def test_ecs_ipv6_echoed_as_received_rfc7871_7_2_1(
    responder: Responder, placer: FakePlacer
) -> None:
    query = dns.message.make_query(
        "cdn.example.com", "A", use_edns=0, options=ecs("2001:db8:ab00::", 40)
    )
    wire = responder.respond(query.to_wire(), CLIENT, "udp")
    assert wire is not None
    assert wire.endswith(bytes.fromhex("0008 0009 0002 28 10 20010db8ab"))
    assert placer.calls == [("2001:db8:ab00::", 40)]


@pytest.mark.parametrize(
    ("qname", "qtype"),
    [
        ("example.com", "SOA"),
        ("nope.example.com", "A"),
        ("cdn.example.com", "TXT"),
        ("sub.example.com", "A"),
    ],
)
def test_ecs_scope_zero_for_static_and_negative_answers_rfc7871_7_4(
    responder: Responder, qname: str, qtype: str
) -> None:
    answer = ask(
        responder, dns.message.make_query(qname, qtype, use_edns=0, options=ecs("198.51.100.0", 24))
    )
    assert answer.options[0].scopelen == 0 and answer.options[0].srclen == 24


def test_ecs_source_zero_places_by_resolver_with_scope_zero_rfc7871_7_1_2(
    responder: Responder, placer: FakePlacer
) -> None:
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=ecs("0.0.0.0", 0))
    answer = ask(responder, query)
    assert placer.calls == [(CLIENT, None)]
    assert (answer.options[0].srclen, answer.options[0].scopelen) == (0, 0)
    assert answer.answer


def test_ecs_family_zero_is_formerr_without_the_option_rfc7871_7_2_1(
    responder: Responder,
) -> None:
    """FAMILY 0 is no address family (RFC 7871 §6); the FORMERR answer carries an OPT but
    not the bad option, so dnspython can read it."""
    option = dns.edns.GenericOption(8, bytes.fromhex("0000 00 00"))
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=[option])
    answer = ask(responder, query)
    assert answer.rcode() == dns.rcode.FORMERR and answer.edns == 0 and not answer.options
    assert answer.question == query.question


def test_ecs_cname_chain_carries_only_the_cname_rfc7871_7_2_1(responder: Responder) -> None:
    query = dns.message.make_query(
        "www.example.com", "A", use_edns=0, options=ecs("198.51.100.0", 24)
    )
    answer = ask(responder, query)
    assert names(answer.answer) == [("www.example.com.", "CNAME")]
    assert answer.options[0].scopelen == 0


@pytest.mark.parametrize(
    "payload",
    [
        "0003 18 00 c63364",  # unknown FAMILY (RFC 7871 §7.2.1)
        "0001 21 00 c6336400ff",  # SOURCE 33 > 32
        "0002 81 00" + "00" * 17,  # SOURCE 129 > 128
        "0001 18 00 c633640a",  # an ADDRESS octet too many (§6)
        "0001 18 00 c633",  # an ADDRESS octet too few (§6)
        "0001 17 00 c63365",  # a bit set beyond SOURCE PREFIX-LENGTH 23 (§6)
        "0001 18 08 c63364",  # SCOPE non-zero in a query (§6)
        "0001 18",  # shorter than the fixed fields
    ],
)
def test_invalid_ecs_is_formerr_rfc7871_6(responder: Responder, payload: str) -> None:
    option = dns.edns.GenericOption(8, bytes.fromhex(payload))
    answer = ask(
        responder, dns.message.make_query("cdn.example.com", "A", use_edns=0, options=[option])
    )
    assert answer.rcode() == dns.rcode.FORMERR
    assert answer.edns == 0 and answer.options == ()
    assert answer.question[0].name.to_text() == "cdn.example.com."


def test_fail_closed_decision_is_servfail(config: RouterConfig) -> None:
    responder = Responder(config, FakePlacer(), FakePicker(config, "fail_closed"), HotPathTallies())
    answer = ask(responder, dns.message.make_query("cdn.example.com", "A"))
    assert answer.rcode() == dns.rcode.SERVFAIL and not answer.answer


def test_tallies_count_queries_answers_and_decisions(
    responder: Responder, metrics: RouterMetrics
) -> None:
    ask(responder, dns.message.make_query("cdn.example.com", "A"))
    ask(responder, dns.message.make_query("nope.example.com", "AAAA"), "tcp")
    ask(responder, dns.message.make_query("example.com", "TYPE65000"))
    tallies = metrics.tallies
    assert tallies.queries == {
        ("udp", "A", "NOERROR"): 1,
        ("tcp", "AAAA", "NXDOMAIN"): 1,
        ("udp", "other", "NOERROR"): 1,
    }
    assert tallies.answers == {("na", "edge-na-1"): 1, ("na", "edge-na-2"): 1}
    assert tallies.decisions == {("cdn.example.com", "geo"): 1}


def test_geo_answer_cache_is_bounded(config: RouterConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(responder_module, "GEO_CACHE_ENTRIES", 2)
    placer = FakePlacer({"198.51.100.0": Placement("eu", 24), "203.0.113.0": Placement("ap", 24)})
    responder = Responder(config, placer, FakePicker(config), HotPathTallies())
    for address in ("198.51.100.0", "203.0.113.0", "192.0.2.0", "198.51.100.0"):
        query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=ecs(address, 24))
        region = placer.table.get(address, Placement("na", 16)).region
        addresses = [r.address for r in ask(responder, query).answer[0]]
        assert addresses == [
            str(n.ipv4) for n in config.nodes if n.region == region and n.role == "edge"
        ]
    assert len(responder._geo_cache) == 2


def test_repeated_query_is_answered_from_its_shape_with_its_own_id(responder: Responder) -> None:
    first = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=ecs(*SUBNET))
    again = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=ecs(*SUBNET))
    again.id = (first.id + 1) % 65536
    one, two = (responder.respond(q.to_wire(), CLIENT, "udp") for q in (first, again))
    assert one is not None and two is not None
    assert len(responder._shapes["udp"]) == 1
    assert two[:2] == again.to_wire()[:2] and one[2:] == two[2:]


SUBNET = ("198.51.100.0", 24)


def test_shape_hit_places_each_resolver_by_its_own_address_rfc7871_7_1_2(
    responder: Responder, placer: FakePlacer
) -> None:
    query = dns.message.make_query("cdn.example.com", "A").to_wire()
    na, eu = (ask_from(responder, query, client) for client in (CLIENT, "198.51.100.0"))
    assert [r.address for r in na.answer[0]] == ["127.0.0.11", "127.0.0.12"]
    assert [r.address for r in eu.answer[0]] == ["127.0.0.13", "127.0.0.14"]
    assert placer.calls == [(CLIENT, None), ("198.51.100.0", None)]


def ask_from(responder: Responder, query: bytes, client: str) -> dns.message.Message:
    out = responder.respond(query, client, "udp")
    assert out is not None
    return dns.message.from_wire(out)


def test_shape_hit_keeps_the_ecs_scope_and_counts_every_query_rfc7871_7_2_1(
    responder: Responder, metrics: RouterMetrics
) -> None:
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=ecs(*SUBNET))
    for _ in range(3):
        (option,) = ask(responder, query).options
        assert isinstance(option, dns.edns.ECSOption) and option.scopelen == 20
    tallies = metrics.tallies
    assert tallies.queries == {("udp", "A", "NOERROR"): 3}
    assert tallies.answers == {("eu", "edge-eu-1"): 3, ("eu", "edge-eu-2"): 3}
    assert (sum(tallies.ecs_scopes.counts), tallies.ecs_scopes.total) == (3, 60)


def test_question_case_variants_are_separate_shapes_for_0x20(responder: Responder) -> None:
    for qname in ("cdn.example.com", "CdN.eXaMpLe.CoM", "cdn.example.com"):
        answer = ask(responder, dns.message.make_query(qname, "A"))
        assert answer.question[0].name.to_text() == qname + "."
        assert answer.answer[0].name.to_text() == qname + "."
    assert len(responder._shapes["udp"]) == 2


def test_names_without_data_stay_out_of_the_shape_cache(responder: Responder) -> None:
    for qname in ("nope.example.com", "deep.example.com", "x.example.org"):
        ask(responder, dns.message.make_query(qname, "A"))
    assert responder._shapes == {"udp": {}, "tcp": {}}


def test_shape_cache_is_bounded_and_per_transport(
    config: RouterConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(responder_module, "SHAPE_CACHE_ENTRIES", 2)
    responder = Responder(config, FakePlacer(), FakePicker(config), HotPathTallies())
    for qname, rdtype in (("", "SOA"), ("cdn.", "A"), ("www.", "A")):
        answer = ask(responder, dns.message.make_query(f"{qname}example.com", rdtype))
        assert answer.rcode() == dns.rcode.NOERROR and answer.answer
    ask(responder, dns.message.make_query("example.com", "SOA"), "tcp")
    assert (len(responder._shapes["udp"]), len(responder._shapes["tcp"])) == (1, 1)


class FailingPicker(FakePicker):
    """Raises on the first pick, then picks like FakePicker: a bug that strikes once."""

    def pick(self, region: str, family: Literal[4, 6], service: str = "") -> Decision:
        if not self.calls:
            self.calls.append((region, family))
            raise RuntimeError("picker bug")
        return super().pick(region, family, service)


def test_a_bug_costs_one_query_a_servfail_not_the_server(
    config: RouterConfig, caplog: pytest.LogCaptureFixture
) -> None:
    responder = Responder(config, FakePlacer(), FailingPicker(config), HotPathTallies())
    query = dns.message.make_query("cdn.example.com", "A")
    failed = ask(responder, query)
    assert failed.rcode() == dns.rcode.SERVFAIL and failed.question == query.question
    assert "answering" in caplog.text and "picker bug" in caplog.text
    assert [r.address for r in ask(responder, query).answer[0]] == ["127.0.0.11", "127.0.0.12"]


def test_a_bug_while_rejecting_a_malformed_query_drops_it(
    responder: Responder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("rejection bug")

    monkeypatch.setattr(responder, "_rejection", broken)
    wire = dns.message.make_query("cdn.example.com", "A").to_wire()
    assert responder.respond(wire[:20], "192.0.2.1", "udp") is None
    assert "rejection bug" in caplog.text


queries = st.builds(
    lambda name, rdtype, edns, ecs_on: dns.message.make_query(
        name,
        rdtype,
        use_edns=edns,
        options=ecs("198.51.100.0", 24) if ecs_on and edns == 0 else None,
    ).to_wire(),
    st.sampled_from(
        ["cdn.example.com", "WWW.example.com", "nope.example.com", "example.com", "x.org"]
    ),
    st.sampled_from(["A", "AAAA", "TXT", "ANY", "NS", "SOA", "CNAME"]),
    st.sampled_from([-1, 0, 1]),
    st.booleans(),
)


def check_answer(query: bytes, wire: bytes | None) -> None:
    if wire is None:
        return
    assert wire[:2] == query[:2]
    answer = dns.message.from_wire(wire)
    assert answer.flags & dns.flags.QR
    assert answer.rcode() != dns.rcode.SERVFAIL  # only the bug guard answers SERVFAIL here


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600))
def test_random_bytes_never_raise(shared_responder: Responder, data: bytes) -> None:
    check_answer(data, shared_responder.respond(data, CLIENT, "udp"))


@settings(max_examples=500, deadline=None)
@given(
    query=queries,
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4),
    cut=st.integers(0, 600),
)
def test_mutated_queries_never_raise(
    shared_responder: Responder, query: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    mutated = bytearray(query)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    data = bytes(mutated[:cut] if cut < len(mutated) else mutated)
    wire = shared_responder.respond(data, CLIENT, "udp")
    if len(data) >= 12 and not data[2] & 0x80:
        assert wire is not None  # a readable header always earns an answer
    check_answer(data, wire)


@settings(max_examples=200, deadline=None)
@given(query=queries)
def test_valid_queries_get_answers_dnspython_accepts(
    shared_responder: Responder, query: bytes
) -> None:
    wire = shared_responder.respond(query, CLIENT, "udp")
    assert wire is not None
    request = dns.message.from_wire(query)
    answer = dns.message.from_wire(wire)
    assert request.is_response(answer)
    assert (answer.edns >= 0) == (request.edns >= 0)
    assert struct.unpack(">H", wire[4:6])[0] == 1


@settings(max_examples=200, deadline=None)
@given(query=queries, transport=st.sampled_from(["udp", "tcp"]), other_id=st.integers(0, 65535))
def test_shape_cache_answers_byte_for_byte_like_a_fresh_responder(
    config: RouterConfig, query: bytes, transport: Literal["udp", "tcp"], other_id: int
) -> None:
    warm = Responder(config, FakePlacer(), FakePicker(config), HotPathTallies())
    cold = Responder(config, FakePlacer(), FakePicker(config), HotPathTallies())
    warm.respond(other_id.to_bytes(2) + query[2:], CLIENT, transport)
    assert warm.respond(query, CLIENT, transport) == cold.respond(query, CLIENT, transport)


def test_fail_open_answer_is_counted_in_decisions_total(config: RouterConfig) -> None:
    # The real Selector over a fleet where no node is known up: fail-open (policy.all_down).
    metrics = RouterMetrics()
    selector = Selector(config.policy, config.regions, random.Random(1))
    Fleet(config, selector.update)
    responder = Responder(config, FakePlacer(), selector, metrics.tallies)
    response = ask(responder, dns.message.make_query("cdn.example.com", "A"))
    na = {str(n.ipv4) for n in config.nodes if n.region == "na" and n.role == "edge"}
    assert {rr.address for rrset in response.answer for rr in rrset} == na
    text = generate_latest(metrics.registry).decode()
    assert 'georouter_decisions_total{reason="fail_open",service="cdn.example.com"} 1.0' in text
    assert 'reason="geo"' not in text


class KeptPlacer(FakePlacer):
    """A FakePlacer whose placements may be kept (as Geo's): counts each reuse."""

    def __init__(self, table: dict[str, Placement] | None = None) -> None:
        super().__init__(table)
        self.reuses = 0

    def reused(self) -> None:
        self.reuses += 1


PLACES = {
    "198.51.100.0": Placement("eu", 20),
    "203.0.113.0": Placement("ap", 24),
    CLIENT: Placement("na", 16),
    "192.0.2.99": Placement("eu", 12),
}
geo_queries = st.builds(
    lambda name, rdtype, subnet, ident: (
        ident.to_bytes(2)
        + dns.message.make_query(
            name,
            rdtype,
            use_edns=0 if subnet else -1,
            options=ecs(subnet[0], subnet[1]) if subnet else None,
        ).to_wire()[2:]
    ),
    st.sampled_from(["cdn.example.com", "www.example.com", "img.example.com", "nope.example.com"]),
    st.sampled_from(["A", "A", "AAAA", "TXT"]),
    st.sampled_from([None, ("198.51.100.0", 24), ("203.0.113.0", 24), ("198.51.100.0", 16)]),
    st.integers(0, 65535),
)
fleet_events = st.sampled_from(["none", "eu-1 down", "eu-2 down", "eu up", "na-1 down"])


def _events(fleets: tuple[Fleet, Fleet], event: str, now: float) -> None:
    named = {"eu-1 down": ["edge-eu-1"], "eu-2 down": ["edge-eu-2"], "na-1 down": ["edge-na-1"]}
    names = named.get(event, ["edge-eu-1", "edge-eu-2"] if event == "eu up" else [])
    for fleet in fleets:
        for name in names:
            for at in (now, now + 0.5):  # fall and rise are 2 probes each
                fleet.apply_probe(name, event == "eu up", at)


@settings(max_examples=100, deadline=None)
@given(
    steps=st.lists(
        st.tuples(geo_queries, st.sampled_from([CLIENT, "192.0.2.99"]), fleet_events),
        min_size=1,
        max_size=30,
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_ready_geo_answers_are_the_answers_a_plain_pick_gives(
    config: RouterConfig, steps: list[tuple[bytes, str, str]], seed: int
) -> None:
    # One responder keeps each geo shape's answers per placement (a keeping placer and the
    # Selector's routes), the other places and picks every query: same fleet, same seed,
    # so every response, count and placement must agree, across snapshot changes.
    fleets, responders, placers, tallies = [], [], [], []
    for placer in (KeptPlacer(PLACES), FakePlacer(PLACES)):
        selector = Selector(config.policy, config.regions, random.Random(seed), config.services)
        fleet = Fleet(config, selector.update)
        for node in config.nodes:
            fleet.apply_probe(node.name, True, 0.0)
            fleet.apply_probe(node.name, True, 0.5)
        counts = HotPathTallies()
        fleets.append(fleet)
        placers.append(placer)
        tallies.append(counts)
        responders.append(Responder(config, placer, selector, counts))
    for now, (query, client, event) in enumerate(steps, start=1):
        for when in ("before", "after"):  # the same shape across the fleet's change
            if when == "after":
                _events((fleets[0], fleets[1]), event, float(now))
            kept, plain = (r.respond(query, client, "udp") for r in responders)
            assert kept == plain
    assert tallies[0] == tallies[1]
    kept_placer = placers[0]
    assert isinstance(kept_placer, KeptPlacer)
    assert len(kept_placer.calls) + kept_placer.reuses == len(placers[1].calls)


def test_a_kept_answer_follows_the_fleet(config: RouterConfig) -> None:
    selector = Selector(config.policy, config.regions, random.Random(3), config.services)
    fleet = Fleet(config, selector.update)
    for node in config.nodes:
        fleet.apply_probe(node.name, True, 0.0)
        fleet.apply_probe(node.name, True, 0.5)
    placer = KeptPlacer(PLACES)
    responder = Responder(config, placer, selector, HotPathTallies())
    query = dns.message.make_query(
        "cdn.example.com", "A", use_edns=0, options=ecs("198.51.100.0", 24)
    )
    eu = {"127.0.0.13", "127.0.0.14"}
    for _ in range(3):
        assert {rr.address for rr in ask(responder, query).answer[0]} == eu
    assert (len(placer.calls), placer.reuses) == (1, 2)  # placed once, then kept
    for at in (1.0, 1.5):
        fleet.apply_probe("edge-eu-1", False, at)
    answer = ask(responder, query)
    assert [rr.address for rr in answer.answer[0]] == ["127.0.0.14"]
    assert answer.answer[0].ttl == config.policy.degraded_ttl
    assert len(placer.calls) == 2  # a new snapshot: placed and routed again
