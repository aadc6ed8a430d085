"""Smoke tests of the benchmarks: the peers' generated configurations, the parsers and tables
(fast; no load is run).

The configs are generated from data/cdn.toml and the embedded GeoLite2-City. They must
hold only loopback addresses and keep every outbound feature off; where gdnsd and PowerDNS
are installed, each must accept its config and answer with the right region's nodes for an
ECS subnet of each region (RFC 7871 §7.1.1, scope from its database network).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import _maxminddb_geolite2  # type: ignore[import-untyped]
import dns.edns
import dns.message
import dns.query
import dns.rdatatype
import pytest

from benchmarks import headline, peers
from benchmarks.cdn import TOPOLOGY
from benchmarks.dns import (
    DnsRun,
    Mix,
    latencies_ms,
    latency_table,
    parse_dnsperf,
    percentile,
    throughput_table,
)
from benchmarks.edge_hit import parse_wrk
from benchmarks.processes import CpuShares, Endpoint, run_measured, run_tool
from benchmarks.report import Part, Table, bottleneck, render
from georouter.config import RouterConfig, load_config

GEOIP = Path(_maxminddb_geolite2.geolite2_database())
# Subnets located with the embedded GeoLite2-City: IE (EU), US (NA), JP (AS), and IL, a
# country data/cdn.toml moves from its continent (AS) to eu.
REGION_SUBNETS = {
    "185.60.216.0/24": "eu",
    "8.8.8.0/24": "na",
    "1.0.16.0/24": "ap",
    "5.29.0.0/24": "eu",
}
ANY_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


@pytest.fixture(scope="module")
def config() -> RouterConfig:
    return load_config(TOPOLOGY)


def region_addresses(config: RouterConfig, region: str) -> set[str]:
    return {str(n.ipv4) for n in config.nodes if n.region == region and n.ipv4}


def listed_addresses(text: str) -> set[ipaddress.IPv4Address]:
    return {ipaddress.IPv4Address(a) for a in ANY_ADDRESS.findall(text)}


def test_gdnsd_config_holds_only_loopback_addresses(config: RouterConfig, tmp_path: Path) -> None:
    files = peers.gdnsd_files(config, GEOIP, 5353, tmp_path)
    addresses = set().union(*(listed_addresses(text) for text in files.values()))
    assert addresses and all(a.is_loopback for a in addresses)
    # No service_types: every node is statically up, gdnsd sends no monitoring traffic.
    assert "service_types" not in files["config"]
    assert "edns_client_subnet => true" in files["config"]


def test_pdns_config_holds_only_loopback_and_no_outbound_features(
    config: RouterConfig, tmp_path: Path
) -> None:
    files = peers.pdns_files(config, GEOIP, 5353, tmp_path)
    addresses = listed_addresses(files["pdns.conf"] + files["zones.yaml"])
    assert addresses and all(a.is_loopback for a in addresses)
    settings = dict(line.split("=", 1) for line in files["pdns.conf"].splitlines())
    assert settings["security-poll-suffix"] == ""  # no secpoll query to the system resolver
    for key, value in peers.PDNS_OUTBOUND_SETTINGS.items():
        assert settings[key] == value
    assert settings["edns-subnet-processing"] == "yes"
    assert settings["local-address"].startswith("127.0.0.1:")


def test_nginx_config_proxies_only_to_loopback(tmp_path: Path) -> None:
    conf = peers.nginx_conf(8080, 8081, tmp_path, as_root=False)
    assert re.findall(r"proxy_pass (\S+);", conf) == ["http://127.0.0.1:8080"]
    assert re.findall(r"listen (\S+);", conf) == ["127.0.0.1:8081"]
    assert "resolver" not in conf


def test_failover_order_starts_with_the_region(config: RouterConfig) -> None:
    for region in config.regions:
        order = peers.failover_order(config, region.name)
        assert order[0] == region.name
        assert sorted(order) == sorted(r.name for r in config.regions)


def test_parsers_read_tool_output() -> None:
    dnsperf = (
        "  Queries sent:         100\n  Queries lost:         2 (2.00%)\n"
        "  Queries per second:   12345.6\n  Average Latency (s):  0.000250 (min 0.0001)\n"
    )
    assert parse_dnsperf(dnsperf) == {"sent": 100, "lost": 2, "qps": 12345.6, "avg": 0.00025}
    verbose = "> NOERROR cdn.example.com A 0.000200\n> NXDOMAIN x.example.com A 0.004000\n"
    latencies = latencies_ms(verbose)
    assert latencies == [0.2, 4.0]
    assert percentile(latencies, 0.5) == 0.2 and percentile(latencies, 0.99) == 4.0
    wrk = (
        "  Latency Distribution\n     50%  250.00us\n     99%    1.50ms\n"
        "  Socket errors: connect 0, read 1, write 0, timeout 2\nRequests/sec:  9876.54\n"
    )
    assert parse_wrk(wrk) == (9876.54, 0.25, 1.5, 3)


def test_latency_table_gives_median_percentiles_and_the_p99_range_over_rounds() -> None:
    def run(server: str, p99: float, stolen: float = 1.0) -> DnsRun:
        cpu = CpuShares(50.0, 40.0, 0.0, stolen)
        return DnsRun(server, "ecs", 1000.0, 0.2, 0, 100, cpu, 0.1, p99, 2 * p99)

    runs = [run("a", 0.9), run("b", 3.0), run("a", 1.4, 0.2), run("b", 2.0), run("a", 0.7, 9)]
    runs.append(run("b", 2.5))
    table = latency_table(runs, 1000.0)
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert rows["a"]["p99 ms"] == "0.900" and rows["a"]["p99 range ms"] == "0.70 to 1.40"
    assert rows["b"]["p99 range ms"] == "2.00 to 3.00"
    assert rows["a"]["stolen CPU %"] == "1"
    assert rows["a"]["p99 ms, least-stolen round (stolen)"] == "1.400 (0 %)"
    assert "medians of 3 alternating rounds" in table.notes[0]


def throughput_runs() -> tuple[list[DnsRun], list[Mix]]:
    """Two mixes, our one-process server at 50k/40k q/s and a peer at 25k/10k."""
    cpu = CpuShares(50.0, 40.0, 0.0, 1.0)
    qps = {("georouter", "plain"): 50_000.0, ("georouter", "ecs"): 40_000.0}
    qps |= {("peer", "plain"): 25_000.0, ("peer", "ecs"): 10_000.0}
    runs = [DnsRun(server, mix, q, 1.0, 0, 100, cpu) for (server, mix), q in qps.items()]
    mixes = [Mix(name, name, Path(name)) for name in ("plain", "ecs")]
    return runs, mixes


def test_headline_reads_our_ratio_to_each_peer_from_the_throughput_table() -> None:
    runs, mixes = throughput_runs()
    summary = headline.headline([throughput_table(runs, mixes, ["georouter"])])
    rows = dict((comparison, result) for comparison, result in summary.rows)
    assert rows["georouter vs peer, max q/s (plain / ecs)"] == "georouter 2.00x / 4.00x"
    assert rows["max q/s (plain / ecs)"] == "georouter 50 k / 40 k, peer 25 k / 10 k"


def test_headline_leaves_out_the_parts_that_did_not_run() -> None:
    assert headline.headline([]).rows == []
    memory = Table("Resident memory", ["process", "RSS MiB"], [["router", "61.2"]])
    assert headline.headline([memory]).rows == [["resident memory, MiB", "router 61.2"]]


def test_headline_is_read_back_from_the_rendered_report() -> None:
    runs, mixes = throughput_runs()
    table = throughput_table(runs, mixes, ["georouter"])
    summary = headline.headline([table])
    text = render([Part("DNS", "intro", [table])], ["- Date: today"], summary, "", "")
    (read,) = headline.tables_in(text)  # the headline itself is rendered under "##"
    assert (read.title, read.columns, read.rows) == (table.title, table.columns, table.rows)
    assert headline.headline(headline.tables_in(text)) == summary
    assert headline.header_in(text) == ["- Date: today"]


def test_readme_block_replaces_only_what_lies_between_the_markers() -> None:
    summary = Table(headline.TITLE, headline.COLUMNS, [["a", "b"]])
    block = headline.readme_block(["- Date: today; mode: full"], summary)
    text = f"intro\n{headline.START}\nold figures\n{headline.END}\nafter\n"
    updated = headline.replace_block(text, block)
    assert updated == f"intro\n{block}\nafter\n"
    assert "| a | b |" in updated and "(today; mode: full)" in updated
    assert headline.replace_block(updated, block) == updated  # idempotent
    for broken in ("no markers", f"{headline.END} {headline.START}", headline.START * 2):
        with pytest.raises(headline.HeadlineError):
            headline.replace_block(broken, block)


def test_bottleneck_names_the_hypervisor_when_it_stole_the_cores() -> None:
    cores = 100.0 * (os.cpu_count() or 1)
    assert bottleneck(CpuShares(0.5 * cores, 0.3 * cores, 0.0, 0.2 * cores), "dnsperf") == (
        f"hypervisor (stolen {0.2 * cores:.0f} %)"
    )
    assert bottleneck(CpuShares(95.0, 30.0, 0.0, 0.0), "wrk") == "server (one core full)"
    assert bottleneck(CpuShares(20.0, 20.0, 0.0, 0.2 * cores), "wrk").startswith("neither")


def test_run_measured_splits_the_machine_cpu_into_server_tool_others_stolen() -> None:
    script = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done"
    output, cpu = run_measured(["sh", "-c", script], os.getpid(), timeout_s=30)
    assert output == ""
    assert cpu.tool > 10.0  # the shell loop kept a core busy
    assert min(cpu.server, cpu.others, cpu.stolen) >= 0.0


def test_run_tool_returns_all_output_written_after_the_tool_exits() -> None:
    script = 'for i in $(seq 20000); do echo "> line $i"; done; echo done >&2'
    output, cpu = run_tool(["sh", "-c", script], timeout_s=30)
    lines = output.splitlines()
    assert len(lines) == 20001 and lines[-2] == "> line 20000" and lines[-1] == "done"
    assert cpu >= 0.0


def ask(server: Endpoint, subnet: str) -> tuple[set[str], int]:
    net = ipaddress.IPv4Network(subnet)
    ecs: list[dns.edns.Option] = [dns.edns.ECSOption(str(net.network_address), net.prefixlen)]
    query = dns.message.make_query("cdn.example.com", dns.rdatatype.A, use_edns=0, options=ecs)
    response = dns.query.udp(query, server.host, port=server.port, timeout=2.0)
    addresses = {rr.address for rrset in response.answer for rr in rrset}
    scopes = [o.scopelen for o in response.options if isinstance(o, dns.edns.ECSOption)]
    return addresses, scopes[0] if scopes else -1


@pytest.fixture(scope="module")
def gdnsd(config: RouterConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    if shutil.which("gdnsd") is None:
        pytest.skip("gdnsd not installed (make bench-packages)")
    with peers.gdnsd(config, GEOIP, tmp_path_factory.mktemp("gdnsd")) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def powerdns(config: RouterConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    if shutil.which("pdns_server") is None:
        pytest.skip("pdns_server not installed (make bench-packages)")
    with peers.powerdns(config, GEOIP, tmp_path_factory.mktemp("pdns")) as endpoint:
        yield endpoint


def test_gdnsd_checkconf_accepts_generated_config(config: RouterConfig, tmp_path: Path) -> None:
    if shutil.which("gdnsd") is None:
        pytest.skip("gdnsd not installed (make bench-packages)")
    peers.write_files(tmp_path, peers.gdnsd_files(config, GEOIP, 5353, tmp_path))
    checked = subprocess.run(
        ["gdnsd", "-c", str(tmp_path), "checkconf"], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr


def test_pdns_config_check_accepts_generated_config(config: RouterConfig, tmp_path: Path) -> None:
    if shutil.which("pdns_server") is None:
        pytest.skip("pdns_server not installed (make bench-packages)")
    peers.write_files(tmp_path, peers.pdns_files(config, GEOIP, 5353, tmp_path))
    checked = subprocess.run(
        ["pdns_server", f"--config-dir={tmp_path}", "--config=check"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize(("subnet", "region"), REGION_SUBNETS.items())
def test_gdnsd_answers_with_the_region_of_the_ecs_subnet_rfc7871_7_1_1(
    gdnsd: Endpoint, config: RouterConfig, subnet: str, region: str
) -> None:
    addresses, scope = ask(gdnsd, subnet)
    assert addresses == region_addresses(config, region)
    assert scope > 0


@pytest.mark.parametrize(("subnet", "region"), REGION_SUBNETS.items())
def test_powerdns_answers_with_the_region_of_the_ecs_subnet_rfc7871_7_1_1(
    powerdns: Endpoint, config: RouterConfig, subnet: str, region: str
) -> None:
    addresses, scope = ask(powerdns, subnet)
    assert addresses == region_addresses(config, region)
    assert scope > 0
