"""The load report an edge pushes to every router: one definition for sender and receiver.

The router answers a report with a small JSON ReportReply: {"result": "accepted"} and,
when the edge still owes purges (it was unreachable when they fanned out), "purges": the
oldest MAX_REPLY_PURGES of them. The edge applies them by id and lists their ids as
"acks" in its next report, which tells every router they are done. Both fields are
optional on the wire: an older router or edge ignores them.

A report may also carry "hot" (the edge's current top objects, at most MAX_HOT
[url, count] pairs, for pre-warming by popularity) and "prewarm" (the progress of its
recent pre-warm tasks, at most MAX_PROGRESS_TASKS): both bounded so that the largest
possible report stays under MAX_REPORT_BYTES (32 hot URLs of 256 characters, 32 acks
and 4 task progresses come to about 11 KiB).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

from cdn.errors import ReportError
from cdn.jsonbody import JsonBodyError, decode_json_object
from cdn.prewarm import MAX_HOT, MAX_PROGRESS_TASKS, HotObject, PrewarmProgress
from cdn.purge import Purge

REPORT_PATH = "/api/v1/report"  # on each router's control port; POST, Bearer token
# The same reports over one long-lived WebSocket per edge and router: a text message per
# report, the ReportReply comes back as a text message (docs/control-api.md).
CHANNEL_PATH = "/api/v1/channel"
EdgeStatus = Literal["up", "degraded", "draining"]
EDGE_STATUSES: tuple[EdgeStatus, ...] = ("up", "degraded", "draining")
MAX_REPORT_BYTES = 16384  # the hot set and pre-warm progress need room (see above)
MAX_REPORT_DEPTH = 8  # a report is one flat object; room for nested fields to come
MAX_ACKS = 32  # purge ids acknowledged per report (32 x 36 characters fit the size limit)
MAX_REPLY_PURGES = 32  # purges per reply; an edge that owes more gets the rest next time
# Bounds of a report's values: anything past them is a broken or lying edge, refused 400.
MAX_SEQ = 2**53  # exact in every JSON implementation (RFC 8259 §6)
MAX_COUNT = 2**31  # in-flight requests, open tunnels
MAX_RPS = 1e9  # rps and capacity_rps (the configs' own capacity bound)
# rps / capacity: 100 is a hundred times over capacity, far past where an edge stops
# answering; a larger value is not a measurement.
MAX_UTILIZATION = 100.0
MAX_REPLY_BYTES = 256 * 1024
MAX_REPLY_DEPTH = 4  # {"purges": [{selector}]}


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
    acks: tuple[str, ...] = ()  # purge ids applied from replies since the last report
    # Open WebSocket tunnels (already weighed in utilization). Absent in reports from
    # edges older than the field: read as 0.
    tunnels: int = 0
    hot: tuple[HotObject, ...] = ()  # the edge's top objects lately, most requested first
    prewarm: tuple[PrewarmProgress, ...] = ()  # its recent pre-warm tasks' progress

    def to_json(self) -> bytes:
        raw = asdict(self)
        del raw["hot"], raw["prewarm"]
        if not self.acks:
            del raw["acks"]
        if self.hot:
            raw["hot"] = [[h.url, h.count] for h in self.hot]
        if self.prewarm:
            raw["prewarm"] = [p.to_dict() for p in self.prewarm]
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes) -> LoadReport:
        """Decode and validate; every defect raises ReportError naming the field."""
        try:
            raw = decode_json_object(body, max_bytes=MAX_REPORT_BYTES, max_depth=MAX_REPORT_DEPTH)
        except JsonBodyError as exc:
            raise ReportError(f"report: {exc}") from None
        return cls(
            node=_text(raw, "node"),
            seq=_count(raw, "seq", MAX_SEQ),
            status=cast(EdgeStatus, _status(raw)),
            inflight=_count(raw, "inflight", MAX_COUNT),
            rps=_number(raw, "rps", MAX_RPS),
            capacity_rps=_number(raw, "capacity_rps", MAX_RPS),
            utilization=_number(raw, "utilization", MAX_UTILIZATION),
            cache_hit_ratio=_number(raw, "cache_hit_ratio", 1.0),
            acks=_acks(raw.get("acks", [])),
            tunnels=_count(raw, "tunnels", MAX_COUNT) if "tunnels" in raw else 0,
            hot=tuple(HotObject.from_list(h) for h in _bounded(raw, "hot", MAX_HOT)),
            prewarm=tuple(
                PrewarmProgress.from_dict(p) for p in _bounded(raw, "prewarm", MAX_PROGRESS_TASKS)
            ),
        )


@dataclass(frozen=True, slots=True)
class ReportReply:
    """The router's answer to an accepted report: the purges this edge still owes."""

    result: str
    purges: tuple[Purge, ...] = ()

    def to_json(self) -> bytes:
        raw: dict[str, Any] = {"result": self.result}
        if self.purges:
            raw["purges"] = [p.to_dict() for p in self.purges]
        return json.dumps(raw, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, body: bytes) -> ReportReply:
        """Decode a reply; an empty body (an older router's 204) is a plain acceptance."""
        if not body.strip():
            return cls("accepted")
        try:
            raw = decode_json_object(body, max_bytes=MAX_REPLY_BYTES, max_depth=MAX_REPLY_DEPTH)
        except JsonBodyError as exc:
            raise ReportError(f"reply: {exc}") from None
        purges = raw.get("purges", [])
        if not isinstance(purges, list) or len(purges) > MAX_REPLY_PURGES:
            raise ReportError(f"purges: expected a list of at most {MAX_REPLY_PURGES}")
        result = raw.get("result", "accepted")
        return cls(str(result), tuple(Purge.from_dict(p, need_id=True) for p in purges))


def _bounded(raw: dict[str, Any], key: str, limit: int) -> list[Any]:
    value = raw.get(key, [])
    if not isinstance(value, list) or len(value) > limit:
        raise ReportError(f"{key}: expected a list of at most {limit}")
    return value


def _acks(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_ACKS:
        raise ReportError(f"acks: expected a list of at most {MAX_ACKS} purge ids")
    if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in value):
        raise ReportError("acks: expected purge ids")
    return tuple(value)


def _count(raw: dict[str, Any], key: str, hi: int) -> int:
    value = raw.get(key)
    # bool is an int subclass; a JSON true is never a count.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi:
        raise ReportError(f"{key}: expected a whole number in 0..{hi}, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(raw: dict[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ReportError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _number(raw: dict[str, Any], key: str, hi: float) -> float:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ReportError(f"{key}: expected a number, got {_short(value)}")
    # NaN fails both comparisons; json.loads reads NaN and Infinity (RFC 8259 §6 has neither).
    if not 0 <= value <= hi:
        raise ReportError(f"{key}: expected a finite number in 0..{hi:g}, got {_short(value)}")
    return float(value)


def _status(raw: dict[str, Any]) -> str:
    status = _text(raw, "status")
    if status not in EDGE_STATUSES:
        raise ReportError(f"status: expected one of {sorted(EDGE_STATUSES)}, got {status!r}")
    return str(status)
