"""DnsService on real loopback sockets, queried by dnspython, kdig and dig."""

from __future__ import annotations

import asyncio
import shutil
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import dns.asyncquery
import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.update
import pytest

from cdn.config import HostPort
from georouter.config import RouterConfig
from georouter.dns_server import (
    MAX_QUEUE_AGE_S,
    MAX_UDP_QUERY_BYTES,
    UDP_BATCH,
    DnsService,
    TcpLimits,
    UdpShell,
)
from georouter.geo import Placement
from georouter.metrics import RouterMetrics, cumulative
from georouter.responder import Responder
from georouter.tallies import BucketTally
from tests.test_responder import BIG_TXT_RECORDS, FakePicker, FakePlacer, router_config

HOST = "127.0.0.1"
TIMEOUT_S = 5.0  # a generous deadline for any single exchange


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    return router_config()


DEFAULT_LIMITS = TcpLimits()


async def start_service(config: RouterConfig, limits: TcpLimits = DEFAULT_LIMITS) -> DnsService:
    placer = FakePlacer({"198.51.100.0": Placement("eu", 20)})
    metrics = RouterMetrics()
    responder = Responder(config, placer, FakePicker(config), metrics.tallies)
    service = DnsService(responder, HostPort(HOST, 0), metrics, limits)
    await service.start()
    return service


@pytest.fixture
async def service(config: RouterConfig) -> AsyncIterator[DnsService]:
    started = await start_service(config)
    yield started
    await started.stop()


