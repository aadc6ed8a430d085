"""DNS worker processes (router.dns_workers = 2) in a real `georouter serve`.

Workers answer UDP on the shared socket; main keeps TCP and the control plane, feeds the
workers every fleet snapshot and reloaded config, sums their tallies into /metrics,
restarts a worker that dies, and takes them all down with it. Processes are stopped by PID.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import dns.asyncquery
import dns.message
import pytest

from cdn.jsonlog import JsonLogSettings
from georouter import workers
from georouter.query_log import QueryLog
from georouter.tallies import HotPathTallies
from georouter.worker_messages import TallyReport, frame, to_main
from tests.test_router_e2e import (
    EU,
    NA,
    OPERATOR,
    RouterProcess,
    _metrics,
    poll,
    running_router,
    write_config,
)

WORKERS = 2
UDP_ANSWERS = re.compile(
    r'georouter_dns_queries_total\{qtype="A",rcode="NOERROR",transport="udp"\} (\S+)'
)


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[RouterProcess]:
    async with running_router(tmp_path, f"dns_workers = {WORKERS}\n") as rp:
        yield rp


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(child) for child in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    """No such process, or only its zombie (whoever inherited it has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


async def udp_answers(router: RouterProcess) -> float:
    match = UDP_ANSWERS.search(await _metrics(router))
    return float(match.group(1)) if match else 0.0


async def test_workers_answer_udp_and_main_keeps_tcp(router: RouterProcess) -> None:
    assert len(children(router.process.pid)) == WORKERS
    for _ in range(20):
        assert await router.addresses("185.60.216.0") <= EU
        assert await router.addresses("8.8.8.0") <= NA
    query = dns.message.make_query("cdn.example.com", "A")
    tcp = await dns.asyncquery.tcp(query, "127.0.0.1", port=router.dns_port, timeout=2.0)
    assert tcp.answer

    async def all_counted() -> bool:  # each worker sends its tallies every 0.5 s
        return await udp_answers(router) >= 40

    await poll(all_counted)
    metrics = await _metrics(router)
    timed = re.search(
        r'georouter_dns_query_duration_seconds_count\{transport="udp"\} (\S+)', metrics
    )
    assert timed is not None and float(timed.group(1)) >= 40
    assert 'georouter_dns_queries_total{qtype="A",rcode="NOERROR",transport="tcp"} 1.0' in metrics


async def test_drain_reaches_every_worker(router: RouterProcess) -> None:
    async with aiohttp.ClientSession(headers=OPERATOR) as s:
        async with s.post(router.api("/api/v1/nodes/edge-eu-1/drain")) as r:
            assert r.status == 200

        async def drained_everywhere() -> bool:
            answers = [await router.addresses() for _ in range(10)]
            return all(a == {"127.0.0.14"} for a in answers)

        await poll(drained_everywhere, timeout=5.0)
        async with s.post(router.api("/api/v1/nodes/edge-eu-1/undrain")) as r:
            assert r.status == 200


async def test_reload_reaches_every_worker(router: RouterProcess) -> None:
    record = '[[zones.records]]\nname = "fresh"\ntype = "TXT"\nvalue = "reloaded"\nttl = 60\n\n'
    write_config(router.config, router.edges, record, f"dns_workers = {WORKERS}\n")
    router.process.send_signal(signal.SIGHUP)

    async def answered_everywhere() -> bool:
        answers = [await router.query("fresh.example.com", "TXT", subnet=None) for _ in range(10)]
        return all(a.answer for a in answers)

    await poll(answered_everywhere)


async def test_a_killed_worker_is_restarted_and_counts_never_go_back(
    router: RouterProcess,
) -> None:
    for _ in range(10):
        await router.addresses()
    await poll(lambda: _at_least(router, 10))
    victim = children(router.process.pid)[0]
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        now = children(router.process.pid)
        return victim not in now and len(now) == WORKERS

    async def exit_logged() -> bool:  # the log is read in the background: poll it too
        exited = re.compile(rf"event=worker_exit worker=\d+ pid={victim}\b")
        return any(exited.search(line) for line in router.log)

    await poll(replaced)
    await poll(exit_logged)
    assert await udp_answers(router) >= 10  # the dead worker's counts were kept
    for _ in range(10):
        assert await router.addresses() == EU
    await poll(lambda: _at_least(router, 20))


async def _at_least(router: RouterProcess, count: int) -> bool:
    return await udp_answers(router) >= count


async def test_sigterm_stops_the_workers_too(router: RouterProcess) -> None:
    workers = children(router.process.pid)
    router.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(router.process.wait(), 10.0) == 0
    assert all(gone(pid) for pid in workers)


async def test_workers_exit_when_main_dies(router: RouterProcess) -> None:
    workers = children(router.process.pid)
    router.process.send_signal(signal.SIGKILL)
    await router.process.wait()

    async def orphans_gone() -> bool:
        return all(gone(pid) for pid in workers)

    await poll(orphans_gone, timeout=5.0)


def test_tallies_travel_and_fold_together() -> None:
    a, b = HotPathTallies(), HotPathTallies()
    a.queries[("udp", "A", "NOERROR")] = 2
    a.durations["udp"].observe(30e-6)
    a.ecs_scopes.observe(24)
    b.queries[("udp", "A", "NOERROR")] = 1
    b.answers[("eu", "edge-eu-1")] = 1
    b.dropped["oversized"] += 1
    b.geoip_lookups = 5
    b.durations["udp"].observe(30e-6)
    sent = frame(TallyReport(b))
    assert to_main(sent[4:]) == TallyReport(b)
    assert int.from_bytes(sent[:4]) == len(sent) - 4
    a.add(b)
    assert a.queries == {("udp", "A", "NOERROR"): 3} and a.answers == {("eu", "edge-eu-1"): 1}
    assert a.dropped == {"oversized": 1} and a.geoip_lookups == 5
    assert a.durations["udp"].counts[1] == 2 and a.durations["udp"].total == 60e-6
    assert sum(a.ecs_scopes.counts) == 1


def test_sigterm_while_the_query_log_queue_is_locked_still_exits(tmp_path: Path) -> None:
    """The SIGTERM handler runs on the main thread, maybe inside Queue.put_nowait with the
    queue's lock held: stopping the log there deadlocked until SIGKILL. It must return at
    once, and the exit follow once the lock is free."""
    tallies = HotPathTallies()
    query_log = QueryLog(JsonLogSettings(str(tmp_path / "q.jsonl")), tallies)
    query_log.start()
    exits: list[int] = []
    worker: Any = SimpleNamespace(query_log=query_log)
    with query_log._log._queue.mutex:  # this thread was interrupted inside put_nowait
        thread = workers._on_sigterm(worker, exits.append)  # returns: no deadlock
        assert exits == []
    thread.join(timeout=10)
    assert exits == [0] and not thread.is_alive()
