"""The disk level under the memory store: restarts recover objects, corrupt or torn
records are never served, eviction by bytes, purges reach the disk, /healthz waits for
the index and for the router's missed purges; a real `edge serve` killed with SIGKILL
while writing leaves nothing torn to serve, and one stopped and started again serves its
intact records as hits and never a corrupt one.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import aiohttp
import pytest
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict

from cdn.purge import Purge
from edge.disk import WRITE_QUEUE_LENGTH, DiskLevel
from edge.disk_format import CorruptRecord, RecordHead, decode_entry, encode_entry, parse_head
from edge.entry import CacheEntry
from edge.errors import ConfigError
from edge.metrics import EdgeMetrics
from edge.server import EdgeServer
from tests.origin_app import (
    CACHEABLE,
    FakeRouter,
    ScriptedOrigin,
    get,
    metric,
    poll,
    running_edge,
)
from tests.test_edge_process import edge_argv, spawn, stop

pytest_plugins = ("tests.edge_fixtures",)

MiB = 1024 * 1024
HOST = {"Host": "img.example"}  # the same cache key across restarts (ports change)


def _records(path: Path) -> list[Path]:
    return sorted(path.glob("*/*.rec"))


async def _written(edge: EdgeServer, count: int) -> None:
    """Wait until the disk level's queue has drained ``count`` records to files."""
    assert edge.disk is not None
    disk = edge.disk
    await poll(lambda: disk.loaded and not disk._queue and len(_records(disk.path)) == count)


async def _read(client: aiohttp.ClientSession, url: str) -> bytes:
    async with client.get(url, headers=HOST) as resp:
        return await resp.read()


async def _healthz(client: aiohttp.ClientSession, edge: EdgeServer) -> int:
    async with client.get(f"http://{edge.control}/healthz") as resp:
        return resp.status


# The record format (pure).


def _entry(body: bytes) -> CacheEntry:
    return CacheEntry(
        status=200,
        headers=CIMultiDict({"Cache-Control": "max-age=60", "ETag": '"x"'}),
        body=body,
        response_time=1000.0,
        corrected_initial_age=0.0,
        freshness_lifetime=60.0,
        vary=(("accept-encoding", "gzip"),),
        surrogate_keys=("k1",),
        size=len(body) + 300,
    )


@given(st.binary(max_size=2048), st.text(max_size=40))
def test_record_round_trips(body: bytes, target: str) -> None:
    host, got_target, entry = decode_entry(encode_entry("h.example", "/" + target, _entry(body)))
    assert (host, got_target) == ("h.example", "/" + target)
    assert entry == _entry(body)


@given(st.binary(min_size=1, max_size=512), st.data())
def test_any_flipped_byte_or_cut_is_refused(body: bytes, data: st.DataObject) -> None:
    record = encode_entry("h", "/a", _entry(body))
    at = data.draw(st.integers(0, len(record) - 1))
    flipped = record[:at] + bytes([record[at] ^ 0x01]) + record[at + 1 :]
    cut = record[: data.draw(st.integers(0, len(record) - 1))]
    for bad in (flipped, cut):
        with pytest.raises(CorruptRecord):
            decode_entry(bad)


def test_head_checks_the_file_length() -> None:
    record = encode_entry("h", "/a", _entry(b"x" * 100))
    assert parse_head(record, len(record)).target == "/a"
    with pytest.raises(CorruptRecord, match="torn"):
        parse_head(record, len(record) - 1)


# A real edge over a disk directory.


