"""The `[armour]` settings: what the edge's content port allows a client before it is cut.

Defaults follow the anchors: a request head must be complete within 10 s of its first
byte (HAProxy's `timeout http-request` as usually set; Varnish's `timeout_idle` is 5 s,
nginx's `client_header_timeout` 60 s); each body read within 30 s (Varnish
`timeout_idle` between body reads, nginx `client_body_timeout` 60 s); an idle keep-alive
connection is closed after 75 s (nginx `keepalive_timeout`; aiohttp's own 3630 s keeps a
slowloris's sockets for an hour). The connection caps are generous: a benchmark client
with 32 connections, or a busy NAT, never meets them; a flood of sockets from one address
does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from cdn.config import MAX_TIMER_S
from cdn.jsonlog import LOG_BACKUPS, LOG_MAX_BYTES, LOG_QUEUE, JsonLogSettings, parse_json_log
from cdn.tomltable import Table
from edge.filters import MAX_URL_BYTES, RULES
from edge.ratelimit import Network, RateSettings

HEAD_TIMEOUT_S = 10.0
BODY_READ_TIMEOUT_S = 30.0
KEEPALIVE_TIMEOUT_S = 75.0
MAX_CONNECTIONS = 10_000  # open client connections on the content (and TLS) port
MAX_CONNECTIONS_PER_CLIENT = 256  # from one client address (the socket's peer)
MAX_CONNECTIONS_LIMIT = 10_000_000  # beyond this a value is a typo
MAX_URL_LIMIT = 1024 * 1024
MAX_RATE_RPS = 1e9


@dataclass(frozen=True, slots=True)
class ArmourSettings:
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_read_timeout_s: float = BODY_READ_TIMEOUT_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    max_url_bytes: int = MAX_URL_BYTES
    log_only: frozenset[str] = frozenset()  # filter rules that count but do not refuse
    rate: RateSettings = RateSettings()  # noqa: RUF009 (frozen) per-client rate limits (edge/ratelimit.py)


def parse_armour(t: Table) -> ArmourSettings:
    """The `[armour]` table, validated (each key optional)."""

    def seconds(key: str, default: float) -> float:
        return t.real(key, 0, MAX_TIMER_S, default, lo_open=True)

    with t:
        return ArmourSettings(
            head_timeout_s=seconds("head_timeout_s", HEAD_TIMEOUT_S),
            body_read_timeout_s=seconds("body_read_timeout_s", BODY_READ_TIMEOUT_S),
            keepalive_timeout_s=seconds("keepalive_timeout_s", KEEPALIVE_TIMEOUT_S),
            max_connections=t.integer("max_connections", 1, MAX_CONNECTIONS_LIMIT, MAX_CONNECTIONS),
            max_connections_per_client=t.integer(
                "max_connections_per_client", 1, MAX_CONNECTIONS_LIMIT, MAX_CONNECTIONS_PER_CLIENT
            ),
            max_url_bytes=t.integer("max_url_bytes", 1, MAX_URL_LIMIT, MAX_URL_BYTES),
            log_only=frozenset(t.item(key, rule, _rule) for key, rule in t.strings("log_only")),
            rate=_rate(t),
        )


def _rate(t: Table) -> RateSettings:
    def rate(key: str) -> float:
        return t.real(key, 0, MAX_RATE_RPS, 0.0)

    per_client = rate("rate_limit_rps")
    per_prefix = rate("prefix_rate_limit_rps")
    return RateSettings(
        per_client_rps=per_client,
        # A burst of two seconds' worth unless given, as nginx users commonly set it.
        per_client_burst=t.real("rate_limit_burst", 0, MAX_RATE_RPS, 2 * per_client),
        per_prefix_rps=per_prefix,
        per_prefix_burst=t.real("prefix_rate_limit_burst", 0, MAX_RATE_RPS, 2 * per_prefix),
        ipv4_prefix=t.integer("ipv4_prefix", 8, 32, 24),
        ipv6_prefix=t.integer("ipv6_prefix", 16, 128, 56),
        trusted_proxies=tuple(t.item(k, v, _network) for k, v in t.strings("trusted_proxies")),
    )


def _network(text: str) -> Network:
    return ipaddress.ip_network(text, strict=False)


def _rule(text: str) -> str:
    if text not in RULES:
        raise ValueError(f"expected a filter rule ({', '.join(RULES)}), got {text!r}")
    return text


# The `[access_log]` table (edge/access_log.py): the shape of every JSON-lines log.
AccessLogSettings = JsonLogSettings
ACCESS_LOG_MAX_BYTES, ACCESS_LOG_BACKUPS, ACCESS_LOG_QUEUE = LOG_MAX_BYTES, LOG_BACKUPS, LOG_QUEUE


def parse_access_log(t: Table) -> AccessLogSettings:
    return parse_json_log(t)
