"""Smoke tests of the benchmarks: the peers' generated configurations, the parsers and tables
(fast; no load is run).

The configs are generated from georouter/data/cdn.toml and the embedded GeoLite2-City. They must
hold only loopback addresses and keep every outbound feature off; where gdnsd and PowerDNS
are installed, each must accept its config and answer with the right region's nodes for an
ECS subnet of each region (RFC 7871 §7.1.1, scope from its database network).
"""

from __future__ import annotations

import ipaddress
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import _maxminddb_geolite2  # type: ignore[import-untyped]
import dns.edns
import dns.message
import dns.query
import dns.rdatatype
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from benchmarks import __main__ as bench_main
from benchmarks import fairness, headline, peers, prewarm_failover
from benchmarks.__main__ import QUICK, Run
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
from benchmarks.fairness import MIN_NOISE, judge, ratios, spread
from benchmarks.processes import (
    BenchError,
    CpuShares,
    Endpoint,
    Placement,
    cpu_cgroup,
    placement,
    process_tree,
    run_measured,
    run_tool,
    unequal,
    wait_until,
)
from benchmarks.report import Part, Table, bottleneck, render
from cdnlab.supervisor import Start, running
from georouter.config import RouterConfig, load_config

GEOIP = Path(_maxminddb_geolite2.geolite2_database())
# Subnets located with the embedded GeoLite2-City: IE (EU), US (NA), JP (AS), and IL, a
# country georouter/data/cdn.toml moves from its continent (AS) to eu.
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
    return {str(n.ipv4) for n in config.nodes if n.region == region and n.ipv4 and n.role == "edge"}


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
    measured = run_measured(["sh", "-c", script], os.getpid(), timeout_s=30)
    assert measured.output == ""
    cpu = measured.cpu
    assert cpu.tool > 10.0  # the shell loop kept a core busy
    assert min(cpu.server, cpu.others, cpu.stolen) >= 0.0


def test_run_tool_returns_all_output_written_after_the_tool_exits() -> None:
    script = 'for i in $(seq 20000); do echo "> line $i"; done; echo done >&2'
    run = run_tool(["sh", "-c", script], timeout_s=30)
    lines = run.output.splitlines()
    assert len(lines) == 20001 and lines[-2] == "> line 20000" and lines[-1] == "done"
    assert run.cpu_percent >= 0.0


# --- equal terms for the CPU: how processes are started (cdnlab/supervisor.py) ------


def autogroup_enabled() -> bool:
    path = Path("/proc/sys/kernel/sched_autogroup_enabled")
    return path.exists() and path.read_text().strip() == "1"


def test_a_load_generator_runs_in_the_harness_session_and_autogroup() -> None:
    run = run_tool(["sleep", "0.3"], timeout_s=30)
    harness = placement(os.getpid())
    assert run.placement is not None and harness is not None
    assert run.placement.argv == ("sleep", "0.3")
    assert run.placement.session == os.getsid(0)
    assert run.placement.scheduling() == harness.scheduling()


def test_a_server_shares_the_harness_session_and_autogroup_in_its_own_group() -> None:
    with running("sleeper", ["sleep", "60"]) as service:
        started, harness = placement(service.pid), placement(os.getpid())
        assert started is not None and harness is not None
        assert os.getsid(service.pid) == os.getsid(0)  # no setsid: no autogroup of its own
        assert os.getpgid(service.pid) == service.pid  # terminal signals stay off it
        assert started.autogroup == harness.autogroup
        assert unequal({"sleeper": started}, harness) == []


def test_a_plain_start_shares_the_harness_process_group() -> None:
    with running("sleeper", ["sleep", "60"], start=Start.PLAIN) as service:
        assert os.getpgid(service.pid) == os.getpgid(0)
        assert os.getsid(service.pid) == os.getsid(0)


def test_a_server_in_its_own_session_is_scheduled_apart_when_autogroup_is_on() -> None:
    with running("sleeper", ["sleep", "60"], start=Start.SESSION) as service:
        started, harness = placement(service.pid), placement(os.getpid())
        assert started is not None and harness is not None
        assert started.session == service.pid != os.getsid(0)
        if not autogroup_enabled():
            pytest.skip("kernel.sched_autogroup_enabled is not 1: one group for all")
        assert started.autogroup != harness.autogroup
        assert unequal({"sleeper": started, "same": harness}, harness) == ["sleeper"]


