"""Part 3: how long a crashed or frozen edge keeps being named in the router's answers.

A steady stream of queries (ECS from the victim's region, so the victim is always a
candidate) runs against `georouter serve` in front of the six real edges. Each kill -9
trial kills the victim edge and measures the time from the kill to the first answer of a
run of answers that no longer name it; then the edge is restarted on the same ports and
the stream waits until the router names it again before the next trial. Each SIGSTOP
trial freezes the edge instead (a host that vanished: nothing is closed), measures the
same, then SIGCONTs it and waits until it is named again. The kill is noticed by the
edge's report channel closing; the freeze by the channel heartbeat and the probes.

The peers are not measured: their documented default detection settings are quoted
next to ours (`PEER_DEFAULTS`), since each would first need its own health-check setup.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from dataclasses import dataclass
from ipaddress import IPv4Network

import dns.edns
import dns.exception
import dns.message
import dns.query
import dns.rdatatype

from benchmarks.cdn import Cdn, Edge, start_edge
from benchmarks.processes import BenchError, Endpoint
from benchmarks.report import Table
from georouter.config import RouterConfig

QUERY_INTERVAL_S = 0.005  # a steady 200 queries/s
QUERY_TIMEOUT_S = 0.5
CLEAR_RUN = 20  # answers in a row without the victim (0.1 s) count as "stopped naming it"
TRIAL_TIMEOUT_S = 60.0  # a flapping node is held out up to 10 s (FLAP_HOLD_MAX_S)
BEFORE_CHANNEL_MEDIAN_S = 1.88  # kill -9, probes only (the run before report channels)


@dataclass(frozen=True, slots=True)
class PeerDefault:
    system: str
    settings: str
    detection: str
    source: str


PEER_DEFAULTS = (
    PeerDefault(
        "gdnsd 3.8 http_status",
        "interval 10 s, timeout 5 s (interval/2), down_thresh 10, up_thresh 20",
        "≈ 100 s (10 failed polls x 10 s); back up after 20 good polls ≈ 200 s",
        "gdnsd.config(5) service_types; gdnsd-plugin-http_status(8)",
    ),
    PeerDefault(
        "PowerDNS 4.7 LUA ifurlup",
        "lua-health-checks-interval 5 s, ifurlup timeout 2 s, one failed check",
        "≤ ≈ 7 s (next check + timeout)",
        "pdns_server --config=default; PowerDNS Lua records docs",
    ),
    PeerDefault(
        "Route 53 health checks",
        "request interval 30 s, failure threshold 3",
        "≈ 90 s",
        "AWS Route 53 developer guide, health check settings",
    ),
)


@dataclass(frozen=True, slots=True)
class FailoverResult:
    victim: str
    trials: list[float]  # seconds from the fault to the last answer naming the victim
    fault: str = "kill -9"

    @property
    def median_s(self) -> float:
        return statistics.median(self.trials)

    @property
    def max_s(self) -> float:
        return max(self.trials)


class QueryStream:
    """Paced queries for one service name with one ECS subnet; answers as address sets."""

    def __init__(self, server: Endpoint, name: str, subnet: IPv4Network) -> None:
        self.server = server
        ecs: list[dns.edns.Option] = [
            dns.edns.ECSOption(str(subnet.network_address), subnet.prefixlen)
        ]
        self.query = dns.message.make_query(name, dns.rdatatype.A, use_edns=0, options=ecs)
        self.next_at = time.monotonic()

    def ask(self) -> tuple[float, set[str]]:
        """Send the next query at its slot; (send time, addresses answered)."""
        self.next_at += QUERY_INTERVAL_S
        time.sleep(max(0.0, self.next_at - time.monotonic()))  # pacing, not synchronisation
        sent = time.monotonic()
        try:
            response = dns.query.udp(
                self.query, self.server.host, port=self.server.port, timeout=QUERY_TIMEOUT_S
            )
        except (OSError, dns.exception.DNSException):
            return sent, set()
        return sent, {rr.address for rrset in response.answer for rr in rrset}

    def until(self, predicate_named: bool, address: str, run: int, what: str) -> float:
        """Query until `run` answers in a row name (or not) `address`; when that run began."""
        deadline = time.monotonic() + TRIAL_TIMEOUT_S
        streak, began = 0, 0.0
        while streak < run:
            if time.monotonic() > deadline:
                raise BenchError(f"timed out waiting for the router to {what}")
            sent, addresses = self.ask()
            if (address in addresses) == predicate_named:
                streak, began = streak + 1, began if streak else sent
            else:
                streak = 0
        return began


def _restart(edge: Edge, origin_url: str, router_url: str) -> Edge:
    return start_edge(edge.name, edge.content.host, origin_url, [router_url], edge.ports)


def measure(
    cdn: Cdn,
    victim: str,
    service: str,
    subnet: IPv4Network,
    origin_url: str,
    trials: int,
    *,
    freeze: bool = False,
) -> FailoverResult:
    """`trials` crash-and-recover (or, with `freeze`, SIGSTOP-and-SIGCONT) cycles of one
    edge; the detection time of each.

    A restarted edge replaces the dead one in `cdn.edges`, so the CDN's teardown stops it.
    """
    address = cdn.edges[victim].content.host
    stream = QueryStream(cdn.router.dns, service, subnet)
    times: list[float] = []
    for _ in range(trials):
        stream.until(True, address, CLEAR_RUN, f"name {victim}")
        edge = cdn.edges[victim]
        faulted_at = time.monotonic()
        if freeze:
            os.kill(edge.service.pid, signal.SIGSTOP)
        else:
            edge.service.kill()
        try:
            cleared_at = stream.until(False, address, CLEAR_RUN, f"stop naming {victim}")
        finally:
            if freeze:
                os.kill(edge.service.pid, signal.SIGCONT)
        times.append(cleared_at - faulted_at)
        if not freeze:
            cdn.edges[victim] = _restart(edge, origin_url, cdn.router.control_url)
    stream.until(True, address, CLEAR_RUN, f"name {victim} again")
    return FailoverResult(victim, times, "SIGSTOP" if freeze else "kill -9")


def failover_table(results: list[FailoverResult], config: RouterConfig) -> Table:
    """Our measured detection times next to the peers' documented defaults."""
    health = config.health
    ours = (
        f"report channel (closed: out at once; heartbeat {health.channel_heartbeat_s:g} s); "
        f"probe every {health.probe_interval_s:g} s, timeout {health.probe_timeout_s:g} s, "
        f"fall {health.fall}, rise {health.rise}; report expiry {health.report_expiry_s:g} s"
    )
    rows = [
        [
            f"georouter, {r.fault} (georouter/data/cdn.toml)",
            ours,
            f"measured: median {r.median_s * 1000:.0f} ms, max {r.max_s * 1000:.0f} ms "
            f"over {len(r.trials)} trials",
            "this run",
        ]
        for r in results
    ]
    rows += [[p.system, p.settings, p.detection, p.source] for p in PEER_DEFAULTS]
    victim = results[0].victim if results else "-"
    notes = [
        f"Victim {victim}; a steady {1 / QUERY_INTERVAL_S:.0f} queries/s with ECS from "
        f"its region; time from the fault to the first of {CLEAR_RUN} answers in a row "
        "without it. The edge is back in answers before each trial.",
        f"Before report channels (probes only) kill -9 took a median of "
        f"{BEFORE_CHANNEL_MEDIAN_S:.2f} s. Goals: kill -9 median ≤ 100 ms, SIGSTOP ≤ 1.5 s.",
        "Peers are not measured: their defaults are quoted from their documentation.",
    ]
    columns = ["system", "detection settings", "time until a dead node leaves answers", "source"]
    return Table("Failover: a killed or frozen edge leaves the answers", columns, rows, notes)
