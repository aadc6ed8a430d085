"""Every Prometheus metric the router exports: one catalogue, one registry per router.

The per-query counters are plain dict and list increments on the hot path (tens of
nanoseconds, no locks: prometheus_client's own Histogram takes a mutex per observation),
kept in georouter/tallies.py, which imports no Prometheus; `HotPathCollector` turns them
into Prometheus samples only when /metrics is scraped.
Label values are bounded: transports, qtypes, rcodes, region and node names from config.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from georouter.tallies import BucketTally, HotPathTallies


def cumulative(tally: BucketTally) -> list[tuple[str, float]]:
    """The `le` buckets of a tally's exposition, +Inf last."""
    les = [*map(floatToGoString, tally.bounds), "+Inf"]
    running, out = 0, []
    for le, count in zip(les, tally.counts, strict=True):
        running += count
        out.append((le, float(running)))
    return out


class HotPathCollector(Collector):
    """Exports the tallies of this process plus those DNS workers last sent (`elsewhere`)."""

    def __init__(self, tallies: HotPathTallies) -> None:
        self.tallies = tallies
        self.elsewhere: dict[object, HotPathTallies] = {}

    def collect(self) -> Iterator[Metric]:
        t = self.tallies
        if self.elsewhere:
            t = HotPathTallies()
            for part in (self.tallies, *self.elsewhere.values()):
                t.add(part)
        queries = CounterMetricFamily(
            "georouter_dns_queries",
            "DNS queries answered, by transport, question type and response code.",
            labels=["transport", "qtype", "rcode"],
        )
        for key, n in list(t.queries.items()):
            queries.add_metric(list(key), n)
        yield queries
        answers = CounterMetricFamily(
            "georouter_answers",
            "Edge node addresses handed out in A/AAAA answers, by region and node.",
            labels=["region", "node"],
        )
        for (region, node), n in list(t.answers.items()):
            answers.add_metric([region, node], n)
        yield answers
        yield from _armour_metrics(t)
        decisions = CounterMetricFamily(
            "georouter_decisions",
            "Routing decisions by reason: geo (client's own region), drained (own region, a "
            "draining node skipped), spillover (own region saturated), failover (own region "
            "down), fail_open (nothing healthy anywhere: configured nodes served), "
            "fail_closed (nothing healthy, all_down = servfail); by geo-routed service.",
            labels=["service", "reason"],
        )
        for (service, reason), n in list(t.decisions.items()):
            decisions.add_metric([service, reason], n)
        yield decisions
        dropped = CounterMetricFamily(
            "georouter_dns_dropped",
            "Datagrams or connections dropped without an answer, by reason (oversized, "
            "unanswerable, send_failed, stale, tcp_bad_length, tcp_connection_limit, "
            "tcp_client_limit, tcp_idle_closed).",
            labels=["reason"],
        )
        for reason, n in list(t.dropped.items()):
            dropped.add_metric([reason], n)
        yield dropped
        yield CounterMetricFamily(
            "georouter_geoip_lookups",
            "Client locations resolved (GeoIP database reads plus cache hits).",
            value=t.geoip_lookups,
        )
        yield CounterMetricFamily(
            "georouter_geoip_cache_hits",
            "Client locations served from the per-network GeoIP cache.",
            value=t.geoip_cache_hits,
        )
        yield CounterMetricFamily(
            "georouter_geoip_corrupt_records",
            "GeoIP data records that failed to decode (their addresses got no location).",
            value=t.geoip_corrupt_records,
        )
        durations = HistogramMetricFamily(
            "georouter_dns_query_duration_seconds",
            "Time from a query's arrival to its response leaving, by transport.",
            labels=["transport"],
        )
        for transport, tally in t.durations.items():
            durations.add_metric([transport], cumulative(tally), tally.total)
        yield durations
        yield HistogramMetricFamily(
            "georouter_ecs_scope_prefix_length",
            "SCOPE PREFIX-LENGTH returned in ECS answers (RFC 7871 §7.2.1).",
            buckets=cumulative(t.ecs_scopes),
            sum_value=t.ecs_scopes.total,
        )


