"""Response rate limiting and DNS cookies in a real `georouter serve`, real clients.

A flood is 2,000 identical queries sent from one socket as fast as it can, then replies
are read until none comes for a while: answered, slipped (TC=1, or BADCOOKIE with a client
cookie) and dropped are counted. BIND's system test (`bin/tests/system/rrl`) and Knot's
(`tests-extra/tests/modules/rrl`) count the same three.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.test_router_e2e import RouterProcess, _metrics, poll, running_router

FLOOD = 2000
RATE = 5
QUIET_S = 1.0  # no reply for this long: the flood's replies are all in
RRL = f"\n[rrl]\nresponses_per_second = {RATE}\nslip = 2\n"
NX_NAME = "no-such-name.cdn.example.com"


@dataclass
class Tally:
    answered: int = 0
    slipped: int = 0
    badcookie: int = 0
    query_bytes: int = 0
    reply_bytes: int = 0

    @property
    def dropped(self) -> int:
        return FLOOD - self.answered - self.slipped - self.badcookie


def flood(port: int, query: dns.message.Message, count: int = FLOOD) -> Tally:
    """Send `count` copies (distinct IDs) from one socket, then read every reply."""
    tally = Tally()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.connect(("127.0.0.1", port))
        for ident in range(count):
            query.id = ident
            wire = query.to_wire()
            tally.query_bytes += len(wire)
            sock.send(wire)
        sock.settimeout(QUIET_S)
        try:
            while True:
                data = sock.recv(65535)
                tally.reply_bytes += len(data)
                reply = dns.message.from_wire(data)
                if reply.rcode() == dns.rcode.BADCOOKIE:
                    tally.badcookie += 1
                elif reply.flags & dns.flags.TC:
                    tally.slipped += 1
                else:
                    tally.answered += 1
        except TimeoutError:
            pass
    return tally


def cookie_of(message: dns.message.Message) -> bytes:
    options = [o for o in message.options if o.otype == dns.edns.COOKIE]
    assert options, "no COOKIE option"
    option = options[0]
    return bytes(option.client) + bytes(option.server)


def with_cookie(name: str, cookie: bytes) -> dns.message.Message:
    option = dns.edns.GenericOption(dns.edns.COOKIE, cookie)
    return dns.message.make_query(name, "A", use_edns=0, options=[option])


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[RouterProcess]:
    async with running_router(tmp_path, RRL) as rp:
        yield rp


async def metric(rp: RouterProcess, pattern: str) -> float:
    found = re.findall(pattern, await _metrics(rp))
    return sum(float(n) for n in found)


async def test_a_flood_is_dropped_and_slipped_and_amplifies_less_than_1(
    limited: RouterProcess,
) -> None:
    query = dns.message.make_query(NX_NAME, "A", use_edns=0)
    tally = flood(limited.dns_port, query)
    limited_count = tally.slipped + tally.dropped
    assert tally.answered <= 3 * RATE + 10, tally  # the burst, plus what the seconds earn
    # slip = 2: every second limited answer is truncated (one worker: exact, but for loss)
    assert abs(tally.slipped - limited_count / 2) <= 0.05 * FLOOD, tally
    assert tally.reply_bytes / tally.query_bytes <= 1.0, tally  # the goal
    drops = r'georouter_rrl_limited_total\{action="dropped",ecs="no",reason="nxdomain"\} (\S+)'
    slips = r'georouter_rrl_limited_total\{action="slipped",ecs="no",reason="nxdomain"\} (\S+)'

    async def counted() -> bool:
        return await metric(limited, drops) + await metric(limited, slips) >= limited_count

    await poll(counted)
    # TCP is never limited: the same name in the same second is answered in full
    tcp = dns.query.tcp(query, "127.0.0.1", port=limited.dns_port, timeout=2.0)
    assert tcp.rcode() == dns.rcode.NXDOMAIN and not tcp.flags & dns.flags.TC


async def test_ecs_queries_are_counted_apart(limited: RouterProcess) -> None:
    ecs = dns.edns.ECSOption("185.60.216.0", 24)
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=[ecs])
    tally = flood(limited.dns_port, query, 200)
    pattern = r'georouter_rrl_limited_total\{action="\w+",ecs="yes",reason="answer"\} (\S+)'

    async def counted() -> bool:
        return await metric(limited, pattern) >= 200 - tally.answered - 5

    await poll(counted)


async def test_a_valid_server_cookie_exempts_from_rrl_rfc7873(limited: RouterProcess) -> None:
    first = dns.query.udp(
        with_cookie("cdn.example.com", bytes.fromhex("0102030405060708")),
        "127.0.0.1", port=limited.dns_port, timeout=2.0,
    )  # fmt: skip
    cookie = cookie_of(first)
    assert len(cookie) == 24 and cookie[8] == 1  # RFC 9018 version 1
    tally = flood(limited.dns_port, with_cookie("cdn.example.com", cookie), 300)
    assert tally.answered == 300, tally
    # A client cookie alone is limited, and slips as BADCOOKIE with a server cookie (BIND)
    only_client = flood(limited.dns_port, with_cookie("x.cdn.example.com", cookie[:8]), 300)
    assert only_client.answered <= 3 * RATE + 10 and only_client.badcookie > 100, only_client


async def test_cookies_are_echoed_and_judged_rfc7873_5_2(tmp_path: Path) -> None:
    async with running_router(tmp_path) as rp:  # cookies are on without any table
        port = rp.dns_port
        client = bytes.fromhex("1112131415161718")
        reply = dns.query.udp(with_cookie("cdn.example.com", client), "127.0.0.1", port=port)
        assert reply.answer and cookie_of(reply)[:8] == client
        # a server cookie we did not make: answered normally with a fresh one (§5.2.4)
        forged = client + bytes.fromhex("01000000") + bytes(12)
        again = dns.query.udp(with_cookie("cdn.example.com", forged), "127.0.0.1", port=port)
        assert again.answer and cookie_of(again) == cookie_of(reply)[:12] + cookie_of(again)[12:]
        assert cookie_of(again) != forged
        # a malformed COOKIE option: FORMERR (§5.2.2)
        bad = dns.query.udp(with_cookie("cdn.example.com", b"short"), "127.0.0.1", port=port)
        assert bad.rcode() == dns.rcode.FORMERR
        # two clients with different cookies never get each other's (the shape cache)
        other = bytes.fromhex("2122232425262728")
        theirs = dns.query.udp(with_cookie("cdn.example.com", other), "127.0.0.1", port=port)
        assert cookie_of(theirs)[:8] == other
        tcp = dns.query.tcp(with_cookie("cdn.example.com", client), "127.0.0.1", port=port)
        assert cookie_of(tcp)[:8] == client
        outcomes = r'georouter_dns_cookies_total\{outcome="(?:client_only|bad|malformed)"\} (\S+)'

        async def counted() -> bool:
            return await metric(rp, outcomes) >= 5

        await poll(counted)
        assert any("event=cookie_secret source=random" in line for line in rp.log)


@pytest.mark.parametrize("tool", ["dig", "kdig"])
async def test_dig_and_kdig_get_a_server_cookie(limited: RouterProcess, tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed")
    args = [tool, "@127.0.0.1", "-p", str(limited.dns_port), "cdn.example.com", "A", "+cookie"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=True).stdout
    assert re.search(r"COOKIE: *[0-9a-f]{16} *[0-9a-f]{32}", out, re.IGNORECASE), out


async def test_two_workers_hold_one_limit(tmp_path: Path) -> None:
    async with running_router(tmp_path, "dns_workers = 2\n" + RRL) as rp:
        tally = flood(rp.dns_port, dns.message.make_query(NX_NAME, "A", use_edns=0))
        # each worker answers 1/2 of the rate: together the limit, never twice it
        assert tally.answered <= 3 * RATE + 10, tally
        assert tally.slipped >= FLOOD / 4, tally


async def test_log_only_counts_but_answers(tmp_path: Path) -> None:
    async with running_router(tmp_path, RRL + "log_only = true\n") as rp:
        tally = flood(rp.dns_port, dns.message.make_query(NX_NAME, "A", use_edns=0), 300)
        assert tally.answered == 300, tally
        pattern = (
            r'georouter_rrl_limited_total\{action="log_only",ecs="no",reason="nxdomain"\} (\S+)'
        )

        async def counted() -> bool:
            return await metric(rp, pattern) >= 300 - 3 * RATE - 10

        await poll(counted)
