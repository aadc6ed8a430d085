"""Wiring of one edge process: content server, control server, reporter, signals and drain.

SIGTERM drains: the status turns `draining` (so /healthz answers 503 and a report goes
to every router at once) and new WebSocket upgrades are refused (503); the edge keeps
serving, open tunnels included, for drain_s while resolvers' cached answers expire, then
closes every tunnel with 1001 (going away: chat clients reconnect, through DNS, to another
edge), stops accepting, finishes what is in flight and exits 0.
SIGINT stops at once, cleanly (tunnels closed with 1001 too). SIGHUP reloads the config
file: sites, origins (and their CAs) and certificates change for the next request and
handshake; open connections, tunnels and the cache stay. A reload that fails (a bad file)
logs one line and changes nothing. Listen addresses, the cache, limits and tokens take
effect at the next start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from cdn.config import HostPort
from cdn.logs import setup_logging
from cdn.prewarm import PREWARM_PATH
from cdn.purge import PURGE_PATH
from edge.access_log import AccessLog, access_middleware
from edge.cache import Cache
from edge.config import EdgeConfig, reload_config
from edge.control import control_app
from edge.disk import DiskLevel
from edge.errors import ConfigError, EdgeError
from edge.fast_hit import FastHits
from edge.gate import Gate
from edge.guard import Guard, GuardedRunner
from edge.http_log import ServerLog
from edge.load import LoadSnapshot, LoadTracker
from edge.metrics import EdgeMetrics
from edge.prewarmer import Prewarmer
from edge.proxy import Proxy
from edge.purges import FleetPurges
from edge.reporter import Reporter
from edge.routing import build_routing
from edge.tls import Certificates, TlsSite, TlsTerminator, load_certificates
from edge.tunnel import Tunnels

# In-flight requests get this long to finish once the edge stops accepting.
SHUTDOWN_GRACE_S = 5.0

log = logging.getLogger("edge")


class EdgeServer:
    """One running edge; start() binds both ports, stop() closes everything."""

    def __init__(self, cfg: EdgeConfig, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self.metrics = EdgeMetrics()
        self.cache = Cache(
            capacity_bytes=cfg.cache.size_bytes,
            policy=cfg.cache.eviction,
            max_object_bytes=cfg.cache.max_object_bytes,
            on_evict=self._evicted,
            cookies_private=cfg.cache.cookie_requests == "private-unless-public",
        )
        self.metrics.cache_capacity_bytes.set(cfg.cache.size_bytes)
        self.disk = _disk_level(cfg, self.metrics)
        self.cache.lower = self.disk
        self.tracker = LoadTracker(cfg.capacity_rps, clock(), cfg.websocket.max_tunnels)
        # Certificates and CA files are read here: a bad one stops the edge before it binds.
        certificates = None if cfg.tls is None else load_certificates(cfg.tls, cfg.source)
        self.tls = None if certificates is None else TlsTerminator(certificates, self.metrics)
        routing = build_routing(cfg, self.metrics, clock, _certificate_map(certificates))
        tokens = (cfg.token, *cfg.previous_tokens)
        self.fleet_purges = FleetPurges(
            self.cache, self.metrics, time.monotonic, tokens, lambda: self.proxy.routing.sites
        )
        self.prewarmer = Prewarmer(
            metrics=self.metrics, tokens=tokens, snapshot=self.snapshot,
            concurrency=cfg.prewarm_concurrency, max_utilization=cfg.prewarm_max_utilization,
            clock=time.monotonic,
        )  # fmt: skip
        self.reporter = Reporter(
            cfg.name, cfg.routers, cfg.token, cfg.capacity_rps, self.snapshot,
            self.metrics, cfg.report_interval_s, clock,
            on_purges=self.fleet_purges.apply_from_reply, take_acks=self.fleet_purges.take_acks,
            on_reply=self._purges_synced, annotate=self.prewarmer.annotate,
        )  # fmt: skip
        self.tunnels = Tunnels(cfg.name, cfg.websocket, cfg.limits, self.metrics)
        self.proxy = Proxy(
            cfg, self.cache, routing, self.tracker, self.metrics, clock, self.reporter.wake,
            tunnels=self.tunnels,
        )  # fmt: skip
        self.proxy.tls = self.tls
        self.proxy.hot = self.prewarmer.hot
        self.proxy.prewarm_secret = self.prewarmer.secret
        self.proxy.disk = self.disk
        self.proxy.gate = Gate(
            cfg.armour, self.metrics, self.cache, tokens, lambda: self.proxy.routing.sites
        )
        self._server_log = ServerLog(self.metrics.bad_requests)
        self.access_log = (
            None
            if cfg.access_log.path is None
            else AccessLog(cfg.access_log, self.metrics.access_log_dropped)
        )
        self.guard = Guard(cfg.armour, self.metrics)  # caps and deadlines of the content port
        if cfg.cache.fast_path:
            self.guard.fast = FastHits(self.proxy, self.proxy.gate, self.access_log, clock)
        self._runners: list[web.AppRunner] = []
        self._reporter_task: asyncio.Task[None] | None = None
        self.content: HostPort | None = None
        self.control: HostPort | None = None
        self.tls_address: HostPort | None = None

    def _evicted(self, n: int) -> None:
        self.metrics.evictions.labels(self.cfg.cache.eviction).inc(n)
        self.metrics.cache_level_evictions.labels("memory").inc(n)

    def _purges_synced(self) -> None:
        if self.disk is not None and not self.disk.purges_synced:
            self.disk.purges_synced = True
            log.info("event=disk_purges_synced")

    def ready(self) -> bool:
        """Whether /healthz may say 200: the disk index is loaded and missed purges
        applied (always, without a disk level)."""
        return self.disk is None or self.disk.serving

    def snapshot(self) -> LoadSnapshot:
        return self.tracker.snapshot(self.clock(), self.tunnels.open)

    async def start(self) -> None:
        """Bind the content and control ports and start reporting."""
        await self.proxy.routing.start()
        await self.proxy.upstream.start()
        await self.tunnels.start()
        if self.disk is not None:
            try:
                await self.disk.start()
            except OSError as exc:
                await self.stop()
                why = f"cannot use {self.disk.path}: {exc.strerror or exc}"
                raise ConfigError(self.cfg.source, "cache.disk_path", why) from None
        if self.access_log is not None:
            self.access_log.start()
        limits = self.cfg.limits
        middlewares = [] if self.access_log is None else [access_middleware(self.access_log)]
        content = web.Application(client_max_size=limits.max_body_bytes, middlewares=middlewares)
        content.router.add_route("*", "/{tail:.*}", self.proxy.handle)
        handler_args: dict[str, Any] = {
            "max_line_size": limits.max_line_bytes,
            "max_field_size": limits.max_field_bytes,
            "max_headers": limits.max_headers,
            "keepalive_timeout": self.cfg.armour.keepalive_timeout_s,
        }
        self.content = await self._bind(
            content, self.cfg.listen, "edge.listen", handler_args, self.guard
        )
        if self.tls is not None and self.cfg.tls is not None:
            # The same runner: one set of connections for the content, drained together.
            runner, where = self._runners[-1], self.cfg.tls.listen
            site = TlsSite(runner, where.host, where.port, self.tls)
            self.tls_address = await self._start(site, runner, where, "tls.listen")
        tokens = (self.cfg.token, *self.cfg.previous_tokens)
        control = control_app(
            self.cache, self.metrics, self.snapshot, tokens, lambda: self.proxy.routing.sites,
            ready=self.ready,
            on_scrape=self.disk.update_gauges if self.disk is not None else lambda: None,
        )  # fmt: skip
        control.router.add_post(PURGE_PATH, self.fleet_purges.handle)  # a router's fan-out
        control.router.add_post(PREWARM_PATH, self.prewarmer.handle)
        self.control = await self._bind(control, self.cfg.control, "edge.control", {})
        self.prewarmer.start(self.content)
        self._reporter_task = asyncio.create_task(self.reporter.run())

    def drain(self) -> None:
        """Turn `draining` and tell every router now; serving goes on until stop()."""
        self.tunnels.drain()
        if self.tracker.drain():
            log.info("event=draining name=%s drain_s=%s", self.cfg.name, self.cfg.drain_s)
            self.reporter.wake()

    async def stop(self) -> None:
        """Close tunnels with 1001, stop accepting, let in-flight requests finish, close
        every client and task."""
        # Tunnels first: the runners' cleanup would wait on their handlers, then cut them
        # without a Close frame (1006), and the client would not know to go elsewhere.
        await self.tunnels.close_all()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._reporter_task is not None:
            self._reporter_task.cancel()
            await asyncio.gather(self._reporter_task, return_exceptions=True)
        await self.prewarmer.stop()
        await self.proxy.close()
        if self.disk is not None:
            await self.disk.close()
        await self.tunnels.close()
        await self.proxy.routing.close()
        await self.proxy.upstream.close()
        if self.access_log is not None:
            self.access_log.stop()
            self.access_log = None

    async def reload(self) -> bool:
        """SIGHUP: read the config file again and swap sites, origins and certificates;
        on any error log it (one line) and keep everything as it was."""
        try:
            new = reload_config(self.cfg)
            if (new.tls is None) != (self.tls is None):
                raise ConfigError(new.source, "tls", "adding or removing [tls] needs a restart")
            certificates = None if new.tls is None else load_certificates(new.tls, new.source)
            routing = build_routing(new, self.metrics, self.clock, _certificate_map(certificates))
        except EdgeError as exc:
            self.metrics.reloads.labels("failed").inc()
            log.warning("event=reload_failed error=%s", json.dumps(str(exc)))
            return False
        await routing.start()
        old, self.proxy.routing = self.proxy.routing, routing
        old.retire()
        if self.tls is not None and certificates is not None:
            self.tls.swap(certificates)
        self.metrics.reloads.labels("ok").inc()
        log.info(
            "event=reloaded sites=%s certificates=%s",
            ",".join(site.name for site in routing.sites.sites()),
            ",".join(certificates.expiry) if certificates is not None else "-",
        )
        return True

    async def _bind(
        self,
        app: web.Application,
        where: HostPort,
        key: str,
        handler_args: dict[str, Any],
        guard: Guard | None = None,
    ) -> HostPort:
        # The keyword arguments reach aiohttp's RequestHandler: the header limits, and the
        # logger that turns a client's malformed request into a count (edge.http_log).
        # The content port's connections are guarded (edge/guard.py); the control port's
        # are the operators'.
        args: dict[str, Any] = {
            "access_log": None,
            "logger": self._server_log,
            "shutdown_timeout": SHUTDOWN_GRACE_S,
            **handler_args,
        }
        runner = (
            web.AppRunner(app, **args) if guard is None else GuardedRunner(app, guard=guard, **args)
        )
        await runner.setup()
        self._runners.append(runner)
        return await self._start(web.TCPSite(runner, where.host, where.port), runner, where, key)

    async def _start(
        self, site: web.BaseSite, runner: web.AppRunner, where: HostPort, key: str
    ) -> HostPort:
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(self.cfg.source, key, f"cannot listen on {where}: {exc}") from None
        sockname = runner.addresses[-1]
        return HostPort(str(sockname[0]), int(sockname[1]))


def _disk_level(cfg: EdgeConfig, metrics: EdgeMetrics) -> DiskLevel | None:
    settings = cfg.cache
    if settings.disk_path is None:
        return None
    disk = DiskLevel(
        Path(settings.disk_path),
        size_bytes=settings.disk_size_bytes,
        policy=settings.eviction,
        fsync=settings.disk_fsync,
        metrics=metrics,
    )
    disk.purges_synced = not cfg.routers  # no router: no purge can have been missed
    return disk


def _certificate_map(certificates: Certificates | None) -> dict[str, str]:
    return {} if certificates is None else dict(certificates.certificate_of)


async def run(cfg: EdgeConfig) -> None:
    """Run an edge until SIGINT, or SIGTERM plus drain_s."""
    server = EdgeServer(cfg)
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_sigterm() -> None:
        server.drain()
        loop.call_later(cfg.drain_s, stopping.set)

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    reloads: set[asyncio.Task[bool]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    # Logged once the signal handlers are in place: a supervisor may signal right after.
    tls = "" if server.tls_address is None else f" tls={server.tls_address}"
    sites = ",".join(site.name for site in server.proxy.routing.sites.sites())
    log.info(
        "event=listening name=%s content=%s%s control=%s origin=%s sites=%s",
        cfg.name, server.content, tls, server.control, cfg.origin or "-", sites,
    )  # fmt: skip
    try:
        await stopping.wait()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGHUP)
        await server.stop()
        log.info("event=stopped name=%s", cfg.name)


def serve(cfg: EdgeConfig) -> int:
    """The `edge serve` command: structured log lines on stderr, exit 0 on a clean stop."""
    setup_logging()
    asyncio.run(run(cfg))
    return 0
