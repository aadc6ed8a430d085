"""The router's query log: one JSON line per query from the real router (dnspython), in
the main process and in every DNS worker, sampled, dropped-and-counted when its writer
falls behind, off by default."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.message
import pytest

from cdn.jsonlog import JsonLogSettings
from georouter.config import Node
from georouter.geo import Placement
from georouter.query_log import QueryLog, worker_path
from georouter.selector import Decision
from georouter.tallies import HotPathTallies
from tests.test_router_e2e import EU, ROOT, RouterProcess, _metrics, poll, running_router

FIELDS = {
    "time", "client", "transport", "ecs", "name", "type", "rcode", "region", "client_region",
    "answer", "reason",
}  # fmt: skip
IRELAND = "185.60.216.0"


def lines(*paths: Path) -> list[dict[str, object]]:
    found = []
    for path in paths:
        if path.exists():
            found += [json.loads(line) for line in path.read_text().splitlines()]
    return found


def with_query_log(path: Path, settings: str = "") -> Callable[[str], str]:
    return lambda text: f'{text}\n[query_log]\npath = "{path}"\n{settings}\n'


async def ask(router: RouterProcess, name: str, rdtype: str, *, tcp: bool = False) -> None:
    options = [dns.edns.ECSOption(IRELAND, 24)]
    query = dns.message.make_query(name, rdtype, use_edns=0, options=options)
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    await send(query, "127.0.0.1", port=router.dns_port, timeout=2.0)


async def test_each_query_is_one_json_line_with_its_decision(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    async with running_router(tmp_path, edit=with_query_log(path)) as router:
        await ask(router, "cdn.example.com", "A")
        await ask(router, "www.example.com", "CNAME", tcp=True)
        await ask(router, "nope.example.com", "AAAA")
        await poll(lambda: _lines_ready(path, count=3))
        metrics = await _metrics(router)
    geo, static, missing = lines(path)
    assert set(geo) == FIELDS
    assert geo["client"] == "127.0.0.1" and geo["transport"] == "udp"
    assert (geo["ecs"], geo["name"], geo["type"], geo["rcode"]) == (
        f"{IRELAND}/24",
        "cdn.example.com.",
        "A",
        "NOERROR",
    )
    assert (geo["region"], geo["client_region"], geo["reason"]) == ("eu", "eu", "geo")
    assert geo["answer"] and set(geo["answer"]) <= EU
    assert (static["transport"], static["type"], static["reason"]) == ("tcp", "CNAME", "static")
    assert (static["region"], static["answer"]) == (None, [])
    assert (missing["name"], missing["rcode"]) == ("nope.example.com.", "NXDOMAIN")
    assert 'georouter_query_log_lines_total{result="written"} 3.0' in metrics


async def test_every_dns_worker_writes_its_own_file(tmp_path: Path) -> None:
    path = tmp_path / "queries.jsonl"
    files = [path, *(Path(worker_path(str(path), i)) for i in (1, 2))]
    async with running_router(
        tmp_path,
        router_settings="dns_workers = 2",
        edit=with_query_log(path),
    ) as router:
        await asyncio.gather(*(ask(router, "cdn.example.com", "A") for _ in range(40)))
        await ask(router, "cdn.example.com", "A", tcp=True)  # TCP: the main process
        await poll(lambda: _lines_ready(*files, count=41))

        async def counted() -> bool:  # workers send their tallies every second
            return 'georouter_query_log_lines_total{result="written"} 41.0' in await _metrics(
                router
            )

        await poll(counted)
    assert [line["transport"] for line in lines(path)] == ["tcp"]
    assert all(line["reason"] == "geo" for line in lines(*files))
    assert files[1].name == "queries.worker1.jsonl"


async def test_off_by_default(tmp_path: Path) -> None:
    async with running_router(tmp_path) as router:
        await ask(router, "cdn.example.com", "A")
        assert "georouter_query_log_lines_total{" not in await _metrics(router)
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    tallies = HotPathTallies()
    path = tmp_path / "q.jsonl"
    log = QueryLog(JsonLogSettings(str(path), queue_size=2), tallies)
    query = dns.message.make_query("cdn.example.com", "A").to_wire()
    for _ in range(5):  # the writer thread is not running: a disk that has stalled
        log.record(query, "192.0.2.1", "udp", "NOERROR", None)
    assert tallies.query_log["dropped"] == 3
    log.start()
    log.stop()
    assert len(lines(path)) == 2 and tallies.query_log["written"] == 2


def test_an_aaaa_answer_logs_the_ipv6_address_of_a_dual_stack_node(tmp_path: Path) -> None:
    """The answer of an AAAA query is the node's IPv6 address (RFC 3596 §2.2), not its
    IPv4 address, which `ipv4 or ipv6` logged for every dual-stack node."""
    path = tmp_path / "q.jsonl"
    log = QueryLog(JsonLogSettings(str(path)), HotPathTallies())
    node = Node("edge-eu-1", "eu", 100.0, "http://127.0.0.1:1",
                ipv4=IPv4Address("192.0.2.1"), ipv6=IPv6Address("2001:db8::1"))  # fmt: skip
    decided = (Placement("eu", 24), Decision("eu", (node,), "geo"))
    for qtype in ("AAAA", "A"):
        query = dns.message.make_query("cdn.example.com", qtype).to_wire()
        log.record(query, "192.0.2.9", "udp", "NOERROR", decided)
    log.start()
    log.stop()
    assert [line["answer"] for line in lines(path)] == [["2001:db8::1"], ["192.0.2.1"]]


def test_sample_keeps_that_fraction_and_a_malformed_query_is_logged_without_a_name(
    tmp_path: Path,
) -> None:
    tallies = HotPathTallies()
    draws = iter([0.1, 0.9, 0.2])
    path = tmp_path / "q.jsonl"
    log = QueryLog(JsonLogSettings(str(path), sample=0.5), tallies, sample=lambda: next(draws))
    log.start()
    for data in (b"\x00\x01junk", b"skipped by the sample", b"\x00\x02"):
        log.record(data, "192.0.2.1", "udp", "FORMERR", None)
    log.stop()
    logged = lines(path)
    assert len(logged) == 2
    assert all((line["name"], line["reason"]) == (None, None) for line in logged)


async def _lines_ready(*paths: Path, count: int) -> bool:
    return len(lines(*paths)) >= count


async def test_a_query_log_that_cannot_be_opened_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "cdn.toml"
    topology = (ROOT / "georouter" / "data" / "cdn.toml").read_text()
    config.write_text(topology + '\n[query_log]\npath = "no/such/dir/q.jsonl"\n')
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "georouter", "serve", "--config", str(config),
        "--dns", "127.0.0.1:0", "--control", "127.0.0.1:0",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), 30.0)
    assert process.returncode == 2
    assert "query_log.path" in stderr.decode() and "cannot open" in stderr.decode()


@pytest.mark.parametrize("sample", ["0", "1.5"])
def test_sample_is_bounded(tmp_path: Path, sample: str) -> None:
    from georouter.config import DEFAULT_CONFIG, load_config
    from georouter.errors import ConfigError

    config = tmp_path / "cdn.toml"
    config.write_text(
        DEFAULT_CONFIG.read_text() + f'\n[query_log]\npath = "q"\nsample = {sample}\n'
    )
    with pytest.raises(ConfigError, match=r"query_log\.sample"):
        load_config(config)
