"""The demo's live table: the router's view of every node, refreshed every few seconds.

Plain text on stdout, one block per refresh, so it scrolls in any terminal and survives
being piped to a file. Rows come from the router's `GET /api/v1/nodes`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

STATUS_INTERVAL_S = 3.0
STATUS_TIMEOUT_S = 2.0
COLUMNS = ("node", "region", "state", "util", "rps", "hit", "answers")
WIDTHS = (12, 6, 9, 5, 7, 5, 8)


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    region: str
    state: str
    utilization: float | None
    rps: float | None
    hit_ratio: float | None
    answers: int | None


def _number(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def row_from_json(raw: Mapping[str, Any]) -> NodeRow:
    """One node of /api/v1/nodes; missing or malformed figures show as '-', never crash."""
    report = raw.get("report")
    load: Mapping[str, Any] = report if isinstance(report, dict) else raw
    answers = _number(raw, "answers")
    return NodeRow(
        node=str(raw.get("name", raw.get("node", "?"))),
        region=str(raw.get("region", "?")),
        state=str(raw.get("state", "?")),
        utilization=_number(load, "utilization"),
        rps=_number(load, "rps"),
        hit_ratio=_number(load, "cache_hit_ratio"),
        answers=None if answers is None else int(answers),
    )


def rows_from_json(body: Any) -> list[NodeRow]:
    """Rows from a /api/v1/nodes body: a list of nodes, or an object with a "nodes" list."""
    items = body.get("nodes", []) if isinstance(body, dict) else body
    if not isinstance(items, list):
        return []
    return [row_from_json(item) for item in items if isinstance(item, dict)]


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
            _fmt(r.answers, "d"),
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
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"-- {when} router not answering /api/v1/nodes: {exc or type(exc).__name__}"
    return render_table(rows_from_json(body), when)
