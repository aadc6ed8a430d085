"""`georouter serve`: wire config, GeoIP, fleet, selector, DNS service, control API, probes.

Signals: SIGHUP reloads the config and the GeoIP database; on success the new Geo and
Responder replace the old ones in one step on the event loop (queries never see a mix),
and the fleet keeps the state of the nodes that still exist; on failure the router logs
the one-line reason and keeps answering with what it had. Listen addresses and
router.dns_workers are read once: changing them needs a restart. With dns_workers > 1,
UDP is answered by worker processes (georouter/workers.py) fed every fleet snapshot and
reloaded config. SIGTERM and SIGINT stop everything (workers first) and exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from aiohttp import web

from cdn.config import HostPort, parse_host_port
from cdn.logs import setup_logging
from georouter.armour import Guard, random_secrets
from georouter.config import RouterConfig, load_config
from georouter.control import ControlPlane, make_control_app, observer
from georouter.controller import Controller
from georouter.credentials import Credentials
from georouter.dns_server import CannotListen, DnsService
from georouter.errors import ConfigError
from georouter.fleet import Fleet, FleetSnapshot
from georouter.geo import open_geoip
from georouter.geodb import GeoDatabase
from georouter.metrics import RouterMetrics
from georouter.pipeline import build_answering
from georouter.prober import Prober
from georouter.query_log import QueryLog
from georouter.responder import Responder
from georouter.selector import Selector
from georouter.workers import DnsWorkers

# Report expiry is checked this often, so a silent node leaves answers at most this long
# after report_expiry_s (2.5 s + 0.25 s with the defaults: inside the 3 s goal).
TICK_INTERVAL_S = 0.25

log = logging.getLogger("georouter")


class Router:
    """One running router: start() binds and starts everything, stop() undoes it."""

    def __init__(
        self, config_path: Path, geoip_path: Path | None, dns: str | None, control: str | None
    ) -> None:
        self._paths = (config_path, geoip_path)
        self._listen = (dns, control)
        self.metrics = RouterMetrics()
        self._cookie_secrets = random_secrets()  # used only if the config has no [cookies]
        self.config, self._reader = self._load()
        if self.config.cookies is self._cookie_secrets:  # said once the config is good
            log.warning("event=cookie_secret source=random reason=no_cookies_table")
        self.workers: DnsWorkers | None = None
        self.selector = Selector(
            self.config.policy, self.config.regions, random.Random(), self.config.services
        )
        self.metrics.set_capacities(self.config.nodes)
        self._on_snapshot: Callable[[FleetSnapshot], None] = lambda snapshot: None
        self.fleet = Fleet(self.config, self._publish, observer(self.metrics))
        # [query_log] is read once, like the listen addresses: a change needs a restart.
        self.query_log = self._query_log()
        responder = self._answering(self.config, self._reader)
        guard = Guard.of(self.config, self.metrics.tallies)
        self.dns = DnsService(responder, self.config.router.dns_listens, self.metrics, guard=guard)
        # Reads the state file and applies drains and weights before DNS opens.
        self.controller = Controller(config=self.config, fleet=self.fleet, metrics=self.metrics)
        self._on_snapshot = self.controller.on_snapshot  # pre-warming by popularity
        self.plane = ControlPlane(
            self.fleet, self.selector, self.metrics, Credentials.of(self.config), self.controller
        )
        _warn_shared(self.plane.credentials)
        self.prober = Prober(self.fleet, self.config.health, self.metrics)
        self._runner = web.AppRunner(make_control_app(self.plane), access_log=None)
        self._ticker: asyncio.Task[None] | None = None
        self._reloading = asyncio.Lock()
        self._reload_tasks: set[asyncio.Task[None]] = set()
        self.control = self.config.router.control_listen

    def _query_log(self) -> QueryLog | None:
        settings = self.config.query_log
        if settings.path is None:
            return None
        try:
            return QueryLog(settings, self.metrics.tallies)
        except OSError as exc:
            reason = f"cannot open: {exc.strerror or exc}"
            raise ConfigError(str(self._paths[0]), "query_log.path", reason) from None

    def _answering(self, config: RouterConfig, reader: GeoDatabase) -> Responder:
        tallies = self.metrics.tallies
        return build_answering(config, reader, tallies, self.selector, self.query_log)

    async def start(self) -> None:
        if self.query_log is not None:
            self.query_log.start()
        # Probe first (one round, bounded by probe_timeout_s): DNS then opens knowing which
        # nodes are up, rather than failing open on every query until the first round ends.
        await self.prober.start()
        try:
            await self.controller.start()  # with a bus: its state first (bounded wait)
            await self._bind_dns()
            await self._start_workers()
            await self._bind_control()
        except BaseException:
            await self.prober.stop()
            await self.controller.stop()
            if self.query_log is not None:
                self.query_log.stop()
            raise
        self._ticker = asyncio.create_task(self._tick(), name="report-expiry")

    async def stop(self) -> None:
        for task in list(self._reload_tasks):
            task.cancel()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self.prober.stop()
        await self._runner.cleanup()
        await self.controller.stop()
        if self.workers is not None:
            await self.workers.stop()
        await self.dns.stop()
        if self.query_log is not None:
            self.query_log.stop()  # after DNS: what was queued is written
        self.close_geoip()

    def close_geoip(self) -> None:
        self._reader.close()

    async def reload(self) -> None:
        """SIGHUP: load and verify off the event loop (seconds for a large database), then
        swap everything in one step on it; reloads run one at a time."""
        async with self._reloading:
            try:
                config, reader = await asyncio.to_thread(self._load)
            except Exception as exc:  # a reload must never take the running router down
                self._reload_failed(exc)
                return
            try:
                responder = self._answering(config, reader)
            except Exception as exc:
                reader.close()
                self._reload_failed(exc)
                return
            if self.workers is not None:
                self.workers.reconfigure(config, reader)
            self.selector.reconfigure(config.policy, config.regions, config.services)
            self.metrics.set_capacities(config.nodes)
            self.fleet.reconfigure(config)
            self.controller.reconfigure(config)
            self.prober.health = config.health
            self.plane.credentials = Credentials.of(config)
            _warn_shared(self.plane.credentials)
            self.dns.responder = responder
            self._reader.close()
            self.config, self._reader = config, reader
            self.metrics.reloads.labels("ok").inc()
            log.info("event=reload result=ok nodes=%d", len(config.nodes))

    def start_reload(self) -> None:
        task = asyncio.create_task(self.reload(), name="reload")
        self._reload_tasks.add(task)  # held until done: the loop keeps only weak references
        task.add_done_callback(self._reload_tasks.discard)

    def _reload_failed(self, exc: Exception) -> None:
        self.metrics.reloads.labels("failed").inc()
        log.error("event=reload result=failed reason=%s", _one_line(exc))

    def _load(self) -> tuple[RouterConfig, GeoDatabase]:
        config = _with_listen(load_config(self._paths[0]), *self._listen)
        if config.cookies is None:  # workers and reloads keep the one secret of this start
            config = replace(config, cookies=self._cookie_secrets)
        return config, open_geoip(self._geoip_path(config))

    def _geoip_path(self, config: RouterConfig) -> Path | None:
        return self._paths[1] or config.router.geoip

    def _publish(self, snapshot: FleetSnapshot) -> None:
        self.selector.update(snapshot)
        if self.workers is not None:
            self.workers.publish(snapshot)
        self._on_snapshot(snapshot)

    async def _bind_dns(self) -> None:
        try:
            await self.dns.start(serve_udp=self.config.router.dns_workers == 1)
        except CannotListen as exc:
            raise self._cannot_listen("router.dns_listen", exc.where, exc.error) from None

    async def _start_workers(self) -> None:
        count = self.config.router.dns_workers
        if count == 1:
            return
        workers = DnsWorkers(count, self.dns.udp_sockets, self.metrics, self._reader)
        try:
            await workers.start(self.config, self.fleet.snapshot)
        except BaseException:
            await workers.stop()
            await self.dns.stop()
            raise
        self.workers = workers

    async def _bind_control(self) -> None:
        where = self.config.router.control_listen
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, where.host, where.port).start()
        except OSError as exc:
            await self.dns.stop()
            raise self._cannot_listen("router.control_listen", where, exc) from None
        host, port = self._runner.addresses[0][:2]
        self.control = HostPort(str(host), int(port))

    def _cannot_listen(self, key: str, where: HostPort, exc: OSError) -> ConfigError:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return ConfigError(str(self._paths[0]), key, f"cannot listen on {where}: {reason}")

    async def _tick(self) -> None:
        while True:
            self.fleet.tick(time.monotonic())
            await asyncio.sleep(TICK_INTERVAL_S)


def _warn_shared(credentials: Credentials) -> None:
    """Say when the shared router.token still speaks for nodes or operators."""
    if credentials.shared_nodes:
        log.warning("event=shared_token nodes=%s reason=no_per_node_token",
                    ",".join(credentials.shared_nodes))  # fmt: skip
    if credentials.shared_operator:
        log.warning("event=shared_token operator=router.token reason=no_operator_token")


def _with_listen(config: RouterConfig, dns: str | None, control: str | None) -> RouterConfig:
    """Apply the --dns/--control command-line overrides."""
    router = config.router
    if dns is not None:  # one address, or several separated by commas
        listens = tuple(_flag_address("--dns", part) for part in dns.split(","))
        router = replace(router, dns_listens=listens)
    if control is not None:
        router = replace(router, control_listen=_flag_address("--control", control))
    return replace(config, router=router)


def _flag_address(flag: str, value: str) -> HostPort:
    try:
        return parse_host_port(value)
    except ValueError as exc:
        raise ConfigError("georouter serve", flag, str(exc)) from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


async def _run(router: Router) -> int:
    try:
        await router.start()
    except ConfigError:
        router.close_geoip()
        raise
    dns = ",".join(str(where) for where in router.dns.addresses)
    log.info("event=listening dns=%s control=%s", dns, router.control)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, router.start_reload)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await stopping.wait()
    finally:
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await router.stop()
        log.info("event=stopped")
    return 0


def serve(
    config_path: Path, geoip_path: Path | None, dns: str | None = None, control: str | None = None
) -> int:
    """The `georouter serve` command: log lines on stderr, 0 on a clean stop.

    A bad config, GeoIP file or listen address raises ConfigError (the CLI: exit 2)."""
    setup_logging()

    async def main() -> int:
        return await _run(Router(config_path, geoip_path, dns, control))

    return asyncio.run(main())