class ConfiguredNode(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def capacity_rps(self) -> float: ...
    @property
    def role(self) -> str: ...


class RouterMetrics:
    """The router's registry and its metrics; one instance per running router."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tallies = HotPathTallies()
        self.hot_path = HotPathCollector(self.tallies)
        self.registry.register(self.hot_path)
        r = self.registry
        self.tcp_connections = Gauge(
            "georouter_dns_tcp_connections",
            "Open DNS-over-TCP connections.",
            registry=r,
        )
        self.node_healthy = Gauge(
            "georouter_node_healthy",
            "1 if the node is eligible for answers (up and not draining), else 0.",
            ["region", "node"],
            registry=r,
        )
        self.node_state = Gauge(
            "georouter_node_state",
            "1 for the node's current state (unknown, up, down, draining, saturated).",
            ["node", "state"],
            registry=r,
        )
        self.node_utilization = Gauge(
            "georouter_node_utilization",
            "Utilisation (0..1+) from the node's latest load report.",
            ["region", "node"],
            registry=r,
        )
        self.node_capacity = Gauge(
            "georouter_node_capacity_rps",
            "The node's configured capacity_rps (answer share against capacity share).",
            ["region", "node"],
            registry=r,
        )
        self.node_report_age = Gauge(
            "georouter_node_report_age_seconds",
            "Seconds since the node's latest accepted load report.",
            ["node"],
            registry=r,
        )
        self.reports = Counter(
            "georouter_reports",
            "Load reports received, by result "
            "(accepted, rejected, unauthorized, unknown_node, stale).",
            ["result"],
            registry=r,
        )
        self.auth_refused = Counter(
            "georouter_auth_refused",
            "Control requests refused for their credential, by action (report, channel, "
            "operator) and reason (missing, unknown: 401; wrong_node: a node's report signed "
            "with another's token; not_operator: an operator action with a node's token).",
            ["action", "reason"],
            registry=r,
        )
        self.channels_open = Gauge(
            "georouter_channels_open",
            "Open report channels (one long-lived WebSocket per edge, for instant failover).",
            registry=r,
        )
        self.channel_closes = Counter(
            "georouter_channel_closes",
            "Report channels closed, by reason (drain, lost, heartbeat_timeout, replaced, "
            "rejected, unbound, router_shutdown; over_limit: refused before opening); lost "
            "and heartbeat_timeout take the node out of answers.",
            ["reason"],
            registry=r,
        )
        self.probes = Counter(
            "georouter_probes",
            "Active health probes, by node and result (ok, fail).",
            ["node", "result"],
            registry=r,
        )
        self.state_changes = Counter(
            "georouter_node_state_changes",
            "Node state transitions, by node and new state.",
            ["node", "state"],
            registry=r,
        )
        self.reloads = Counter(
            "georouter_reloads",
            "Config and GeoIP reloads (SIGHUP), by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.snapshot_version = Gauge(
            "georouter_fleet_snapshot_version",
            "Version of the fleet snapshot the DNS path is answering from.",
            registry=r,
        )
        self.purges = Counter(
            "georouter_purges",
            "Fleet purges, by result (complete: every node confirmed within the fan-out "
            "deadline; incomplete: some pending or failed; rejected; unauthorized).",
            ["result"],
            registry=r,
        )
        self.fanout_duration = Histogram(
            "georouter_purge_fanout_seconds",
            "Time from a purge until every node confirmed it or the fan-out deadline passed.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
            registry=r,
        )
        self.purges_owed = Gauge(
            "georouter_purges_pending",
            "Purges a node has not yet confirmed (they ride on the replies to its reports).",
            ["node"],
            registry=r,
        )
        self.prewarm_tasks = Counter(
            "georouter_prewarm_tasks",
            "Pre-warm tasks this router made, by origin (api: an operator's request; "
            "popularity: a region's answers changed and its hot set was sent).",
            ["origin"],
            registry=r,
        )
        self.prewarm_requests = Counter(
            "georouter_prewarm_requests",
            "POST /api/v1/prewarm requests, by result (accepted, rejected: bad input, "
            "over_quota, unauthorized).",
            ["result"],
            registry=r,
        )
        self.prewarm_urls = Counter(
            "georouter_prewarm_urls",
            "Pre-warm URL outcomes the edges reported, by outcome (fetched, cached, failed).",
            ["outcome"],
            registry=r,
        )
        self.bus_connected = Gauge(
            "georouter_bus_connected",
            "1 while the router is connected to the NATS bus and in step with the shared "
            "state; 0 while it answers from its last copy (always 1 without a bus).",
            registry=r,
        )
        self.bus_disconnects = Counter(
            "georouter_bus_disconnects",
            "Times the router lost the NATS bus (or failed to reach it).",
            registry=r,
        )

    def set_capacities(self, nodes: Iterable[ConfiguredNode]) -> None:
        """Export the configured capacities; a node removed by a reload leaves the gauge."""
        self.node_capacity.clear()
        for node in nodes:
            if node.role == "edge":  # a shield takes no client share: no capacity share
                self.node_capacity.labels(node.region, node.name).set(node.capacity_rps)


def _armour_metrics(t: HotPathTallies) -> Iterator[Metric]:
    limited = CounterMetricFamily(
        "georouter_rrl_limited",
        "UDP answers held back by response rate limiting, by action (dropped, slipped: sent "
        "truncated or BADCOOKIE; log_only: answered in dry-run mode), reason (answer, nxdomain, "
        "error) and whether the query carried ECS (yes/no: a big resolver's traffic).",
        labels=["action", "reason", "ecs"],
    )
    for (action, reason, ecs), n in list(t.rrl.items()):
        name = {"drop": "dropped", "slip": "slipped"}.get(action, action)
        limited.add_metric([name, reason, ecs], n)
    yield limited
    cookies = CounterMetricFamily(
        "georouter_dns_cookies",
        "DNS COOKIE options received, by outcome: valid, renewed (valid, a fresh one sent), "
        "client_only, bad (not ours or expired: a fresh one sent), malformed (FORMERR).",
        labels=["outcome"],
    )
    for outcome, n in list(t.cookies.items()):
        cookies.add_metric([outcome], n)
    yield cookies
    lines = CounterMetricFamily(
        "georouter_query_log_lines",
        "Query log lines, by result: written (to the file), dropped (the writer's queue, "
        "query_log.queue_size, was full: the disk was slower than the queries).",
        labels=["result"],
    )
    for result, n in list(t.query_log.items()):
        lines.add_metric([result], n)
    yield lines