@pytest.mark.parametrize("start", [Start.GROUP, Start.SESSION])
def test_kill_takes_the_children_of_a_server_in_its_own_group(start: Start) -> None:
    with running("tree", ["sh", "-c", "sleep 60 & sleep 61 & wait"], start=start) as service:
        wait_until(lambda: len(process_tree(service.pid)) == 3, 10.0, "sh to start two sleeps")
        children = process_tree(service.pid)[1:]
        service.kill()
        wait_until(lambda: not any(alive(pid) for pid in children), 10.0, "the sleeps to die")


def alive(pid: int) -> bool:
    state = Path(f"/proc/{pid}/stat")
    return state.exists() and ") Z " not in state.read_text()


def test_run_refuses_a_server_scheduled_apart_from_the_harness(tmp_path: Path) -> None:
    harness = placement(os.getpid())
    assert harness is not None
    run = Run(QUICK, load_config(TOPOLOGY), GEOIP, tmp_path, {}, {}, harness)
    with running("sleeper", ["sleep", "60"]) as service:
        run.note_start("sleeper", service.pid)
    assert run.started["sleeper"].argv == ("sleep", "60")
    if not autogroup_enabled():
        pytest.skip("kernel.sched_autogroup_enabled is not 1: one group for all")
    with (
        running("apart", ["sleep", "60"], start=Start.SESSION) as service,
        pytest.raises(BenchError, match=r"harness bias: apart \(pid \d+\) scheduled apart"),
    ):
        run.note_start("apart", service.pid)


