"""Return to region: after a failed region recovers, how soon its clients come back to it.

A population of simulated resolvers in the victim region (queries with an ECS subnet of
it) each caches the router's answer for its TTL and asks again when it expires; the
queries go to `georouter serve` in front of the six real edges. The caches start as in
the steady state (every client holds an answer of the region, its expiry spread evenly
over one answer TTL). Both of the region's edges are kill -9'd; once every client's
cached answer names another region, both are restarted, and the run measures, from the
restart, when the router first names the region again and when 95 % of the clients'
cached answers are back in it. Each trial runs twice: with health-derived TTL (failover
answers carry `policy.degraded_ttl`) and without it (`degraded_ttl` set to `answer_ttl`
and the router reloaded with SIGHUP).
"""

from __future__ import annotations

import heapq
import os
import random
import re
import signal
import statistics
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Network
from pathlib import Path

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from benchmarks.cdn import Cdn, start_edge
from benchmarks.processes import BenchError
from benchmarks.report import Table
from georouter.config import RouterConfig

CLIENTS = 200  # resolvers in the region, each with its own cache of the answer
BACK_SHARE = 0.95  # "back": this share of the clients' cached answers name the region
QUERY_TIMEOUT_S = 0.5
PHASE_TIMEOUT_S = 90.0
RELOAD_TIMEOUT_S = 10.0
SEED = 20261206


@dataclass(frozen=True, slots=True)
class Trial:
    health_ttl: bool
    failover_ttl: int  # the TTL the clients' failover answers carried
    router_back_s: float  # restart → the first answer naming the region again
    clients_back_s: float  # restart → BACK_SHARE of the clients' caches in the region


class Population:
    """Resolvers' caches of one name for one subnet, refreshed at expiry from the router."""

    def __init__(self, cdn: Cdn, name: str, subnet: IPv4Network, home: set[str], ttl: int) -> None:
        self.cdn = cdn
        ecs: list[dns.edns.Option] = [
            dns.edns.ECSOption(str(subnet.network_address), subnet.prefixlen)
        ]
        self.query = dns.message.make_query(name, dns.rdatatype.A, use_edns=0, options=ecs)
        self.home = home
        rng = random.Random(SEED)
        now = time.monotonic()
        # Steady state: every cache holds a home answer, expiries spread over one TTL.
        self.expiry = [(now + rng.uniform(0, ttl), i) for i in range(CLIENTS)]
        heapq.heapify(self.expiry)
        self.at_home = [True] * CLIENTS
        self.home_count = CLIENTS
        self.first_home_answer: float | None = None
        self.failover_ttls: set[int] = set()

    def run_until(self, done: Callable[[], bool], what: str) -> None:
        """Refresh caches as they expire until `done()` holds."""
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while not done():
            if time.monotonic() > deadline:
                raise BenchError(f"return to region: timed out waiting until {what}")
            expires, client = heapq.heappop(self.expiry)
            time.sleep(max(0.0, expires - time.monotonic()))  # the cache's expiry, not a sync
            addresses, ttl = self._ask()
            home = bool(addresses) and addresses <= self.home
            if home and self.first_home_answer is None:
                self.first_home_answer = time.monotonic()
            if addresses and not home:
                self.failover_ttls.add(ttl)
            self.home_count += home - self.at_home[client]
            self.at_home[client] = home
            heapq.heappush(self.expiry, (time.monotonic() + max(ttl, 1), client))

    def _ask(self) -> tuple[set[str], int]:
        server = self.cdn.router.dns
        try:
            response = dns.query.udp(
                self.query, server.host, port=server.port, timeout=QUERY_TIMEOUT_S
            )
        except (OSError, dns.exception.DNSException):
            return set(), 1  # retried a second later
        rrsets = [r for r in response.answer if r.rdtype == dns.rdatatype.A]
        return {rr.address for r in rrsets for rr in r}, min((r.ttl for r in rrsets), default=1)


