"""Every Prometheus metric the edge exports: one catalogue, one registry per edge."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)


class _BeforeCollect(Collector):
    """Registered first, so it runs before any metric is read: the fast path's tallies
    (edge/fast_hit.py) are folded into their metrics here, not per hit."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for hook in self.hooks:
            hook()
        return iter(())


class EdgeMetrics:
    """The edge's registry and its metrics; one instance per running edge."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._before_collect = _BeforeCollect()
        r.register(self._before_collect)
        self.requests = Counter(
            "edge_requests",
            "Client requests, by cache result (hit, miss, stale, revalidated, pass, error), "
            "method and status code.",
            ["cache", "method", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "edge_request_duration_seconds",
            "Time to answer a client request (to the last body byte), by cache result.",
            ["cache"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.origin_duration = Histogram(
            "edge_origin_fetch_duration_seconds",
            "Time for an origin fetch to return its response headers.",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.origin_errors = Counter(
            "edge_origin_errors",
            "Origin fetches that failed, by kind (connect, timeout, status_5xx, invalid, digest).",
            ["kind"],
            registry=r,
        )
        self.origin_timeouts = Counter(
            "edge_origin_timeouts",
            "Origin fetches that timed out, by the limit that fired (connect, read, head, rate).",
            ["limit"],
            registry=r,
        )
        self.digest_mismatches = Counter(
            "edge_digest_mismatches",
            "Origin bodies that did not match their digest field (RFC 9530), by field "
            "(content: Content-Digest, repr: Repr-Digest): never stored, never delivered whole.",
            ["field"],
            registry=r,
        )
        self.digests_verified = Counter(
            "edge_digests_verified",
            "Origin bodies whose sha-256/sha-512 digest fields (RFC 9530) all matched.",
            registry=r,
        )
        self.bad_requests = Counter(
            "edge_bad_requests",
            "Malformed client requests the HTTP parser answered 400, by reason (method, "
            "request_line, header, framing, too_large, other).",
            ["reason"],
            registry=r,
        )
        self.connections_open = Gauge(
            "edge_client_connections",
            "Client connections open on the content and TLS ports.",
            registry=r,
        )
        self.connections_refused = Counter(
            "edge_client_connections_refused",
            "Client connections refused (503, closed) by the cap that was full "
            "(total, per_client).",
            ["cap"],
            registry=r,
        )
        self.client_timeouts = Counter(
            "edge_client_timeouts",
            "Client connections closed by a deadline: head (not a complete request head in "
            "armour.head_timeout_s; answered 408) or body (no body bytes in "
            "armour.body_read_timeout_s).",
            ["phase"],
            registry=r,
        )
        self.bytes_served = Counter(
            "edge_bytes_served",
            "Response body bytes sent to clients.",
            registry=r,
        )
        self.cache_objects = Gauge(
            "edge_cache_objects",
            "Responses held in the cache store.",
            registry=r,
        )
        self.cache_bytes = Gauge(
            "edge_cache_bytes",
            "Bytes held in the cache store.",
            registry=r,
        )
        self.cache_capacity_bytes = Gauge(
            "edge_cache_capacity_bytes",
            "Configured size of the cache store.",
            registry=r,
        )
        self.evictions = Counter(
            "edge_cache_evictions",
            "Responses evicted to make room, by policy.",
            ["policy"],
            registry=r,
        )
        self.cache_level_objects = Gauge(
            "edge_cache_level_objects",
            "Responses held per cache level (memory, disk).",
            ["level"],
            registry=r,
        )
        self.cache_level_bytes = Gauge(
            "edge_cache_level_bytes",
            "Bytes held per cache level (memory, disk).",
            ["level"],
            registry=r,
        )
        self.cache_level_hits = Counter(
            "edge_cache_level_hits",
            "Cache hits by the level that held the response (memory, disk).",
            ["level"],
            registry=r,
        )
        self.fast_path_hits = Counter(
            "edge_fast_path_hits",
            "Fresh memory hits answered before aiohttp built request objects (edge/fast_hit.py);"
            ' also counted in edge_requests_total{result="hit"}.',
            registry=r,
        )
        self.cache_level_evictions = Counter(
            "edge_cache_level_evictions",
            "Responses evicted to make room, per cache level (memory, disk).",
            ["level"],
            registry=r,
        )
        self.cache_level_errors = Counter(
            "edge_cache_level_errors",
            "Cache level I/O errors by level and operation (read: a corrupt, torn or "
            "unreadable record, dropped; write: a failed write or unlink).",
            ["level", "op"],
            registry=r,
        )
        self.disk_write_drops = Counter(
            "edge_disk_write_drops",
            "Responses not written to disk because the write queue was full.",
            registry=r,
        )
        self.parent_requests = Counter(
            "edge_parent_requests",
            "Fetches sent to a parent (shield), by parent URL and result: ok, connect, "
            "timeout, invalid (no usable answer) or unavailable (it answered 502/503/504).",
            ["parent", "result"],
            registry=r,
        )
        self.parent_up = Gauge(
            "edge_parent_up",
            "1 while a parent is healthy, 0 once marked down (edge.parent_fail_after "
            "consecutive failures) until a retry succeeds.",
            ["parent"],
            registry=r,
        )
        self.parent_go_direct = Counter(
            "edge_parent_go_direct",
            "Fetches sent to the origin itself because every parent failed (edge.go_direct).",
            registry=r,
        )
        self.cdn_loops = Counter(
            "edge_cdn_loops",
            "Requests answered 508 because their CDN-Loop already named this node (RFC 8586).",
            registry=r,
        )
        self.coalesced = Counter(
            "edge_coalesced_waits",
            "Requests that waited for another request's origin fetch instead of fetching.",
            registry=r,
        )
        self.uncacheable = Counter(
            "edge_uncacheable_responses",
            "Origin responses not stored, by reason (no-store, private, authorization, status, "
            "vary-star, too-large, partial, no-validator-or-freshness, method, stream, set-cookie, "
            "cookie).",
            ["reason"],
            registry=r,
        )
        self.inflight = Gauge(
            "edge_inflight_requests",
            "Client requests being served now.",
            registry=r,
        )
        self.purges = Counter(
            "edge_purges",
            "Purge requests, by kind (url, prefix, key, site).",
            ["kind"],
            registry=r,
        )
        self.content_purges = Counter(
            "edge_content_purges",
            "PURGE and BAN requests on the content port, by result (ok, unauthorized: no "
            "valid purge token, answered 401); never forwarded to an origin.",
            ["result"],
            registry=r,
        )
        self.filter_matches = Counter(
            "edge_filter_matches",
            "Content requests that matched a filter rule (method, overlong, nul, traversal, "
            "slash, crlf), by action (refused, logged: the rule is in armour.log_only).",
            ["rule", "action"],
            registry=r,
        )
        self.rate_limited = Counter(
            "edge_rate_limited",
            "Content requests answered 429 by a per-client rate limit, by the bucket that was "
            "empty: client (one address) or prefix (its /24 or /56).",
            ["scope"],
            registry=r,
        )
        self.access_log_dropped = Counter(
            "edge_access_log_dropped",
            "Access log lines dropped because the writer's queue was full "
            "(access_log.queue_size): the disk was slower than the requests.",
            registry=r,
        )
        self.fleet_purges = Counter(
            "edge_fleet_purges",
            "Purges from routers (by id), by way (fanout, report) and result "
            "(applied, duplicate: that id was applied before).",
            ["via", "result"],
            registry=r,
        )
        self.purged_objects = Counter(
            "edge_purged_objects",
            "Responses removed by purges.",
            registry=r,
        )
        self.prewarm_tasks = Counter(
            "edge_prewarm_tasks",
            "Pre-warm tasks from routers, by result (queued; duplicate: that id was queued "
            "before; full: refused, the queue had no room for its URLs).",
            ["result"],
            registry=r,
        )
        self.prewarm_urls = Counter(
            "edge_prewarm_urls",
            "Pre-warm fetches, by outcome (fetched: stored now; cached: already fresh here; "
            "failed).",
            ["outcome"],
            registry=r,
        )
        self.prewarm_queue = Gauge(
            "edge_prewarm_queue_depth",
            "Pre-warm URLs waiting or being fetched.",
            registry=r,
        )
        self.prewarm_waits = Counter(
            "edge_prewarm_busy_waits",
            "Times a pre-warm fetcher waited because the edge was busy (utilization at or "
            "above edge.prewarm_max_utilization): real clients first.",
            registry=r,
        )
        self.reports = Counter(
            "edge_reports",
            "Load reports pushed to routers, by router and result (ok, failed).",
            ["router", "result"],
            registry=r,
        )
        self.status = Gauge(
            "edge_status",
            "1 for the edge's current status (up, degraded, draining).",
            ["status"],
            registry=r,
        )
        self.utilization = Gauge(
            "edge_utilization",
            "Requests/s over the configured capacity.",
            registry=r,
        )
        self.hit_ratio = Gauge(
            "edge_cache_hit_ratio",
            "Share of cacheable requests served from the cache (recent window).",
            registry=r,
        )
        self.site_requests = Counter(
            "edge_site_requests",
            "Client requests, by site (its configured name; `default` for edge.origin) and "
            "cache result.",
            ["site", "cache"],
            registry=r,
        )
        self.misdirected = Counter(
            "edge_misdirected_requests",
            "Requests answered 421 (RFC 9110 §15.5.20), by reason (no_site: no site has the "
            "Host; certificate: the Host needs another certificate than the connection's).",
            ["reason"],
            registry=r,
        )
        self.tls_handshakes = Counter(
            "edge_tls_handshakes",
            "TLS handshakes completed on the TLS port.",
            registry=r,
        )
        self.tls_handshake_failures = Counter(
            "edge_tls_handshake_failures",
            "TLS handshakes that failed, by reason (protocol_version, no_shared_cipher, "
            "certificate_rejected, not_tls, timeout, closed, other).",
            ["reason"],
            registry=r,
        )
        self.tls_certificate_expiry = Gauge(
            "edge_tls_certificate_expiry_seconds",
            "When each served certificate expires (notAfter, seconds since the epoch), by "
            "certificate (its first SNI host; `default` for [tls] cert).",
            ["certificate"],
            registry=r,
        )
        self.reloads = Counter(
            "edge_config_reloads",
            "SIGHUP reloads of the configuration, by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.tunnels = Gauge(
            "edge_websocket_tunnels",
            "Open WebSocket tunnels (and upgrades being set up).",
            registry=r,
        )
        self.upgrades = Counter(
            "edge_websocket_upgrades",
            "WebSocket upgrade requests, by result (accepted, or refused: disabled, draining, "
            "limit, handshake, origin_status, origin_error).",
            ["result"],
            registry=r,
        )
        self.ws_messages = Counter(
            "edge_websocket_messages",
            "WebSocket data messages relayed, by direction (client_to_origin, origin_to_client).",
            ["direction"],
            registry=r,
        )
        self.ws_bytes = Counter(
            "edge_websocket_message_bytes",
            "Payload bytes of WebSocket data messages relayed, by direction.",
            ["direction"],
            registry=r,
        )
        self.ws_closes = Counter(
            "edge_websocket_closes",
            "WebSocket tunnels closed, by the code heard (registered codes, else other) and "
            "who closed (client, origin, edge).",
            ["code", "by"],
            registry=r,
        )
        self.ws_pings = Counter(
            "edge_websocket_keepalive_pings",
            "Pings the edge sent on quiet WebSocket legs (ping_interval_s).",
            registry=r,
        )

    def before_collect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the registry is read (a scrape, a test's sample)."""
        self._before_collect.hooks.append(hook)