def where(**changes: object) -> Placement:
    base = Placement(
        argv=("x",), session=1, group=1, autogroup="/autogroup-1 nice 0", nice=0,
        cpus="0-1", cgroup="/",
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_unequal_names_processes_scheduled_on_other_terms() -> None:
    harness = where()
    found = {
        "same session": where(argv=("y",)),
        "other session, no autogroup": where(session=2, group=2),
        "own autogroup": where(session=2, autogroup="/autogroup-2 nice 0"),
        "reniced group": where(autogroup="/autogroup-1 nice 5"),
        "niced": where(nice=10),
        "pinned": where(cpus="0"),
        "other cgroup": where(cgroup="/bench"),
    }
    assert unequal(found, harness) == [
        "own autogroup", "reniced group", "niced", "pinned", "other cgroup",
    ]  # fmt: skip


def test_cpu_cgroup_reads_the_cpu_controller_or_the_unified_hierarchy() -> None:
    v1 = "9:name=systemd:/a\n4:memory:/m\n2:cpu,cpuacct:/bench\n0::/\n"
    assert cpu_cgroup(v1) == "/bench"
    assert cpu_cgroup("0::/user.slice/session-3.scope\n") == "/user.slice/session-3.scope"
    assert cpu_cgroup("") == ""


# --- the bias check's verdict (benchmarks/fairness.py) ---------------------------------

# The figures, same shell, back to back: plain pdns_server 63.4k-64.5k q/s, setsid
# pdns_server 40.4k-43.4k q/s.
PLAIN = (63_400.0, 64_000.0, 64_500.0)
SETSID = (40_400.0, 42_000.0, 43_400.0)


def test_a_harness_that_starts_servers_plainly_is_not_biased() -> None:
    verdict = judge(plain=PLAIN, harness=(63_900.0, 64_200.0, 63_000.0), own_session=SETSID)
    assert not verdict.biased and verdict.sensitive
    assert verdict.noise == MIN_NOISE  # the spreads are below the floor
    assert verdict.own_session_gap == pytest.approx(22_000 / 64_000)
    assert "no harness bias" in verdict.summary() and "can see" in verdict.summary()
    fairness.enforce(verdict)


def test_a_harness_that_starts_servers_with_setsid_is_biased_and_stops_the_run() -> None:
    verdict = judge(plain=PLAIN, harness=SETSID, own_session=SETSID)
    assert verdict.biased
    with pytest.raises(BenchError, match=r"harness bias: .* \(gap 34%\)"):
        fairness.enforce(verdict)


def test_a_gap_within_the_noise_of_the_rounds_is_not_a_bias() -> None:
    noisy = (40_000.0, 64_000.0, 70_000.0)  # the machine got busier round by round
    verdict = judge(plain=noisy, harness=SETSID, own_session=SETSID)
    assert verdict.noise == pytest.approx(40_400 / 40_000 - 43_400 / 70_000)  # 0.39
    assert verdict.harness_gap == pytest.approx(1 - 42_000 / 64_000)  # 0.34
    assert not verdict.biased and not verdict.sensitive
    assert "could not tell" in verdict.summary()


def test_judge_needs_paired_rounds_and_positive_figures() -> None:
    with pytest.raises(ValueError, match="at least one"):
        judge(plain=(), harness=(), own_session=())
    with pytest.raises(ValueError, match="same rounds"):
        judge(plain=PLAIN, harness=PLAIN[:2], own_session=PLAIN)
    with pytest.raises(ValueError, match="> 0"):
        judge(plain=PLAIN, harness=(1.0, 1.0, 0.0), own_session=PLAIN)


FIGURE = st.floats(1_000.0, 200_000.0)
ROUND_PAIRS = st.lists(st.tuples(FIGURE, FIGURE), min_size=1, max_size=6)


@given(rounds=ROUND_PAIRS, factor=st.floats(0.3, 3.0))
def test_biased_exactly_when_the_harness_gap_exceeds_the_noise(
    rounds: list[tuple[float, float]], factor: float
) -> None:
    plain, own = [p for p, _ in rounds], [o for _, o in rounds]
    harness = [q * factor for q in plain]  # every round shifted alike: no spread of its own
    verdict = judge(plain=plain, harness=harness, own_session=own)
    assert verdict.noise == pytest.approx(max(MIN_NOISE, spread(ratios(own, plain))))
    assert verdict.harness_gap == pytest.approx(abs(factor - 1.0))
    assume(abs(abs(factor - 1.0) - verdict.noise) > 1e-6)  # not on the boundary
    assert verdict.biased == (abs(factor - 1.0) > verdict.noise)


@given(rounds=ROUND_PAIRS)
def test_the_same_figures_are_never_biased(rounds: list[tuple[float, float]]) -> None:
    plain, own = [p for p, _ in rounds], [o for _, o in rounds]
    verdict = judge(plain=plain, harness=plain, own_session=own)
    assert verdict.harness_gap == 0.0 and not verdict.biased


@given(rounds=ROUND_PAIRS, drift=st.lists(st.floats(0.2, 1.0), min_size=6, max_size=6))
def test_a_load_that_drifts_between_rounds_cancels_out(
    rounds: list[tuple[float, float]], drift: list[float]
) -> None:
    """Every way of a round slowed alike (another program busy then): the same verdict."""
    plain, own = [p for p, _ in rounds], [o for _, o in rounds]
    harness = [q * 0.6 for q in plain]
    steady = judge(plain=plain, harness=harness, own_session=own)
    slowed = [[q * d for q, d in zip(way, drift, strict=False)] for way in (plain, harness, own)]
    drifted = judge(plain=slowed[0], harness=slowed[1], own_session=slowed[2])
    assert drifted.harness_gap == pytest.approx(steady.harness_gap)
    assert drifted.noise == pytest.approx(steady.noise)
    assume(abs(steady.harness_gap - steady.noise) > 1e-6)  # not on the boundary
    assert drifted.biased == steady.biased


def test_check_table_shows_each_way_with_its_session_and_gap() -> None:
    harness = where()
    placements = {
        Start.PLAIN: where(argv=("pdns_server",)),
        Start.GROUP: where(group=7),
        Start.SESSION: where(session=8, group=8, autogroup="/autogroup-8 nice 0"),
    }
    verdict = judge(plain=PLAIN, harness=PLAIN, own_session=SETSID)
    table = fairness.check_table(fairness.Check(verdict, placements), harness)
    rows = {row[0]: dict(zip(table.columns, row, strict=True)) for row in table.rows}
    assert rows["plain"]["session"] == "harness's" and rows["plain"]["gap"] == ""
    assert rows["plain"]["q/s per round"] == "63,400, 64,000, 64,500"
    assert rows["harness"]["session"] == "harness's, own group"
    assert rows["harness"]["autogroup"] == "autogroup-1" and rows["harness"]["gap"] == "0%"
    own = rows["own session"]
    assert own["session"] == "own" and own["autogroup"] == "autogroup-8"
    assert own["median q/s"] == "42,000" and own["gap"] == "34%"
    assert own["per round / plain"] == "0.64, 0.66, 0.67"
    assert any("Verdict: no harness bias" in note for note in table.notes)


def test_started_table_shortens_command_lines_and_lists_the_harness(tmp_path: Path) -> None:
    argv = (sys.executable, "-m", "edge", "serve", "--root", f"{tmp_path}/x")
    table = fairness.started_table({"edge": where(argv=argv)}, tmp_path)
    assert table.rows[0][:2] == ["edge", "`python -m edge serve --root $WORK/x`"]
    assert table.rows[-1][0] == "the harness" and table.rows[-1][2] == "(reference)"


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


def test_the_harness_section_stands_before_the_numbered_parts() -> None:
    parts = [Part("The harness", "", numbered=False), Part("DNS", ""), Part("Edge", "")]
    summary = Table(headline.TITLE, headline.COLUMNS, [])
    text = render(parts, [], summary, "", "")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == [f"## {headline.TITLE}", "## The harness", "## 1. DNS", "## 2. Edge"]


def test_each_way_takes_each_place_in_the_rounds_equally_often() -> None:
    ways = fairness.WAYS
    orders = [fairness.rotated(ways, index) for index in range(2 * len(ways))]
    assert all(sorted(o, key=ways.index) == list(ways) for o in orders)
    for place in range(len(ways)):
        assert sorted((o[place] for o in orders), key=ways.index) == [w for w in ways for _ in "ab"]


def test_prewarm_bench_groups_ask_for_their_own_halves_of_the_catalog() -> None:
    load = prewarm_failover.Load({1: "http://a", 2: "http://b"})
    rng = random.Random(1)
    firsts = [load.path(1, rng) for _ in range(2000)]
    seconds = [load.path(2, rng) for _ in range(200)]
    assert all(int(p.split("-")[1].split(".")[0]) % 2 == 0 for p in firsts)
    assert all(int(p.split("-")[1].split(".")[0]) % 2 == 1 for p in seconds)
    counts = Counter(firsts)
    assert counts["/img/obj-0.png"] > counts["/img/obj-20.png"]  # Zipf: the first is hottest


def test_prewarm_bench_table_says_the_share_of_steady_state() -> None:
    trials = [
        prewarm_failover.Trial(True, steady=0.8, after=0.72, first=0.6, requests=1000),
        prewarm_failover.Trial(False, steady=0.8, after=0.6, first=0.3, requests=1000),
    ]
    table = prewarm_failover.prewarm_table(trials, prewarm_failover.QUICK)
    assert table.rows[0][3].startswith("90%") and "goal" in table.rows[0][3]
    assert table.rows[1][3] == "75%" and table.rows[1][4] == "30.0%"
    assert "prewarm" in bench_main.PARTS


def test_run_time_table_lists_each_part_the_set_up_between_and_the_total() -> None:
    table = bench_main.runtime_table({"dns": 290.0, "scaling": 61.5}, 400.0)
    assert [row[0] for row in table.rows] == [
        "dns",
        "scaling",
        "set-up and teardown between parts",
        "**total**",
    ]
    assert table.rows[0][1] == "4 min 50.0 s" and table.rows[1][1] == "1 min 01.5 s"
    assert table.rows[2][1] == "0 min 48.5 s" and table.rows[3][1] == "**6 min 40.0 s**"


def test_a_timed_part_adds_up_its_pieces(tmp_path: Path) -> None:
    harness = placement(os.getpid())
    assert harness is not None
    run = Run(QUICK, load_config(TOPOLOGY), GEOIP, tmp_path, {}, {}, harness)
    for _ in range(2):
        with run.timed("balance"):
            pass
    assert list(run.durations) == ["balance"] and 0.0 <= run.durations["balance"] < 1.0
