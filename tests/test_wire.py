"""Query parsing: the fast path, the dnslib fallback, and external oracles for both."""

from __future__ import annotations

import struct
from ipaddress import ip_network

import dns.edns
import dns.message
import dns.name
import pytest
from dnslib import DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from georouter.wire import (
    MAX_EDNS_OPTIONS,
    MAX_POINTER_JUMPS,
    ClientSubnet,
    Edns,
    MalformedQuery,
    Query,
    encode_opt,
    name_to_wire,
    parse,
    parse_common,
    parse_full,
    read_name,
)

labels = st.binary(min_size=1, max_size=63)
ascii_labels = st.text("abcXYZ019-_", min_size=1, max_size=20).map(str.encode)


def wire_name(parts: list[bytes]) -> bytes:
    return b"".join(bytes((len(p),)) + p for p in parts) + b"\0"


def labels_of(name: bytes) -> list[bytes]:
    found, pos = [], 0
    while name[pos]:
        found.append(name[pos + 1 : pos + 1 + name[pos]])
        pos += name[pos] + 1
    return found


def is_utf8(label: bytes) -> bool:
    try:
        label.decode()
    except UnicodeDecodeError:
        return False
    return True


def opt_record(payload: int, version: int, flags: int, options: bytes) -> bytes:
    ttl = (version << 16) | flags
    return b"\0" + struct.pack(">HHIH", 41, payload, ttl, len(options)) + options


def ecs_option(family: int, source: int, address: bytes) -> bytes:
    body = struct.pack(">HBB", family, source, 0) + address
    return struct.pack(">HH", 8, len(body)) + body


