"""The demo's live table: the router's view of every node, refreshed every few seconds.

Plain text on stdout, one block per refresh, so it scrolls in any terminal and survives
being piped to a file. Rows come from the router's `GET /api/v1/nodes` (`ws`: the
WebSockets open on the edge, from its load report); the answer counts
from its `georouter_answers_total` series on /metrics.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

STATUS_INTERVAL_S = 3.0
STATUS_TIMEOUT_S = 2.0
COLUMNS = ("node", "region", "state", "util", "rps", "hit", "ws", "answers", "role")
WIDTHS = (12, 6, 9, 5, 7, 5, 5, 8, 6)


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    region: str
    state: str
    utilization: float | None
    rps: float | None
    hit_ratio: float | None
    answers: int | None
    tunnels: int | None = None  # open WebSockets, from the edge's load report
    role: str = "edge"  # "shield": a parent of the edges, never in DNS answers


def _number(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def row_from_json(raw: Mapping[str, Any], answers: Mapping[str, int]) -> NodeRow:
    """One node of /api/v1/nodes; missing or malformed figures show as '-', never crash."""
    name = str(raw.get("name", "?"))
    return NodeRow(
        node=name,
        region=str(raw.get("region", "?")),
        state=str(raw.get("state", "?")),
        utilization=_number(raw, "utilization"),
        rps=_number(raw, "rps"),
        hit_ratio=_number(raw, "cache_hit_ratio"),
        answers=answers.get(name),
        tunnels=None if (t := _number(raw, "tunnels")) is None else int(t),
        role=str(raw.get("role", "edge")),
    )


def rows_from_json(body: Any, answers: Mapping[str, int]) -> list[NodeRow]:
    """Rows from a /api/v1/nodes body ({"nodes": [...]})."""
    items = body.get("nodes") if isinstance(body, dict) else None
    if not isinstance(items, list):
        return []
    return [row_from_json(item, answers) for item in items if isinstance(item, dict)]


def answers_by_node(metrics_text: str) -> dict[str, int]:
    """Total answers naming each node, from the router's Prometheus text exposition."""
    totals: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "georouter_answers_total" and "node" in sample.labels:
                node = sample.labels["node"]
                totals[node] = totals.get(node, 0) + int(sample.value)
    return totals


def _fmt(value: float | int | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(rows: Iterable[NodeRow], when: str) -> str:
    """A compact fixed-width table headed by the wall-clock time of the snapshot."""
    lines = [f"-- {when} " + "-" * 40, _line(COLUMNS)]
    for r in rows:
        cells = (
            r.node,
            r.region,
            r.state,
            _fmt(r.utilization, ".0%"),
            _fmt(r.rps, ".0f"),
            _fmt(r.hit_ratio, ".0%"),
            _fmt(r.tunnels, "d"),
            _fmt(r.answers, "d"),
            r.role,
        )
        lines.append(_line(cells))
    return "\n".join(lines)


def _line(cells: Iterable[str]) -> str:
    return " ".join(c.ljust(w) for c, w in zip(cells, WIDTHS, strict=True)).rstrip()


async def fetch_table(session: aiohttp.ClientSession, control_url: str) -> str:
    """The current table, or one line saying why the router could not be asked."""
    when = time.strftime("%H:%M:%S")
    try:
        async with session.get(f"{control_url}/api/v1/nodes") as response:
            response.raise_for_status()
            body = await response.json()
        async with session.get(f"{control_url}/metrics") as response:
            response.raise_for_status()
            answers = answers_by_node(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"-- {when} router not answering: {exc or type(exc).__name__}"
    return render_table(rows_from_json(body, answers), when)
