"""router.dns_listen as a list: one router answering on IPv4 and IPv6 loopback at once,
over UDP and TCP (RFC 7766), with the main process or with DNS workers, checked with
dnspython; and the --dns flag, one address or several."""

from __future__ import annotations

import os
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
import dns.rdatatype
import pytest

from cdn.config import HostPort, parse_host_port
from tests.test_router_e2e import EU, running_router
from tests.test_workers import children

V4_V6 = 'dns_listen = ["127.0.0.1:0", "[::1]:0"]'


def listen_both(text: str) -> str:
    return text.replace('dns_listen = "127.0.0.1:5300"', V4_V6, 1)


async def a_records(where: HostPort, *, tcp: bool) -> set[str]:
    ecs = dns.edns.ECSOption("185.60.216.0", 24)  # an Irish resolver: the eu edges
    query = dns.message.make_query("cdn.example.com", "A", use_edns=0, options=[ecs])
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    response = await send(query, where.host, port=where.port, timeout=2.0)
    return {
        rr.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
    }


@pytest.mark.parametrize("workers", [1, 2])
async def test_one_router_answers_on_ipv4_and_ipv6_over_udp_and_tcp(
    tmp_path: Path, workers: int
) -> None:
    settings = f"dns_workers = {workers}"
    async with running_router(
        tmp_path, router_settings=settings, dns=None, edit=listen_both
    ) as router:
        addresses = [parse_host_port(text) for text in router.dns_listening]
        assert [a.host for a in addresses] == ["127.0.0.1", "::1"]
        assert addresses[0].port and addresses[1].port  # each bound to a port of its own
        for where in addresses:
            for tcp in (False, True):
                assert await a_records(where, tcp=tcp) == EU, (where, tcp)


async def test_a_worker_reads_every_address_on_one_thread(tmp_path: Path) -> None:
    """Two addresses, two workers: both answered, and each worker has two threads (its
    reader and the one following main). A reader thread per socket shared the worker's
    guard, rate limiter, caches and tallies, which are not thread-safe."""
    async with running_router(
        tmp_path, router_settings="dns_workers = 2", dns=None, edit=listen_both
    ) as router:
        for where in [parse_host_port(text) for text in router.dns_listening]:
            for _ in range(10):
                assert await a_records(where, tcp=False) == EU, where
        workers = children(router.process.pid)
        assert len(workers) == 2
        assert [len(os.listdir(f"/proc/{pid}/task")) for pid in workers] == [2, 2]


async def test_the_dns_flag_takes_several_addresses(tmp_path: Path) -> None:
    async with running_router(tmp_path, dns="[::1]:0,127.0.0.1:0") as router:
        addresses = [parse_host_port(text) for text in router.dns_listening]
        assert [a.host for a in addresses] == ["::1", "127.0.0.1"]
        for where in addresses:
            assert await a_records(where, tcp=False) == EU


async def test_a_lone_ipv6_wildcard_also_answers_ipv4(tmp_path: Path) -> None:
    """ "[::]:PORT" alone is dual-stack (IPV6_V6ONLY off, RFC 3493 §5.3), as before the
    option was set on every IPv6 socket: a config listing only it kept serving IPv4."""
    async with running_router(tmp_path, dns="[::]:0") as router:
        (where,) = [parse_host_port(text) for text in router.dns_listening]
        for tcp in (False, True):
            assert await a_records(HostPort("127.0.0.1", where.port), tcp=tcp) == EU, tcp