@st.composite
def subnets(draw: st.DrawFn) -> bytes:
    family = draw(st.sampled_from([1, 2]))
    source = draw(st.integers(0, 32 if family == 1 else 128))
    raw = draw(st.binary(min_size=(source + 7) // 8, max_size=(source + 7) // 8))
    if source % 8 and raw:
        raw = raw[:-1] + bytes((raw[-1] & (0xFF << (8 - source % 8)) & 0xFF,))
    return ecs_option(family, source, raw)


@st.composite
def common_queries(draw: st.DrawFn) -> bytes:
    """Queries of the shape the fast path takes: some valid, some with broken options."""
    parts = draw(st.lists(st.one_of(ascii_labels, labels), max_size=5))
    name = wire_name(parts)
    flags = draw(st.integers(0, 0x7FFF))  # QR clear
    qtype, qclass = draw(st.integers(0, 65535)), draw(st.sampled_from([1, 3, 255, 4242]))
    question = name + struct.pack(">HH", qtype, qclass)
    opt = b""
    if draw(st.booleans()):
        options = draw(
            st.lists(
                st.one_of(
                    subnets(),
                    st.binary(max_size=12).map(lambda d: struct.pack(">HH", 10, len(d)) + d),
                    st.binary(max_size=9),  # damage: a truncated or bogus option
                ),
                max_size=3,
            )
        )
        opt = opt_record(
            draw(st.integers(0, 65535)),
            draw(st.sampled_from([0, 0, 1])),
            draw(st.sampled_from([0, 0x8000])),
            b"".join(options),
        )
    header = struct.pack(">HHHHHH", draw(st.integers(0, 65535)), flags, 1, 0, 0, 1 if opt else 0)
    return header + question + opt


def outcome(parser: object, data: bytes) -> Query | str:
    try:
        result = parser(data)  # type: ignore[operator]
    except MalformedQuery as exc:
        return f"malformed {exc.flags is not None}"
    assert isinstance(result, Query)
    return result


@settings(max_examples=600, deadline=None)
@given(common_queries())
def test_fast_and_full_parse_agree_when_both_accept(data: bytes) -> None:
    fast = outcome(parse_common, data)
    if fast is None:
        return  # the fast path declined this one
    full = outcome(parse_full, data)
    if isinstance(fast, Query) and isinstance(full, str):
        # dnslib refuses labels that are not UTF-8; DNS allows any octets (RFC 2181 §11).
        assert not all(map(is_utf8, labels_of(fast.name)))
    else:
        assert fast == full


@settings(max_examples=500, deadline=None)
@given(common_queries())
def test_dnslib_reads_what_the_fast_path_accepts(data: bytes) -> None:
    try:
        query = parse_common(data)
        record = DNSRecord.parse(data)
    except Exception:
        return  # either side refusing is fine here: agreement is asserted on acceptance
    if query is None:
        return
    question = record.questions[0]
    labels_lower = tuple(label.lower() for label in question.qname.label)
    assert wire_name(list(labels_lower)) == query.name
    assert (question.qtype, question.qclass, record.header.id) == (
        query.qtype,
        query.qclass,
        query.id,
    )
    opts = [rr for rr in record.ar if rr.rtype == 41]
    assert (query.edns is not None) == bool(opts)
    if query.edns is not None:
        assert query.edns.payload == opts[0].rclass
        assert query.edns.version == (opts[0].ttl >> 16) & 0xFF
        assert query.edns.dnssec_ok == bool(opts[0].ttl & 0x8000)


@settings(max_examples=300, deadline=None)
@given(
    name=st.lists(st.text("abcdefXYZ0123456789-", min_size=1, max_size=30), min_size=1, max_size=4),
    rdtype=st.sampled_from(["A", "AAAA", "TXT", "ANY", "SOA", "HTTPS"]),
    use_edns=st.sampled_from([-1, 0]),
    payload=st.integers(512, 65535),
    subnet=st.one_of(
        st.none(), st.tuples(st.sampled_from(["198.51.100.0", "2001:db8::"]), st.integers(0, 32))
    ),
)
def test_dnspython_queries_parse_to_their_fields(
    name: list[str], rdtype: str, use_edns: int, payload: int, subnet: tuple[str, int] | None
) -> None:
    options = [dns.edns.ECSOption(subnet[0], subnet[1])] if subnet and use_edns == 0 else None
    query = dns.message.make_query(
        ".".join(name), rdtype, use_edns=use_edns, payload=payload, options=options
    )
    parsed = parse(query.to_wire())
    assert parsed.id == query.id and parsed.qtype == query.question[0].rdtype
    assert parsed.name == query.question[0].name.canonicalize().to_wire()
    assert parsed.question[:-4] == query.question[0].name.to_wire()
    if use_edns < 0:
        assert parsed.edns is None
        return
    assert parsed.edns is not None and parsed.edns.payload == payload
    if options is None:
        assert parsed.edns.subnet is None
        return
    ecs = options[0]
    assert parsed.edns.subnet is not None
    network = ip_network(f"{ecs.address}/{ecs.srclen}", strict=False)
    assert parsed.edns.subnet.address_text == str(network.network_address)
    assert parsed.edns.subnet.echo(7)[4:7] == struct.pack(">HB", ecs.family, ecs.srclen)


def test_common_query_takes_the_fast_path() -> None:
    wire = dns.message.make_query("cdn.example.com", "A", use_edns=0).to_wire()
    assert parse_common(wire) == parse_full(wire) == parse(wire)
    assert parse(wire).edns == Edns(1232, 0, False)


def test_compressed_records_take_the_full_path() -> None:
    """An extra record whose owner points at the question name (offset 12)."""
    base = dns.message.make_query("Cdn.example.com", "A").to_wire()
    extra = b"\xc0\x0c" + struct.pack(">HHIH", 16, 1, 0, 2) + b"\x01x"
    wire = base[:10] + b"\0\1" + base[12:] + extra
    assert parse_common(wire) is None
    query = parse(wire)
    assert query.question == base[12:] and query.name == name_to_wire("cdn.example.com.")


def test_compressed_opt_owner_is_read_by_the_full_path_rfc1035_4_1_4() -> None:
    """The OPT's owner as a pointer back to the question name's root octet."""
    base = dns.message.make_query("cdn.example.com", "A").to_wire()
    root = 12 + len(name_to_wire("cdn.example.com.")) - 1
    opt = struct.pack(">H", 0xC000 | root) + opt_record(4096, 0, 0x8000, b"")[1:]
    wire = base[:10] + b"\0\1" + base[12:] + opt
    assert parse_common(wire) is None
    assert parse(wire).edns == Edns(4096, 0, True)


def crafted_flood_packet() -> bytes:
    """Issue 10's packet: ~290 additional records whose owners chain back through pointers."""
    q = b"\x03cdn\x07example\x03com\x00\x00\x01\x00\x01"
    body, prev, n = b"", 12, 0
    while 12 + len(q) + len(body) + 14 <= 4096:
        off = 12 + len(q) + len(body)
        body += b"\x01a" + struct.pack(">H", 0xC000 | prev) + struct.pack(">HHIH", 1, 1, 0, 0)
        prev, n = off, n + 1
    return struct.pack(">6H", 1, 0x100, 1, 0, 0, n) + q + body


@pytest.mark.parametrize(
    "counts", [(1, 0, 0), (0, 1, 0), (0, 0, 2), (0, 0, 290)], ids=["an", "ns", "ar2", "ar290"]
)
def test_records_a_query_never_has_are_malformed_before_reading_them_rfc6891_6_1_1(
    counts: tuple[int, int, int],
) -> None:
    """Judged from the header: the question is echoed, no record is read."""
    packet = crafted_flood_packet()
    wire = packet[:6] + struct.pack(">3H", *counts) + packet[12:]
    problem = malformed(wire)
    assert problem.flags == 0x100 and problem.question == packet[12:33]


def test_issue_10_flood_packet_is_malformed() -> None:
    assert malformed(crafted_flood_packet()).question[:4] == b"\x03cdn"


def query_with_record(owner: bytes, rtype: int = 16) -> bytes:
    base = dns.message.make_query("example.com", "A").to_wire()
    return base[:10] + b"\0\1" + base[12:] + owner + struct.pack(">HHIH", rtype, 1, 0, 0)


def test_record_of_another_type_is_ignored() -> None:
    """A TSIG or SIG(0) we do not implement is not read further (its owner compressed)."""
    assert parse(query_with_record(b"\x01k\xc0\x0c", rtype=250)).name == name_to_wire(
        "example.com."
    )


@pytest.mark.parametrize(
    "owner",
    [
        b"\xc0\x1d",  # forward: at the owner itself
        b"\xc0\x05",  # into the header
        b"\x01a\xc0\x1d",  # back to its own first label: a loop
        b"\x40",  # an extended label type (RFC 6891 §5)
        b"\xc0",  # cut short
    ],
    ids=["forward", "header", "loop", "extended", "truncated"],
)
def test_bad_compression_pointers_are_malformed_rfc1035_4_1_4(owner: bytes) -> None:
    assert malformed(query_with_record(owner)).flags is not None


def pointer_chain(jumps: int) -> tuple[bytes, int]:
    """A name "a." at offset 12, then `jumps` pointers, each to the one before."""
    data, target = bytes(12) + b"\x01a\0", 12
    for _ in range(jumps):
        data, target = data + struct.pack(">H", 0xC000 | target), len(data)
    return data, target


def test_pointer_jumps_are_bounded() -> None:
    data, last = pointer_chain(MAX_POINTER_JUMPS)
    assert read_name(data, last) == (b"\x01a\0", last + 2)
    data, last = pointer_chain(MAX_POINTER_JUMPS + 1)
    with pytest.raises(ValueError, match="too many"):
        read_name(data, last)


def test_too_many_edns_options_are_malformed() -> None:
    base = dns.message.make_query("example.com", "A").to_wire()
    empty = struct.pack(">HH", 10, 0)
    for count, ok in ((MAX_EDNS_OPTIONS, True), (MAX_EDNS_OPTIONS + 1, False)):
        wire = base[:10] + b"\0\1" + base[12:] + opt_record(1232, 0, 0, empty * count)
        if ok:
            assert parse(wire).edns == Edns(1232, 0, False)
        else:
            assert malformed(wire).edns == Edns(1232, 0, False)


def test_ecs_family_zero_is_malformed_rfc7871_7_2_1() -> None:
    """FAMILY 0 is reserved (RFC 7871 §6: IANA address families); §7.1.2 has stubs opt out
    with FAMILY 1 or 2 and SOURCE 0, which is accepted."""
    base = dns.message.make_query("example.com", "A").to_wire()
    for family, ok in ((0, False), (1, True), (2, True)):
        wire = base[:10] + b"\0\1" + base[12:] + opt_record(1232, 0, 0, ecs_option(family, 0, b""))
        if ok:
            assert parse(wire).edns == Edns(1232, 0, False, ClientSubnet(family, 0, b""))
        else:
            assert malformed(wire).edns == Edns(1232, 0, False)


def malformed(data: bytes) -> MalformedQuery:
    with pytest.raises(MalformedQuery) as info:
        parse(data)
    return info.value


def test_response_and_short_header_get_no_answer_rfc1035_4_1_1() -> None:
    wire = dns.message.make_query("example.com", "A").to_wire()
    assert malformed(wire[:11]).flags is None
    assert malformed(wire[:2] + bytes((wire[2] | 0x80,)) + wire[3:]).flags is None


def test_trailing_bytes_are_malformed() -> None:
    wire = dns.message.make_query("example.com", "A").to_wire()
    problem = malformed(wire + b"\0")
    assert problem.flags is not None and problem.question == wire[12:]


def test_label_over_63_octets_is_malformed_rfc1035_2_3_4() -> None:
    header = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
    # 0x40 is an extended label type, not a length; dnslib alone would read 64 octets.
    assert malformed(header + b"\x40" + b"a" * 64 + b"\0\0\1\0\1").flags is not None


def test_name_over_255_octets_is_malformed_rfc1035_2_3_4() -> None:
    header = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
    name = wire_name([b"a" * 63] * 4)  # 257 octets
    assert malformed(header + name + b"\0\1\0\1").flags is not None


def test_pointer_loop_is_malformed() -> None:
    header = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0)
    assert malformed(header + b"\xc0\x0c\0\1\0\1").flags is not None


def test_opt_not_owned_by_root_is_malformed_rfc6891_6_1_2() -> None:
    base = dns.message.make_query("example.com", "A").to_wire()
    opt = b"\x01a\0" + opt_record(512, 0, 0, b"")[1:]
    problem = malformed(base[:10] + b"\0\1" + base[12:] + opt)
    assert problem.question == base[12:]


def test_opt_outside_the_additional_section_is_malformed_rfc6891_6_1_1() -> None:
    base = dns.message.make_query("example.com", "A").to_wire()
    wire = base[:6] + b"\0\1" + base[8:] + opt_record(512, 0, 0, b"")
    assert malformed(wire).flags is not None


def test_truncated_option_is_malformed_but_keeps_the_opt_rfc6891_6_1_2() -> None:
    base = dns.message.make_query("example.com", "A").to_wire()
    problem = malformed(base[:10] + b"\0\1" + base[12:] + opt_record(1232, 0, 0, b"\0\x0a\0\x08ab"))
    assert problem.edns == Edns(1232, 0, False)


def test_two_ecs_options_are_malformed() -> None:
    base = dns.message.make_query("example.com", "A").to_wire()
    option = ecs_option(1, 8, b"\x0a")
    assert malformed(base[:10] + b"\0\1" + base[12:] + opt_record(1232, 0, 0, option * 2))


def test_options_ignored_under_an_unknown_version_rfc6891_6_1_3() -> None:
    base = dns.message.make_query("example.com", "A").to_wire()
    wire = base[:10] + b"\0\1" + base[12:] + opt_record(1232, 1, 0, b"\0\x08\0\1x")
    assert parse(wire).edns == Edns(1232, 1, False)


@pytest.mark.parametrize(
    ("family", "source", "address", "text"),
    [(1, 24, b"\xc6\x33\x64", "198.51.100.0"), (2, 33, b"\x20\x01\x0d\xb8\x80", "2001:db8:8000::")],
)
def test_client_subnet_address_text_and_echo_rfc7871_6(
    family: int, source: int, address: bytes, text: str
) -> None:
    subnet = ClientSubnet(family, source, address)
    assert subnet.address_text == text
    echo = subnet.echo(20)
    assert echo == struct.pack(">HHHBB", 8, 4 + len(address), family, source, 20) + address


def test_extended_rcode_goes_in_the_opt_rfc6891_6_1_3() -> None:
    opt = encode_opt(1232, 16, True)
    assert opt == b"\0" + struct.pack(">HHBBHH", 41, 1232, 1, 0, 0x8000, 0)


def test_name_to_wire_folds_case() -> None:
    assert name_to_wire("Cdn.Example.com.") == b"\3cdn\7example\3com\0"
    assert name_to_wire(".") == b"\0"
    assert dns.name.from_wire(name_to_wire("a.b."), 0)[0].to_text() == "a.b."


name_pieces = st.lists(
    st.one_of(
        labels.map(lambda label: bytes((len(label),)) + label),
        st.integers(0, 80).map(lambda target: struct.pack(">H", 0xC000 | target)),
        st.just(b"\0"),
        st.binary(max_size=3),
    ),
    max_size=40,
).map(b"".join)


@settings(max_examples=800, deadline=None)
@given(body=name_pieces, target=st.integers(0, 200))
def test_read_name_agrees_with_dnspython_rfc1035_4_1_4(body: bytes, target: int) -> None:
    """Labels, pointers and damage, read from a final pointer into them: read_name either
    refuses (ValueError) or reads what dnspython reads, which also allows only pointers
    below every offset already visited."""
    data = bytes(12) + body
    start = len(data)
    data += struct.pack(">H", 0xC000 | (12 + target % max(1, len(body))))
    try:
        name, end = read_name(data, start)
    except ValueError:
        return
    theirs, used = dns.name.from_wire(data, start)
    assert name == theirs.to_wire() and end == start + used and len(name) <= 255
