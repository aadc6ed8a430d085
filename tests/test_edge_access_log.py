"""The edge's access log: one JSON line per request from the real edge, rotated by size,
sampled, and dropped-and-counted when its writer falls behind."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
from prometheus_client import CollectorRegistry, Counter

from edge.access_log import AccessLog
from edge.armour import AccessLogSettings
from tests.origin_app import ScriptedOrigin, get, poll, running_edge

pytest_plugins = ("tests.edge_fixtures",)

FIELDS = {
    "time", "client", "site", "method", "path", "status", "bytes", "cache", "origin_s", "total_s",
}  # fmt: skip


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_each_request_is_one_json_line(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.script("/a", body=b"hello", headers={"Cache-Control": "max-age=60"})
    path = tmp_path / "access.log"
    async with running_edge(origin.url, access_log=AccessLogSettings(str(path))) as edge:
        await get(client, edge, "/a")
        await get(client, edge, "/a")
        await get(client, edge, "/a", "PURGE")  # answered by the gate (401): logged too
        await poll(lambda: len(lines(path)) == 3)
    first, second, refused = lines(path)
    assert set(first) == FIELDS
    assert (first["method"], first["path"], first["status"]) == ("GET", "/a", 200)
    assert int(str(first["bytes"])) > len(b"hello")  # the head is counted too
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert first["client"] == "127.0.0.1" and first["site"] == "default"
    assert float(first["origin_s"]) > 0 and second["origin_s"] == 0  # type: ignore[arg-type]
    assert (refused["method"], refused["status"]) == ("PURGE", 401)


async def test_access_log_rotates_by_size_keeping_n_files(
    origin: ScriptedOrigin, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    origin.script("/a", body=b"x", headers={"Cache-Control": "max-age=60"})
    path = tmp_path / "access.log"
    settings = AccessLogSettings(str(path), max_bytes=1024, backups=2)
    async with running_edge(origin.url, access_log=settings) as edge:
        for _ in range(40):  # ~200 bytes a line: several rotations
            await get(client, edge, "/a")
        await poll(lambda: (tmp_path / "access.log.2").exists())
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "access.log", "access.log.1", "access.log.2",
    ]  # fmt: skip
    assert all(p.stat().st_size <= 1024 for p in tmp_path.iterdir())


def test_full_queue_drops_and_counts_never_blocks(tmp_path: Path) -> None:
    dropped = Counter("dropped", "", registry=CollectorRegistry())
    path = tmp_path / "access.log"
    log = AccessLog(AccessLogSettings(str(path), queue_size=2), dropped)
    for i in range(5):  # the writer thread is not running: a disk that has stalled
        log.write(n=i)
    assert dropped._value.get() == 3
    log.start()
    log.stop()
    assert [line["n"] for line in lines(path)] == [0, 1]


def test_sample_keeps_that_fraction(tmp_path: Path) -> None:
    dropped = Counter("dropped", "", registry=CollectorRegistry())
    draws = iter([0.1, 0.9, 0.2, 0.8])
    settings = AccessLogSettings(str(tmp_path / "a.log"), sample=0.5)
    log = AccessLog(settings, dropped, sample=lambda: next(draws))
    assert [log.wanted() for _ in range(4)] == [True, False, True, False]
    log.stop()
