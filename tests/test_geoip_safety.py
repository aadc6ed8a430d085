"""GeoIP files that change or go bad under the real `georouter serve` (issue 10, items 2-3).

- An in-place rewrite of the database file (what `cp new.mmdb live.mmdb` does: truncate,
  then write) under ECS query load, then SIGHUP: the router keeps answering (it used to die
  of SIGBUS, since the C reader had the file memory-mapped).
- A corrupt database (the embedded GeoLite2-City with every 7th byte between offsets 1,000
  and 4,001,000 overwritten) is refused by `georouter check`, by `serve` at start-up (one
  line naming the file, exit 2) and by a SIGHUP reload, which keeps the old database (it
  used to pass, answer SERVFAIL and segfault after a few hundred queries).
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import dns.asyncquery
import dns.edns
import dns.exception
import dns.message
import dns.rcode
import pytest
from geolite2 import geolite2

from tests.geoip_fixture import write_test_geoip
from tests.test_router_e2e import (
    EU,
    ROOT,
    TOPOLOGY,
    RouterProcess,
    _metrics,
    poll,
    running_router,
)

EMBEDDED = Path(geolite2.filename)
CORRUPT_FROM, CORRUPT_TO, CORRUPT_EVERY = 1_000, 4_001_000, 7
LOAD_CLIENTS = 4  # concurrent ECS clients, each one query at a time
ANSWERS_AFTER = 50  # consecutive answers that show the router still works
# A whole test's deadline, under pytest's 120 s: a wedged router fails it, not hangs it.
DEADLINE_S = 100.0
LOAD_WAIT_S = 30.0  # generous: other jobs may share the cores (a functional deadline)


def corrupt_copy(path: Path) -> Path:
    """The embedded database with every 7th byte in [1,000, 4,001,000) overwritten."""
    image = bytearray(EMBEDDED.read_bytes())
    rng = random.Random(7)
    for offset in range(CORRUPT_FROM, CORRUPT_TO, CORRUPT_EVERY):
        image[offset] = rng.randrange(256)
    path.write_bytes(bytes(image))
    return path


def one_line_naming(stderr: str, path: Path) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert str(path) in lines[0] and "geoip" in lines[0], stderr
    assert "Traceback" not in stderr


def run_georouter(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "georouter", *args, "--config", str(TOPOLOGY)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_refuses_a_corrupt_database(tmp_path: Path) -> None:
    corrupt = corrupt_copy(tmp_path / "corrupt.mmdb")
    result = run_georouter("check", "--geoip", str(corrupt))
    assert result.returncode == 2, result.stdout + result.stderr
    one_line_naming(result.stderr, corrupt)


def test_serve_refuses_a_corrupt_database_at_start(tmp_path: Path) -> None:
    corrupt = corrupt_copy(tmp_path / "corrupt.mmdb")
    result = run_georouter(
        "serve", "--geoip", str(corrupt), "--dns", "127.0.0.1:0", "--control", "127.0.0.1:0"
    )
    assert result.returncode == 2, result.stderr
    one_line_naming(result.stderr, corrupt)


async def ecs_query(router: RouterProcess, subnet: str) -> dns.message.Message:
    q = dns.message.make_query("cdn.example.com", "A", use_edns=0)
    q.use_edns(0, options=[dns.edns.ECSOption(subnet, 24)])
    return await dns.asyncquery.udp(q, "127.0.0.1", port=router.dns_port, timeout=2.0)


async def ecs_load(
    router: RouterProcess, seed: int, answered: list[int], stop: asyncio.Event
) -> None:
    """Queries from random /24s (each a GeoIP cache miss), one at a time, until `stop`.

    A flag rather than cancellation ends it: Python 3.11's wait_for (inside dnspython) can
    swallow a cancellation that races with a reply."""
    rng = random.Random(seed)
    while not stop.is_set():
        subnet = f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0"
        try:
            await ecs_query(router, subnet)
            answered[0] += 1
        except (dns.exception.DNSException, OSError):
            await asyncio.sleep(0.01)  # no answer (or a refusal): the count tells


async def keeps_answering(router: RouterProcess) -> None:
    for i in range(ANSWERS_AFTER):
        response = await ecs_query(router, f"81.{i}.69.0")
        assert response.rcode() == dns.rcode.NOERROR
    assert router.process.returncode is None


async def reloaded(router: RouterProcess, result: str) -> bool:
    return f'georouter_reloads_total{{result="{result}"}} 1.0' in await _metrics(router)


@pytest.fixture
async def live_geoip(tmp_path: Path) -> AsyncIterator[Path]:
    live = tmp_path / "live.mmdb"
    shutil.copyfile(EMBEDDED, live)
    yield live


@pytest.mark.parametrize("workers", [1, 2])
async def test_in_place_rewrite_under_ecs_load_then_sighup(
    tmp_path: Path, live_geoip: Path, workers: int
) -> None:
    settings = f'geoip = "{live_geoip}"\ndns_workers = {workers}\n'
    async with asyncio.timeout(DEADLINE_S), running_router(tmp_path, settings) as router:
        answered, stop = [0], asyncio.Event()
        clients = [ecs_load(router, seed, answered, stop) for seed in range(LOAD_CLIENTS)]
        load = [asyncio.create_task(client) for client in clients]
        try:
            await poll(lambda: _at_least(answered, 100), LOAD_WAIT_S)
            # `cp small.mmdb live.mmdb`: truncate the file the router loaded, then write
            small = write_test_geoip(tmp_path / "small.mmdb").read_bytes()
            with live_geoip.open("r+b") as file:
                file.truncate(0)
                file.write(small)
            before = answered[0]
            await poll(lambda: _at_least(answered, before + 200), LOAD_WAIT_S)  # no SIGBUS
            router.process.send_signal(signal.SIGHUP)
            await poll(lambda: reloaded(router, "ok"), LOAD_WAIT_S)
            before = answered[0]
            await poll(lambda: _at_least(answered, before + 200), LOAD_WAIT_S)
        finally:
            stop.set()
            await asyncio.gather(*load, return_exceptions=True)  # each within a query timeout
        await keeps_answering(router)
        # no DNS worker died either (main would restart it on the new file, hiding a SIGBUS)
        assert not [line for line in router.log if "event=worker_exit" in line], router.log


async def _at_least(answered: list[int], count: int) -> bool:
    return answered[0] >= count


async def test_reload_refuses_a_corrupt_database_and_keeps_the_old(
    tmp_path: Path, live_geoip: Path
) -> None:
    settings = f'geoip = "{live_geoip}"\n'
    async with asyncio.timeout(DEADLINE_S), running_router(tmp_path, settings) as router:
        assert await router.addresses("185.60.216.0") <= EU
        # the safe way to update (a new file renamed over the old) of a corrupt file
        os.replace(corrupt_copy(tmp_path / "next.mmdb"), live_geoip)
        router.process.send_signal(signal.SIGHUP)
        await poll(lambda: reloaded(router, "failed"), LOAD_WAIT_S)
        failed = [line for line in router.log if "event=reload result=failed" in line]
        assert len(failed) == 1 and str(live_geoip) in failed[0], router.log
        # the old database still places new networks (not cached before the reload)
        assert await router.addresses("81.2.69.0") <= EU
        assert await router.addresses("2.16.0.0") <= EU
        await keeps_answering(router)
