"""Active health probes: GET every node's health URL once per interval, all at once.

A probe is ok only for a 200 answered within probe_timeout_s; any other status, a
connection error or a timeout is a failure. Redirects are not followed, so a probe never
reaches anything but the configured control URLs. Results feed Fleet.apply_probe, whose
hysteresis (fall/rise) turns them into node states.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from georouter.config import HealthSettings, Node
from georouter.fleet import Fleet
from georouter.metrics import RouterMetrics

log = logging.getLogger("georouter.prober")


class Prober:
    """Probes the fleet's current nodes (re-read every round, so reloads take effect)."""

    def __init__(
        self,
        fleet: Fleet,
        health: HealthSettings,
        metrics: RouterMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fleet = fleet
        self.health = health  # a reload replaces it
        self._metrics = metrics
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Run one probe round (at most probe_timeout_s), then keep probing in the background.

        The first round completes before start() returns, so the router can bind DNS
        knowing which nodes are up instead of failing open on its first queries."""
        # No cookies, no proxies from the environment: probes go straight to the node.
        # No pool limit: a round probes every node at once, and aiohttp's default of 100
        # connections made the rest wait inside their probe timeout (a fleet of 600 never
        # came up). One connection per node, kept alive between rounds.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            raise_for_status=False,
        )
        started = asyncio.get_running_loop().time()
        await self.probe_all()
        self._task = asyncio.create_task(self._run(started), name="prober")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def probe_all(self) -> None:
        """One round: every node concurrently; returns when each has succeeded or failed."""
        nodes = [status.node for status in self.fleet.statuses.values()]
        results = await asyncio.gather(*(self._probe(node) for node in nodes))
        now = self._clock()
        for node, ok in zip(nodes, results, strict=True):
            self._metrics.probes.labels(node.name, "ok" if ok else "fail").inc()
            self.fleet.apply_probe(node.name, ok, now, node.health_url)

    async def _run(self, started: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self.health.probe_interval_s - (loop.time() - started), 0.0))
            started = loop.time()
            await self.probe_all()

    async def _probe(self, node: Node) -> bool:
        assert self._session is not None, "start() first"
        timeout = aiohttp.ClientTimeout(total=self.health.probe_timeout_s)
        try:
            async with self._session.get(
                node.health_url, timeout=timeout, allow_redirects=False
            ) as response:
                return response.status == 200
        except (aiohttp.ClientError, TimeoutError, ValueError):
            # ValueError: a URL aiohttp cannot use (config validation should prevent it).
            return False
