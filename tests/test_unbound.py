"""A real recursive resolver in front of the router: unbound with ECS (RFC 7871).

unbound runs on loopback with a stub zone for example.com pointing at the router, the
subnetcache module and `send-client-subnet` naming the router, so it forwards the client's
ECS option (or, without one, its own view of the client's address, truncated to /24).
Every other name is refused: the resolver never reaches for the real root.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
import dns.rcode
import pytest
import pytest_asyncio

from cdn.config import HostPort
from cdnlab.loopback import SERVICE, SUBNETS, Cdn, free_dns_port, poll, start_cdn
from cdnlab.supervisor import ChildSpec, Supervisor
from tests.e2e import non_loopback, unbound_config, which


@dataclass(frozen=True, slots=True)
class Unbound:
    server: HostPort
    log: Path


# One CDN and one unbound serve every test here (each test only queries).
pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cdn(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cdn]:
    async with start_cdn(tmp_path_factory.mktemp("cdn")) as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def unbound(tmp_path_factory: pytest.TempPathFactory, cdn: Cdn) -> AsyncIterator[Unbound]:
    tmp_path = tmp_path_factory.mktemp("unbound")
    binary, checkconf = which("unbound"), which("unbound-checkconf")
    if binary is None or checkconf is None:
        pytest.skip("unbound not installed (Debian package unbound; `make test` installs it)")
    workdir = tmp_path
    server = HostPort("127.0.0.1", free_dns_port("127.0.0.1"))
    conf = workdir / "unbound.conf"
    conf.write_text(unbound_config(workdir, server.port, cdn.dns))
    check = subprocess.run([checkconf, str(conf)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    supervisor = Supervisor(workdir)
    await supervisor.start(ChildSpec("unbound", (binary, "-d", "-c", str(conf)), None))
    try:
        await poll(lambda: query(server, None), lambda r: bool(r.answer), 10, "unbound answers")
        yield Unbound(server, workdir / "unbound.log")
    finally:
        await supervisor.stop_all()


async def query(server: HostPort, subnet: str | None, name: str = SERVICE) -> dns.message.Message:
    options = [] if subnet is None else [dns.edns.ECSOption.from_text(subnet)]
    request = dns.message.make_query(name, "A", use_edns=0, options=options)
    return await dns.asyncquery.udp(request, server.host, port=server.port, timeout=2.0)


def addresses(response: dns.message.Message) -> set[str]:
    return {rdata.address for rrset in response.answer for rdata in rrset if rdata.rdtype == 1}


def ecs(response: dns.message.Message) -> dns.edns.ECSOption | None:
    return next((o for o in response.options if isinstance(o, dns.edns.ECSOption)), None)


@pytest.mark.parametrize("region", ["eu", "na", "ap"])
async def test_client_subnet_reaches_the_router_through_unbound_rfc7871_7_1(
    unbound: Unbound, cdn: Cdn, region: str
) -> None:
    response = await query(unbound.server, SUBNETS[region])
    assert response.rcode() == dns.rcode.NOERROR
    assert addresses(response) and addresses(response) <= cdn.ips(region)
    option = ecs(response)
    assert option is not None and option.srclen == 24  # RFC 7871 §7.2.1: source echoed back


async def test_each_subnet_gets_its_own_cached_answer_rfc7871_7_3(
    unbound: Unbound, cdn: Cdn
) -> None:
    """Answers scoped to a subnet are not served to clients in another one."""
    for _ in range(2):  # the second round comes from unbound's subnet cache
        for region, subnet in SUBNETS.items():
            assert addresses(await query(unbound.server, subnet)) <= cdn.ips(region)


async def test_without_ecs_unbound_sends_the_client_address_and_loopback_is_default_region(
    unbound: Unbound, cdn: Cdn
) -> None:
    # The client is 127.0.0.1: unbound forwards 127.0.0.0/24, which the router places in
    # the default region (policy.default_region = "na": private and loopback addresses).
    assert addresses(await query(unbound.server, None)) <= cdn.ips("na")


async def test_names_outside_the_stub_zone_are_refused_never_recursed(unbound: Unbound) -> None:
    for name in ("example.org.", "www.google.com.", "."):
        response = await query(unbound.server, None, name)
        assert response.rcode() == dns.rcode.REFUSED


async def test_unbound_only_ever_queried_loopback(unbound: Unbound, cdn: Cdn) -> None:
    """Its own log (verbosity 4) names every upstream it sent to: only the router."""
    await query(unbound.server, SUBNETS["eu"], "img.example.com")
    await query(unbound.server, None, "www.google.com.")
    log = unbound.log.read_text()
    targets = set(re.findall(r"sending to target: <[^>]*> ([^#\s]+)#", log))
    assert targets == {cdn.dns.host}
    assert non_loopback(targets) == []
    assert "priming" not in log.lower()
