"""The running router with the generated GeoIP database, queried by kdig and dig (UDP and TCP).

No edge runs, so every node is unknown and the router fails open with the client region's
configured nodes: the answer shows the placement. Each network of tests/geoip_fixture.py is
asked for with an ECS option (RFC 7871 §6) and must come back with its region's nodes and a
SCOPE PREFIX-LENGTH equal to the database network's prefix (§7.2.1).
"""

from __future__ import annotations

import re
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import ip_network

import pytest

from georouter.config import DEFAULT_CONFIG, load_config
from tests.geoip_fixture import TEST_NETWORKS, TestNetwork, write_test_geoip

CONFIG = load_config(DEFAULT_CONFIG)
REGION_NODES = {
    region.name: {str(n.ipv4) for n in CONFIG.nodes if n.region == region.name and n.role == "edge"}
    for region in CONFIG.regions
}
START_DEADLINE_S = 15.0
CLIENTS = [c for c in ("kdig", "dig") if shutil.which(c)]


@pytest.fixture(scope="module")
def dns_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    database = write_test_geoip(tmp_path_factory.mktemp("geoip") / "test-city.mmdb")
    command = [sys.executable, "-m", "georouter", "serve", "--geoip", str(database)]
    command += ["--dns", "127.0.0.1:0", "--control", "127.0.0.1:0"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        yield _listening_port(process)
    finally:
        process.terminate()
        process.wait(timeout=10)


def _listening_port(process: subprocess.Popen[str]) -> int:
    assert process.stderr is not None
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
        line = process.stderr.readline() if ready else ""
        match = re.search(r"event=listening dns=127\.0\.0\.1:(\d+)", line)
        if match:
            return int(match.group(1))
        if not line and process.poll() is not None:
            break
    pytest.fail("georouter serve did not report event=listening")


def _ask(client: str, port: int, subnet: str, tcp: bool) -> tuple[set[str], int]:
    """The A records and the ECS scope of one answer, read from the client's own output."""
    args = [client, "@127.0.0.1", "-p", str(port), "cdn.example.com", "A", f"+subnet={subnet}"]
    retries = "+retry=0" if client == "kdig" else "+tries=1"  # the two spell it differently
    args += ["+tcp" if tcp else "+notcp", "+norecurse", "+time=2", retries]
    out = subprocess.run(args, capture_output=True, text=True, timeout=10, check=True).stdout
    addresses = set(re.findall(r"^cdn\.example\.com\.\s+\d+\s+IN\s+A\s+(\S+)$", out, re.M))
    scope = re.search(r"CLIENT-SUBNET: [0-9a-f.:]+/\d+/(\d+)", out)
    assert scope, f"no ECS option in the answer:\n{out}"
    return addresses, int(scope.group(1))


@pytest.mark.skipif(
    not CLIENTS, reason="neither kdig nor dig is installed (make test installs them)"
)
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
@pytest.mark.parametrize("net", TEST_NETWORKS, ids=lambda n: n.network)
def test_generated_database_places_each_network_rfc7871_7_2_1(
    dns_port: int, client: str, tcp: bool, net: TestNetwork
) -> None:
    network = ip_network(net.network)
    source = max(24, network.prefixlen)  # the usual /24, longer for networks inside a /24
    addresses, scope = _ask(client, dns_port, f"{network.network_address}/{source}", tcp)
    assert addresses == REGION_NODES[net.demo_region], net.purpose
    assert scope == network.prefixlen, net.purpose
