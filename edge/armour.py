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

from dataclasses import dataclass

from cdn.config import MAX_TIMER_S
from cdn.tomltable import Table
from edge.filters import MAX_URL_BYTES, RULES

HEAD_TIMEOUT_S = 10.0
BODY_READ_TIMEOUT_S = 30.0
KEEPALIVE_TIMEOUT_S = 75.0
MAX_CONNECTIONS = 10_000  # open client connections on the content (and TLS) port
MAX_CONNECTIONS_PER_CLIENT = 256  # from one client address (the socket's peer)
MAX_CONNECTIONS_LIMIT = 10_000_000  # beyond this a value is a typo
MAX_URL_LIMIT = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ArmourSettings:
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_read_timeout_s: float = BODY_READ_TIMEOUT_S
    keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_client: int = MAX_CONNECTIONS_PER_CLIENT
    max_url_bytes: int = MAX_URL_BYTES
    log_only: frozenset[str] = frozenset()  # filter rules that count but do not refuse


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
        )


def _rule(text: str) -> str:
    if text not in RULES:
        raise ValueError(f"expected a filter rule ({', '.join(RULES)}), got {text!r}")
    return text