async def test_restart_recovers_objects_as_hits(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    for i in range(3):
        origin.script(f"/o{i}", headers=CACHEABLE, body=f"object {i}".encode() * 100)
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        for i in range(3):
            assert (await get(client, edge, f"/o{i}", headers=HOST))[0] == 200
        await _written(edge, 3)
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await poll(lambda: edge.ready())
        assert await _healthz(client, edge) == 200
        for i in range(3):
            status, headers, body = await get(client, edge, f"/o{i}", headers=HOST)
            assert (status, body) == (200, f"object {i}".encode() * 100)
            assert "hit" in headers["Cache-Status"]
        assert metric(edge.metrics, "edge_cache_level_hits_total", {"level": "disk"}) == 3
        # Promoted: the second hit comes from memory.
        assert "hit" in (await get(client, edge, "/o0", headers=HOST))[1]["Cache-Status"]
        assert metric(edge.metrics, "edge_cache_level_hits_total", {"level": "memory"}) == 1
    assert all(origin.fetches[f"/o{i}"] == 1 for i in range(3))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
async def test_corrupt_record_is_dropped_not_served(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path, damage: str
) -> None:
    origin.script("/img", headers=CACHEABLE, body=b"A" * 5000)
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await get(client, edge, "/img", headers=HOST)
        await _written(edge, 1)
    (record,) = _records(tmp_path)
    data = bytearray(record.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x20  # a body byte: only the digest notices
    else:
        del data[-10:]  # the index scan notices the length
    record.write_bytes(bytes(data))
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await poll(lambda: edge.ready())
        status, headers, body = await get(client, edge, "/img", headers=HOST)
        assert (status, body) == (200, b"A" * 5000)
        assert "fwd=uri-miss" in headers["Cache-Status"]
        errors = {"level": "disk", "op": "read"}
        assert metric(edge.metrics, "edge_cache_level_errors_total", errors) == 1
    assert origin.fetches["/img"] == 2


async def test_disk_evicts_by_bytes(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    for i in range(6):
        origin.script(f"/big{i}", headers=CACHEABLE, body=bytes([65 + i]) * 40_000)
    async with running_edge(origin.url, disk_path=str(tmp_path), disk_size_bytes=100_000) as edge:
        for i in range(6):
            await get(client, edge, f"/big{i}", headers=HOST)
        assert edge.disk is not None
        await _written(edge, 2)  # two 40 kB records fit in 100 kB
        assert edge.disk.index.bytes <= 100_000
        assert metric(edge.metrics, "edge_cache_level_evictions_total", {"level": "disk"}) == 4
        total = sum(f.stat().st_size for f in _records(tmp_path))
        assert total <= 100_000


async def test_purges_remove_disk_copies(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.script("/a/1", headers={**CACHEABLE, "Surrogate-Key": "team"})
    origin.script("/a/2", headers=CACHEABLE)
    origin.script("/b", headers=CACHEABLE)
    auth = {"Authorization": "Bearer t0ken"}
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        for path in ("/a/1", "/a/2", "/b"):
            await get(client, edge, path, headers=HOST)
        await _written(edge, 3)
        purge = f"http://{edge.control}/purge"
        host = "http://img.example"
        for body in ({"key": "team"}, {"prefix": f"{host}/a/"}, {"url": f"{host}/b"}):
            async with client.post(purge, json=body, headers=auth) as resp:
                assert resp.status == 200, await resp.text()
        await _written(edge, 0)
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await poll(lambda: edge.ready())
        for path in ("/a/1", "/a/2", "/b"):
            await get(client, edge, path, headers=HOST)
    assert all(origin.fetches[p] == 2 for p in ("/a/1", "/a/2", "/b"))


async def test_healthz_503_until_index_loaded(
    origin: ScriptedOrigin,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gate = threading.Event()
    scan = DiskLevel._scan

    def held_scan(self: DiskLevel) -> tuple[list[RecordHead], int]:
        gate.wait(10)  # the scan thread waits for the test (a large disk, slowly read)
        return scan(self)

    monkeypatch.setattr(DiskLevel, "_scan", held_scan)
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        assert await _healthz(client, edge) == 503
        gate.set()
        await poll(lambda: edge.ready())
        assert await _healthz(client, edge) == 200


async def test_disk_hits_wait_for_missed_purges_from_the_router(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.script("/p", headers={**CACHEABLE, "Surrogate-Key": "feed"}, body=b"old")
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await get(client, edge, "/p", headers=HOST)
        await _written(edge, 1)
    # While the edge was down an operator purged the key through the router.
    origin.script("/p", headers=CACHEABLE, body=b"new")
    async with FakeRouter() as router:
        router.owed = [Purge("purge-1", "key", "feed")]
        async with running_edge(
            origin.url, disk_path=str(tmp_path), routers=(router.url,), report_interval_s=0.2
        ) as edge:
            await poll(lambda: edge.ready())
            status, _, body = await get(client, edge, "/p", headers=HOST)
            assert (status, body) == (200, b"new")
    assert origin.fetches["/p"] == 2


async def test_sigkill_while_writing_leaves_nothing_torn(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    bodies = {f"/k{i}": bytes([48 + i % 10]) * (200_000 + i) for i in range(40)}
    for path, body in bodies.items():
        origin.script(path, headers=CACHEABLE, body=body)
    config = tmp_path / "edge.toml"
    config.write_text(f'[cache]\ndisk_path = "{tmp_path / "disk"}"\n')
    argv = [*edge_argv("edge-eu-1", origin.url, []), "--config", str(config)]
    edge = await spawn(argv)
    base = f"http://{edge.fields['content']}"
    try:
        await asyncio.gather(*(_read(client, base + p) for p in bodies))
        os.kill(edge.proc.pid, signal.SIGKILL)  # mid-way through the background writes
    finally:
        await stop(edge)
    before = dict(origin.fetches)
    edge = await spawn(argv)
    base, control = f"http://{edge.fields['content']}", edge.fields["control"]
    try:
        await poll(lambda: any("event=disk_index_loaded" in line for line in edge.log), 20)
        for path, body in bodies.items():
            async with client.get(base + path, headers=HOST) as resp:
                assert await resp.read() == body
        async with client.get(f"http://{control}/metrics") as resp:
            text = await resp.text()
    finally:
        await stop(edge)
    disk_hits = sum(origin.fetches[p] == before[p] for p in bodies)
    assert disk_hits > 0, "nothing survived the kill"
    assert 'edge_cache_level_hits_total{level="disk"}' in text


async def test_full_write_queue_drops_and_counts(tmp_path: Path) -> None:
    metrics = EdgeMetrics()
    disk = DiskLevel(tmp_path, size_bytes=64 * MiB, policy="sieve", fsync=False, metrics=metrics)
    disk.loaded = True  # no writer: the queue only fills
    disk.stored("h", "/old", _entry(b"v1"))
    for i in range(WRITE_QUEUE_LENGTH - 1):
        disk.stored("h", f"/{i}", _entry(b"x"))
    assert len(disk.index) == WRITE_QUEUE_LENGTH
    disk.stored("h", "/old", _entry(b"v2"))  # the newer answer cannot be queued
    assert metric(metrics, "edge_disk_write_drops_total") == 1
    assert disk.index.variants("h", "/old") == []  # nor may the older record be served


async def test_purge_during_a_disk_read_is_not_undone(
    origin: ScriptedOrigin,
    client: aiohttp.ClientSession,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    origin.script("/r", headers=CACHEABLE, body=b"old")
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await get(client, edge, "/r", headers=HOST)
        await _written(edge, 1)
    origin.script("/r", headers=CACHEABLE, body=b"new")
    async with running_edge(origin.url, disk_path=str(tmp_path)) as edge:
        await poll(lambda: edge.ready())
        reading, go_on = threading.Event(), threading.Event()
        read_bytes = Path.read_bytes

        def held_read(self: Path) -> bytes:
            reading.set()
            go_on.wait(10)
            return read_bytes(self)

        monkeypatch.setattr(Path, "read_bytes", held_read)
        request = asyncio.create_task(get(client, edge, "/r", headers=HOST))
        await poll(reading.is_set)
        edge.cache.purge_url("img.example", "/r")  # lands while the record is being read
        go_on.set()
        status, _, body = await request
        assert (status, body) == (200, b"new")


async def test_unusable_disk_path_is_one_config_error(
    origin: ScriptedOrigin, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ConfigError, match=r"^test: cache\.disk_path: cannot use .*/file/cache"):
        async with running_edge(origin.url, disk_path=str(blocker / "cache")):
            pass


async def test_real_edge_restart_serves_disk_objects_and_never_a_corrupt_one(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    # `edge serve` stopped and started again over its disk directory: every intact record
    # is a hit with no origin fetch; the one with a flipped body byte is dropped at the
    # index scan or on its read (its checksum), fetched again and served whole.
    bodies = {f"/r{i}": bytes([65 + i]) * (50_000 + i) for i in range(5)}
    for path, body in bodies.items():
        origin.script(path, headers=CACHEABLE, body=body)
    disk = tmp_path / "disk"
    config = tmp_path / "edge.toml"
    config.write_text(f'[cache]\ndisk_path = "{disk}"\n')
    argv = [*edge_argv("edge-eu-1", origin.url, [], drain_s="0"), "--config", str(config)]
    edge = await spawn(argv)
    try:
        for path in bodies:
            assert await _read(client, f"http://{edge.fields['content']}{path}") == bodies[path]
        await poll(lambda: len(_records(disk)) == len(bodies))
    finally:
        await stop(edge)
    victim = _records(disk)[0]
    data = bytearray(victim.read_bytes())
    data[-1000] ^= 0x01
    victim.write_bytes(bytes(data))
    before = dict(origin.fetches)
    edge = await spawn(argv)
    try:
        await poll(lambda: any("event=disk_index_loaded" in line for line in edge.log))
        for path, body in bodies.items():
            async with client.get(f"http://{edge.fields['content']}{path}", headers=HOST) as resp:
                assert (resp.status, await resp.read()) == (200, body)
    finally:
        await stop(edge)
    again = [path for path in bodies if origin.fetches[path] != before[path]]
    assert len(again) == 1, again  # the corrupt one only, fetched once more