def _reload(cdn: Cdn, config_path: Path, degraded_ttl: int) -> None:
    """Rewrite policy.degraded_ttl and SIGHUP the router; return once it reloaded."""
    text = re.sub(
        r"(?m)^degraded_ttl = \d+", f"degraded_ttl = {degraded_ttl}", config_path.read_text()
    )
    if "degraded_ttl" not in text:
        text = text.replace("[policy]\n", f"[policy]\ndegraded_ttl = {degraded_ttl}\n", 1)
    config_path.write_text(text)
    before = _reloads(cdn)
    os.kill(cdn.router.service.pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_TIMEOUT_S
    while _reloads(cdn) <= before:
        if time.monotonic() > deadline:
            raise BenchError("return to region: the router did not reload")
        time.sleep(0.05)


def _reloads(cdn: Cdn) -> float:
    with urllib.request.urlopen(f"{cdn.router.control_url}/metrics", timeout=2.0) as response:
        text = response.read().decode()
    match = re.search(r'(?m)^georouter_reloads_total\{result="ok"\} (\S+)', text)
    return float(match.group(1)) if match else 0.0


def trial(
    cdn: Cdn, config: RouterConfig, region: str, subnet: IPv4Network, origin_url: str
) -> tuple[float, float, int]:
    """Kill the region's edges, wait for every client to leave, restart them, time the return."""
    victims = [n.name for n in config.nodes if n.region == region and n.role == "edge"]
    home = {cdn.edges[name].content.host for name in victims}
    service = config.zones[0].services[0]
    clients = Population(cdn, service, subnet, home, config.policy.answer_ttl)
    for name in victims:
        cdn.edges[name].service.kill()
    clients.run_until(lambda: clients.home_count == 0, "every client left the region")
    restarted = time.monotonic()
    clients.first_home_answer = None
    for name in victims:
        edge = cdn.edges[name]
        cdn.edges[name] = start_edge(
            edge.name, edge.content.host, origin_url, [cdn.router.control_url], edge.ports
        )
    clients.run_until(
        lambda: clients.home_count >= BACK_SHARE * CLIENTS, f"{BACK_SHARE:.0%} came back"
    )
    back = time.monotonic() - restarted
    assert clients.first_home_answer is not None
    failover_ttl = max(clients.failover_ttls, default=0)
    return clients.first_home_answer - restarted, back, failover_ttl


def measure(
    cdn: Cdn,
    config: RouterConfig,
    config_path: Path,
    region: str,
    subnet: IPv4Network,
    origin_url: str,
    trials: int,
) -> list[Trial]:
    """`trials` failures and recoveries of `region`, each with and without health TTL."""
    results: list[Trial] = []
    for _ in range(trials):
        for health_ttl in (True, False):
            ttl = config.policy.degraded_ttl if health_ttl else config.policy.answer_ttl
            _reload(cdn, config_path, ttl)
            router_back, back, failover_ttl = trial(cdn, config, region, subnet, origin_url)
            results.append(Trial(health_ttl, failover_ttl, router_back, back))
    _reload(cdn, config_path, config.policy.degraded_ttl)
    return results


def return_table(results: list[Trial], config: RouterConfig, region: str) -> Table:
    rows = []
    for health_ttl in (True, False):
        runs = [t for t in results if t.health_ttl == health_ttl]
        back = [t.clients_back_s for t in runs]
        rows.append(
            [
                "with health-derived TTL" if health_ttl else "without (one TTL for all)",
                f"{max(t.failover_ttl for t in runs)} s",
                f"{statistics.median(t.router_back_s for t in runs):.1f} s",
                f"{statistics.median(back):.1f} s (max {max(back):.1f} s)",
            ]
        )
    notes = [
        f"{CLIENTS} simulated resolvers with ECS from {region}, each caching the answer for "
        f"its TTL (answer_ttl {config.policy.answer_ttl} s); both {region} edges kill -9'd, "
        "restarted once every cache named another region; times from the restart, median "
        f"over {len(results) // 2} trial(s).",
        "The router names the region again after the edges start and pass "
        f"health.rise = {config.health.rise} probes; the rest is resolvers' caches expiring.",
    ]
    columns = [
        "router",
        "TTL of failover answers",
        "router names the region again",
        f"{BACK_SHARE:.0%} of clients back",
    ]
    return Table("Return to region after recovery", columns, rows, notes)