async def udp(service: DnsService, query: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.udp(query, HOST, port=service.port, timeout=TIMEOUT_S)


async def tcp(service: DnsService, query: dns.message.Message) -> dns.message.Message:
    return await dns.asyncquery.tcp(query, HOST, port=service.port, timeout=TIMEOUT_S)


Exchange = Callable[[DnsService, dns.message.Message], Awaitable[dns.message.Message]]
both = pytest.mark.parametrize("exchange", [udp, tcp], ids=["udp", "tcp"])


class _Receiver(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        self.replies.put_nowait(data)


async def udp_raw(service: DnsService, data: bytes, wait_s: float = TIMEOUT_S) -> bytes | None:
    """Send raw bytes; the reply, or None if none came within `wait_s`."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Receiver, remote_addr=(HOST, service.port)
    )
    try:
        transport.sendto(data)
        async with asyncio.timeout(wait_s):
            return await protocol.replies.get()
    except TimeoutError:
        return None
    finally:
        transport.close()


async def until(condition: Callable[[], bool]) -> None:
    """Poll a condition with a deadline (no fixed sleeps as synchronisation)."""
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.01)


def sample(service: DnsService, name: str, **labels: str) -> float:
    value = service._metrics.registry.get_sample_value(name, labels)
    return value or 0.0


def framed(query: dns.message.Message) -> bytes:
    wire = query.to_wire()
    return len(wire).to_bytes(2) + wire


async def read_framed(reader: asyncio.StreamReader) -> dns.message.Message:
    length = int.from_bytes(await reader.readexactly(2))
    return dns.message.from_wire(await reader.readexactly(length))


@both
async def test_geo_answer_is_authoritative_without_ra_rfc1035_4_1_1(
    service: DnsService, exchange: Exchange
) -> None:
    query = dns.message.make_query("cdn.example.com", "A")
    answer = await exchange(service, query)
    assert answer.id == query.id
    assert answer.flags & dns.flags.AA and not answer.flags & dns.flags.RA
    assert [r.address for r in answer.answer[0]] == ["127.0.0.11", "127.0.0.12"]


@both
async def test_question_case_echoed(service: DnsService, exchange: Exchange) -> None:
    answer = await exchange(service, dns.message.make_query("CdN.eXaMpLe.CoM", "A"))
    assert answer.question[0].name.to_text() == "CdN.eXaMpLe.CoM."


@both
async def test_soa_and_ns_at_apex(service: DnsService, exchange: Exchange) -> None:
    soa = await exchange(service, dns.message.make_query("example.com", "SOA"))
    assert soa.answer[0][0].mname.to_text() == "ns1.example.com."
    ns = await exchange(service, dns.message.make_query("example.com", "NS"))
    assert [r.target.to_text() for r in ns.answer[0]] == ["ns1.example.com."]


@both
async def test_nxdomain_and_nodata_carry_soa_rfc2308_2(
    service: DnsService, exchange: Exchange
) -> None:
    nx = await exchange(service, dns.message.make_query("nope.example.com", "A"))
    assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].ttl == 60
    nodata = await exchange(service, dns.message.make_query("cdn.example.com", "MX"))
    assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
    assert nodata.authority[0].rdtype == dns.rdatatype.SOA


@both
async def test_refused_notimp_badvers(service: DnsService, exchange: Exchange) -> None:
    refused = await exchange(service, dns.message.make_query("example.org", "A"))
    assert refused.rcode() == dns.rcode.REFUSED
    notify = dns.message.make_query("example.com", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert (await exchange(service, notify)).rcode() == dns.rcode.NOTIMP
    badvers = await exchange(service, dns.message.make_query("example.com", "SOA", use_edns=1))
    assert badvers.rcode() == dns.rcode.BADVERS


@both
async def test_any_is_minimal_rfc8482(service: DnsService, exchange: Exchange) -> None:
    answer = await exchange(service, dns.message.make_query("example.com", "ANY"))
    assert len(answer.answer) == 1 and answer.answer[0][0].cpu == b"RFC8482"


@both
async def test_ecs_scope_echoed_rfc7871_7_2_1(service: DnsService, exchange: Exchange) -> None:
    option = dns.edns.ECSOption("198.51.100.0", 24)
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=[option])
    answer = await exchange(service, query)
    assert (answer.options[0].srclen, answer.options[0].scopelen) == (24, 20)
    assert [r.address for r in answer.answer[0]] == ["127.0.0.13", "127.0.0.14"]


async def test_invalid_ecs_is_formerr_rfc7871_6(service: DnsService) -> None:
    option = dns.edns.GenericOption(8, bytes.fromhex("0001 18 00 c63364ff"))
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=[option])
    answer = await udp(service, query)
    assert answer.rcode() == dns.rcode.FORMERR


@both
async def test_ecs_family_zero_gets_a_formerr_dnspython_reads_rfc7871_7_2_1(
    service: DnsService, exchange: Exchange
) -> None:
    option = dns.edns.GenericOption(8, bytes.fromhex("0000 00 00"))
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=[option])
    answer = await exchange(service, query)
    assert answer.rcode() == dns.rcode.FORMERR and not answer.options


@both
async def test_update_gets_a_notimp_dnspython_reads_rfc2136_2_3(
    service: DnsService, exchange: Exchange
) -> None:
    update = dns.update.UpdateMessage("example.com")
    update.present("www.example.com")
    update.replace("cdn.example.com", 300, "A", "192.0.2.1")
    answer = await exchange(service, update)
    assert answer.rcode() == dns.rcode.NOTIMP and answer.opcode() == dns.opcode.UPDATE
    # Opcode 5 over a question that is no zone section: the answer leaves it out.
    stray = dns.message.make_query("example.com", "A")
    stray.set_opcode(dns.opcode.UPDATE)
    answer = await exchange(service, stray)
    assert answer.rcode() == dns.rcode.NOTIMP and not answer.question


async def test_tc_over_udp_then_full_answer_over_tcp_rfc7766_8(service: DnsService) -> None:
    query = dns.message.make_query("big.example.com", "TXT", use_edns=0)
    truncated = await udp(service, query)
    assert truncated.flags & dns.flags.TC and not truncated.answer
    answer, used_tcp = await dns.asyncquery.udp_with_fallback(
        query, HOST, port=service.port, timeout=TIMEOUT_S
    )
    assert used_tcp and not answer.flags & dns.flags.TC
    assert len(answer.answer[0]) == BIG_TXT_RECORDS


async def test_malformed_datagrams_formerr_or_silence(service: DnsService) -> None:
    query = dns.message.make_query("example.com", "SOA").to_wire()
    reply = await udp_raw(service, query[:12] + b"\x07exam")
    assert reply is not None and reply[:2] == query[:2] and reply[3] & 0xF == dns.rcode.FORMERR
    # Garbage with no readable header gets no answer; the server keeps answering.
    assert await udp_raw(service, b"\xff\x00\x01", wait_s=0.2) is None
    await until(lambda: sample(service, "georouter_dns_dropped_total", reason="unanswerable") == 1)
    assert (await udp(service, dns.message.make_query("example.com", "SOA"))).answer


async def test_tcp_pipelined_queries_answered_in_order_rfc7766_6_2_1_1(
    service: DnsService,
) -> None:
    queries = [
        dns.message.make_query(name, "A")
        for name in ("cdn.example.com", "nope.example.com", "www.example.com")
    ]
    reader, writer = await asyncio.open_connection(HOST, service.port)
    try:
        writer.write(b"".join(map(framed, queries)))
        async with asyncio.timeout(TIMEOUT_S):
            answers = [await read_framed(reader) for _ in queries]
    finally:
        writer.close()
    assert [a.id for a in answers] == [q.id for q in queries]
    assert [a.rcode() for a in answers] == [
        dns.rcode.NOERROR,
        dns.rcode.NXDOMAIN,
        dns.rcode.NOERROR,
    ]


async def test_tcp_idle_connection_is_closed_rfc7766_6_2_3(config: RouterConfig) -> None:
    service = await start_service(config, TcpLimits(idle_timeout_s=0.2))
    try:
        reader, writer = await asyncio.open_connection(HOST, service.port)
        writer.write(framed(dns.message.make_query("example.com", "SOA")))
        async with asyncio.timeout(TIMEOUT_S):
            assert (await read_framed(reader)).answer
            assert await reader.read() == b""  # then, idle, the server hangs up
        writer.close()
        await until(lambda: sample(service, "georouter_dns_tcp_connections") == 0)
    finally:
        await service.stop()


async def connect(service: DnsService, source: str = HOST) -> Connection:
    return await asyncio.open_connection(HOST, service.port, local_addr=(source, 0))


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def ask_on(connection: Connection, name: str = "example.com") -> dns.message.Message:
    reader, writer = connection
    writer.write(framed(dns.message.make_query(name, "SOA")))
    async with asyncio.timeout(TIMEOUT_S):
        return await read_framed(reader)


async def closed_by_server(connection: Connection) -> bool:
    reader, _ = connection
    try:
        async with asyncio.timeout(TIMEOUT_S):
            return await reader.read() == b""
    except ConnectionError:
        return True


async def test_tcp_cap_closes_the_oldest_idle_connection_first_rfc7766_6_2_3(
    config: RouterConfig,
) -> None:
    service = await start_service(config, TcpLimits(max_connections=2))
    try:
        oldest, newer = await connect(service, "127.0.0.2"), await connect(service, "127.0.0.3")
        await ask_on(newer)
        await ask_on(oldest)  # now the most recently active of the two
        newest = await connect(service, "127.0.0.4")
        assert (await ask_on(newest)).answer
        assert await closed_by_server(newer)
        assert (await ask_on(oldest)).answer
        assert sample(service, "georouter_dns_dropped_total", reason="tcp_idle_closed") == 1
        for _, writer in (oldest, newer, newest):
            writer.close()
    finally:
        await service.stop()


async def test_tcp_cap_refuses_a_connection_when_none_is_idle(config: RouterConfig) -> None:
    service = await start_service(config, TcpLimits(max_connections=1))
    try:
        busy = await connect(service)
        busy[1].write(b"\x00\x20\x12\x34")  # half a message: not idle
        await until(lambda: sample(service, "georouter_dns_tcp_connections") == 1)
        refused = await connect(service)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await ask_on(refused)
        assert sample(service, "georouter_dns_dropped_total", reason="tcp_connection_limit") == 1
        busy[1].close()
        refused[1].close()
        await until(lambda: sample(service, "georouter_dns_tcp_connections") == 0)
        assert (await tcp(service, dns.message.make_query("example.com", "SOA"))).answer
    finally:
        await service.stop()


async def test_tcp_client_share_closes_its_own_oldest_idle_then_refuses_rfc7766_6_2_2(
    config: RouterConfig,
) -> None:
    service = await start_service(config, TcpLimits(max_connections_per_client=2))
    try:
        other = await connect(service, "127.0.0.3")
        await ask_on(other)  # idle and older than all of 127.0.0.2's
        first, second = await connect(service, "127.0.0.2"), await connect(service, "127.0.0.2")
        await ask_on(first)
        second[1].write(b"\x00\x20")  # busy
        third = await connect(service, "127.0.0.2")
        assert (await ask_on(third)).answer
        assert await closed_by_server(first)  # its own idle one, not 127.0.0.3's older one
        third[1].write(b"\x00\x20")  # busy too: now nothing of its share is idle
        fourth = await connect(service, "127.0.0.2")
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await ask_on(fourth)
        assert sample(service, "georouter_dns_dropped_total", reason="tcp_client_limit") == 1
        assert (await ask_on(other)).answer
        for _, writer in (other, first, second, third, fourth):
            writer.close()
    finally:
        await service.stop()


async def test_tcp_query_limit_per_connection(config: RouterConfig) -> None:
    service = await start_service(config, TcpLimits(max_queries_per_connection=2))
    try:
        reader, writer = await asyncio.open_connection(HOST, service.port)
        writer.write(framed(dns.message.make_query("example.com", "SOA")) * 3)
        async with asyncio.timeout(TIMEOUT_S):
            await read_framed(reader)
            await read_framed(reader)
            assert await reader.read() == b""
        writer.close()
    finally:
        await service.stop()


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x03abc", b"\x00\x00", b"\xff\xff" + b"x" * 10, b"\x00\x30" + b"\x12\x34" * 5],
    ids=["below-header", "zero", "oversize", "closed-mid-message"],
)
async def test_tcp_garbage_closes_just_that_connection(service: DnsService, garbage: bytes) -> None:
    reader, writer = await asyncio.open_connection(HOST, service.port)
    writer.write(garbage)
    writer.write_eof()
    async with asyncio.timeout(TIMEOUT_S):
        assert await reader.read() == b""
    writer.close()
    await until(lambda: sample(service, "georouter_dns_tcp_connections") == 0)
    assert (await tcp(service, dns.message.make_query("example.com", "SOA"))).answer


async def test_metrics_count_queries_and_durations(service: DnsService) -> None:
    await udp(service, dns.message.make_query("cdn.example.com", "A"))
    await tcp(service, dns.message.make_query("cdn.example.com", "A"))
    tallies = service._metrics.tallies
    assert (
        tallies.queries[("udp", "A", "NOERROR")] == 1
        and tallies.queries[("tcp", "A", "NOERROR")] == 1
    )
    for transport in ("udp", "tcp"):
        count = sample(service, "georouter_dns_query_duration_seconds_count", transport=transport)
        assert count == 1


async def test_oversized_datagram_is_dropped_and_counted(service: DnsService) -> None:
    query = dns.message.make_query("example.com", "SOA").to_wire()
    padded = query + b"\0" * (MAX_UDP_QUERY_BYTES + 1 - len(query))
    assert await udp_raw(service, padded, wait_s=0.5) is None
    assert sample(service, "georouter_dns_dropped_total", reason="oversized") == 1
    assert await udp_raw(service, query) is not None


async def test_a_burst_beyond_one_batch_is_all_answered(service: DnsService) -> None:
    """More datagrams than one readiness event drains (UDP_BATCH) are queued at once."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _Receiver, remote_addr=(HOST, service.port)
    )
    try:
        sent = set()
        for ident in range(3 * UDP_BATCH):
            query = dns.message.make_query("cdn.example.com", "A", id=ident)
            transport.sendto(query.to_wire())
            sent.add(ident)
        async with asyncio.timeout(TIMEOUT_S):
            while sent:
                sent.discard(dns.message.from_wire(await protocol.replies.get()).id)
    finally:
        transport.close()


async def test_datagrams_queued_past_the_age_limit_are_dropped(service: DnsService) -> None:
    """The kernel's receive timestamp dates each datagram; the clock is moved instead of
    waiting. No await below: the service's own reader cannot take the datagrams first."""
    skew = [MAX_QUEUE_AGE_S + 1.0]  # as if every datagram had waited that long
    tallies = RouterMetrics().tallies
    shell = UdpShell(service.udp_socket, service, tallies, clock=lambda: time.time() + skew[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.connect((HOST, service.port))
        client.settimeout(TIMEOUT_S)
        query = dns.message.make_query("example.com", "SOA").to_wire()
        for _ in range(3):
            client.send(query)
        shell.read_ready()
        assert tallies.dropped["stale"] == 3 and not sum(tallies.queries.values())
        skew[0] = 0.0
        for _ in range(3):
            client.send(query)
        shell.read_ready()
        for _ in range(3):
            assert client.recv(4096)[:2] == query[:2]
    assert tallies.dropped["stale"] == 3


def test_duration_tally_is_an_exact_prometheus_histogram() -> None:
    tally = BucketTally((1e-3, 5e-3))
    for value in (1e-3, 2e-3, 5e-3, 1.0):  # a value equal to a bound is `le` that bound
        tally.observe(value)
    assert cumulative(tally) == [("0.001", 1.0), ("0.005", 3.0), ("+Inf", 4.0)]
    assert tally.total == pytest.approx(1.008)


async def test_reload_swaps_the_responder(service: DnsService, config: RouterConfig) -> None:
    metrics = RouterMetrics()
    placer = FakePlacer({"127.0.0.1": Placement("ap", 24)})
    service.responder = Responder(config, placer, FakePicker(config), metrics.tallies)
    answer = await udp(service, dns.message.make_query("cdn.example.com", "A"))
    assert [r.address for r in answer.answer[0]] == ["127.0.0.15", "127.0.0.16"]


async def test_port_zero_binds_udp_and_tcp_to_one_port(service: DnsService) -> None:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as probe, pytest.raises(OSError):
            probe.bind((HOST, service.port))


async def run_tool(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(TIMEOUT_S * 2):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return out.decode()


kdig_missing = pytest.mark.skipif(
    shutil.which("kdig") is None, reason="kdig (knot-dnsutils) not installed"
)
dig_missing = pytest.mark.skipif(
    shutil.which("dig") is None, reason="dig (bind9-dnsutils) not installed"
)


@kdig_missing
@pytest.mark.parametrize("transport", ["+notcp", "+tcp"])
async def test_kdig_sees_ecs_scope_and_aa(service: DnsService, transport: str) -> None:
    out = await run_tool(
        "kdig",
        f"@{HOST}",
        "-p",
        str(service.port),
        transport,
        "+subnet=198.51.100.0/24",
        "cdn.example.com",
        "A",
    )
    assert "status: NOERROR" in out and " aa" in out and " ra" not in out, out
    assert "CLIENT-SUBNET: 198.51.100.0/24/20" in out, out
    assert "127.0.0.13" in out, out


@kdig_missing
async def test_kdig_nsid_and_empty_options_are_ignored_rfc6891_6_1_2(service: DnsService) -> None:
    out = await run_tool("kdig", f"@{HOST}", "-p", str(service.port), "+nsid", "example.com", "SOA")
    assert "status: NOERROR" in out and "NSID" not in out, out


@dig_missing
async def test_dig_nxdomain_with_soa_and_tcp_fallback(service: DnsService) -> None:
    base = ("dig", f"@{HOST}", "-p", str(service.port), "+norec", "+noedns")
    out = await run_tool(*base, "nope.example.com", "A")
    assert "status: NXDOMAIN" in out and "flags: qr aa;" in out, out
    assert "IN\tSOA\tns1.example.com. hostmaster.example.com." in out, out
    big = await run_tool(*base, "big.example.com", "TXT")
    assert "Truncated, retrying in TCP mode" in big and f"ANSWER: {BIG_TXT_RECORDS}" in big, big


@dig_missing
async def test_dig_subnet_zero_opt_out_answers_with_scope_zero_rfc7871_7_1_2(
    service: DnsService,
) -> None:
    out = await run_tool(
        "dig", f"@{HOST}", "-p", str(service.port), "+norec", "+subnet=0", "cdn.example.com", "A"
    )
    assert "status: NOERROR" in out and "CLIENT-SUBNET: 0.0.0.0/0/0" in out, out
    assert "127.0.0.11" in out, out
