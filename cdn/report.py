"""The load report an edge pushes to every router: one definition for sender and receiver."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

from cdn.errors import ReportError
from cdn.jsonbody import JsonBodyError, decode_json_object

REPORT_PATH = "/api/v1/report"  # on each router's control port; POST, Bearer token
EdgeStatus = Literal["up", "degraded", "draining"]
EDGE_STATUSES: tuple[EdgeStatus, ...] = ("up", "degraded", "draining")
MAX_REPORT_BYTES = 4096
MAX_REPORT_DEPTH = 8  # a report is one flat object; room for nested fields to come


@dataclass(frozen=True, slots=True)
class LoadReport:
    node: str
    seq: int
    status: EdgeStatus
    inflight: int
    rps: float
    capacity_rps: float
    utilization: float
    cache_hit_ratio: float
    # Open WebSocket tunnels (already weighed in utilization). Absent in reports from
    # edges older than the field: read as 0.
    tunnels: int = 0

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes) -> LoadReport:
        """Decode and validate; every defect raises ReportError naming the field."""
        try:
            raw = decode_json_object(body, max_bytes=MAX_REPORT_BYTES, max_depth=MAX_REPORT_DEPTH)
        except JsonBodyError as exc:
            raise ReportError(f"report: {exc}") from None
        return cls(
            node=_text(raw, "node"),
            seq=_count(raw, "seq"),
            status=cast(EdgeStatus, _status(raw)),
            inflight=_count(raw, "inflight"),
            rps=_number(raw, "rps"),
            capacity_rps=_number(raw, "capacity_rps"),
            utilization=_number(raw, "utilization"),
            cache_hit_ratio=_number(raw, "cache_hit_ratio"),
            tunnels=_count(raw, "tunnels") if "tunnels" in raw else 0,
        )


def _count(raw: dict[str, Any], key: str) -> int:
    value = raw.get(key)
    # bool is an int subclass; a JSON true is never a count.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ReportError(f"{key}: expected a whole number >= 0, got {value!r}")
    return value


def _text(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ReportError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _number(raw: dict[str, Any], key: str) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{key}: expected a number, got {value!r}")
    if not 0 <= value < float("inf"):
        raise ReportError(f"{key}: must be a finite number >= 0")
    return float(value)


def _status(raw: dict[str, Any]) -> str:
    status = _text(raw, "status")
    if status not in EDGE_STATUSES:
        raise ReportError(f"status: expected one of {sorted(EDGE_STATUSES)}, got {status!r}")
    return str(status)
