"""The router's control API (aiohttp): metrics, health, load reports, node drain.

    GET  /metrics                      Prometheus text format
    GET  /healthz                      200 {"status", "snapshot_version", "nodes_up", "nodes_total"}
    POST /api/v1/report                an edge's LoadReport (Bearer token)
    GET  /api/v1/channel               WebSocket: the same reports on one long-lived
                                       connection; its close takes the node out (channels.py)
    GET  /api/v1/nodes                 every node's state, load, probe and answer counts
    POST /api/v1/nodes/{name}/drain    take a node out of answers at once (Bearer token)
    POST /api/v1/nodes/{name}/undrain  put it back (Bearer token)
    POST /api/v1/nodes/{name}/weight   {"weight": 0..100}: a capacity override (Bearer token)
    POST /api/v1/purge                 purge on every node at once (Bearer token)
    GET  /api/v1/purge/{id}            that purge's progress, node by node
    POST /api/v1/prewarm               pre-warm URLs on a region's edges (Bearer token)
    GET  /api/v1/prewarm/{id}          that task's progress, node by node

The handlers only translate HTTP to Fleet calls and back; decisions live in the Fleet.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdn import auth
from cdn.errors import ReportError
from cdn.report import CHANNEL_PATH, MAX_REPORT_BYTES, REPORT_PATH, LoadReport, ReportReply
from georouter import fleet_api
from georouter.channels import MAX_CHANNELS_PER_NODE, Channels, Receipt
from georouter.controller import Controller
from georouter.credentials import Credentials, Refusal
from georouter.fleet import NODE_STATES, Fleet, NodeStatus, Observe, Transition
from georouter.metrics import RouterMetrics
from georouter.selector import Selector

log = logging.getLogger("georouter.fleet")

# Headroom over the report codec's own limit so that it, not aiohttp, names the defect.
# (A pre-warm request may be larger: fleet_api reads it with its own bound.)
MAX_BODY_BYTES = 2 * MAX_REPORT_BYTES


@dataclass(slots=True)
class ControlPlane:
    """What the control API works on; a reload replaces `credentials` in place."""

    fleet: Fleet
    selector: Selector
    metrics: RouterMetrics
    credentials: Credentials  # per node and for operators (georouter/credentials.py)
    controller: Controller
    clock: Callable[[], float] = time.monotonic
    labelled: set[tuple[str, str]] = field(default_factory=set)  # (region, node) with series


CONTROL = web.AppKey("control", ControlPlane)
CHANNELS = web.AppKey("channels", Channels)


def observer(metrics: RouterMetrics) -> Observe:
    """Log each node state change as one structured line and count it."""

    def observe(t: Transition) -> None:
        log.info("node=%s state=%s reason=%s", t.node, t.new, t.reason)
        if t.old != t.new:
            metrics.state_changes.labels(t.node, t.new).inc()

    return observe


def make_control_app(plane: ControlPlane) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[CONTROL] = plane
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_post(REPORT_PATH, _report)
    channels = Channels(
        lambda: plane.fleet,
        plane.metrics,
        lambda: plane.fleet.config.health.channel_heartbeat_s,
        lambda: MAX_CHANNELS_PER_NODE * len(plane.fleet.statuses),
        lambda: plane.clock(),
    )
    app[CHANNELS] = channels
    accept = lambda body, channel, authorization: _accept(  # noqa: E731
        plane, body, channel=channel, authorization=authorization
    )
    app.router.add_get(CHANNEL_PATH, channels.handler(accept, _channel_refusal))
    app.on_shutdown.append(lambda app: app[CHANNELS].close_all())
    app.router.add_get("/api/v1/nodes", _nodes)
    api = fleet_api.FleetApi(plane.controller, plane.fleet, plane.metrics, operator_refusal)
    fleet_api.add_routes(app, api)  # drain, undrain, weight, purge
    return app


def refresh_node_gauges(plane: ControlPlane) -> None:
    """Bring the per-node gauges up to date (done when scraped, not on every change)."""
    m, now = plane.metrics, plane.clock()
    current = {(s.node.region, name) for name, s in plane.fleet.statuses.items()}
    for region, name in plane.labelled - current:  # removed by a reload
        m.node_healthy.remove(region, name)
        m.node_utilization.remove(region, name)
        for state in NODE_STATES:
            m.node_state.remove(name, state)
        with contextlib.suppress(KeyError):  # only nodes that ever reported have one
            m.node_report_age.remove(name)
    plane.labelled = current
    for name, s in plane.fleet.statuses.items():
        m.node_healthy.labels(s.node.region, name).set(s.state in ("up", "saturated"))
        m.node_utilization.labels(s.node.region, name).set(s.utilization)
        for state in NODE_STATES:
            m.node_state.labels(name, state).set(s.state == state)
        age = s.report_age(now)
        if age is not None:
            m.node_report_age.labels(name).set(age)
        else:  # reset by a reload: no series rather than a frozen, ever older-looking value
            with contextlib.suppress(KeyError):
                m.node_report_age.remove(name)
    m.snapshot_version.set(plane.fleet.snapshot.version)
    plane.controller.refresh_gauges()


def _plane(request: web.Request) -> ControlPlane:
    return request.app[CONTROL]


def operator_refusal(request: web.Request) -> web.Response | None:
    """The one check of every operator action (drain, undrain, weight, purge, prewarm):
    None if the request carries an operator token, else the 401 or 403 to send (counted)."""
    plane = _plane(request)
    refusal = plane.credentials.for_operator(request.headers.get("Authorization"))
    return None if refusal is None else _refused(plane, request, refusal, action="operator")


def _channel_refusal(request: web.Request) -> web.Response | None:
    """Before a channel's upgrade: it must carry some node's token (each report on it is
    then checked against the node it names)."""
    plane = _plane(request)
    refusal = plane.credentials.for_any_node(request.headers.get("Authorization"))
    if refusal is None:
        return None
    plane.metrics.reports.labels("unauthorized").inc()
    return _refused(plane, request, refusal, action="channel")


def _refused(
    plane: ControlPlane, request: web.Request, refusal: Refusal, *, action: str
) -> web.Response:
    plane.metrics.auth_refused.labels(action, refusal.reason).inc()
    authorization = request.headers.get("Authorization")
    if refusal.status == 403:
        return web.json_response({"error": _FORBIDDEN[refusal.reason]}, status=403)
    challenge = auth.challenge("georouter", authorization)
    return web.json_response(
        {"error": auth.UNAUTHORIZED}, status=401, headers={"WWW-Authenticate": challenge}
    )


_FORBIDDEN = {
    "wrong_node": "this token is not the credential of the node the report names",
    "not_operator": "this action needs the operator token",
}


async def _metrics(request: web.Request) -> web.Response:
    plane = _plane(request)
    refresh_node_gauges(plane)
    body = generate_latest(plane.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    fleet = _plane(request).fleet
    states = [s.state for s in fleet.statuses.values()]
    return web.json_response(
        {
            "status": "ok",
            "snapshot_version": fleet.snapshot.version,
            "nodes_up": sum(state in ("up", "saturated") for state in states),
            "nodes_total": len(states),
        }
    )


async def _report(request: web.Request) -> web.Response:
    plane = _plane(request)
    authorization = request.headers.get("Authorization")
    refusal = plane.credentials.for_any_node(authorization)
    if refusal is not None:  # before the body is read: a stranger costs nothing
        plane.metrics.reports.labels("unauthorized").inc()
        return _refused(plane, request, refusal, action="report")
    receipt = _accept(plane, await request.read(), channel=False, authorization=authorization)
    return web.Response(body=receipt.body, status=receipt.status, content_type="application/json")


def _accept(
    plane: ControlPlane, body: bytes, *, channel: bool, authorization: str | None
) -> Receipt:
    """Apply one report, from a POST or a channel message, if it is signed with the
    credential of the node it names."""
    reports = plane.metrics.reports
    try:
        report = LoadReport.from_json(body)
    except ReportError as exc:
        reports.labels("rejected").inc()
        return Receipt(400, _error(str(exc)))
    if report.node not in plane.fleet.statuses:
        reports.labels("unknown_node").inc()
        return Receipt(404, _error(f"unknown node {report.node!r}"))
    refusal = plane.credentials.for_node(authorization, report.node)
    if refusal is not None:
        reports.labels("unauthorized").inc()
        plane.metrics.auth_refused.labels("channel" if channel else "report", refusal.reason).inc()
        return Receipt(refusal.status, _error(_FORBIDDEN.get(refusal.reason, auth.UNAUTHORIZED)))
    owed = plane.controller.on_report(report.node, report.acks)  # after this report's acks
    result = plane.fleet.apply_report(
        report, plane.clock(), channel=channel, owes_purges=bool(owed)
    )
    reports.labels(result).inc()
    if result == "unknown_node":
        return Receipt(404, _error(f"unknown node {report.node!r}"))
    reply = ReportReply(result, owed)
    if result == "accepted":
        plane.controller.on_prewarm_report(report, plane.fleet.statuses[report.node].node)
    return Receipt(200, reply.to_json(), report)


def _error(message: str) -> bytes:
    return json.dumps({"error": message}).encode()


async def _nodes(request: web.Request) -> web.Response:
    plane = _plane(request)
    now = plane.clock()
    nodes = [_node_json(s, plane.selector, now) for s in plane.fleet.statuses.values()]
    return web.json_response({"snapshot_version": plane.fleet.snapshot.version, "nodes": nodes})


def _node_json(s: NodeStatus, selector: Selector, now: float) -> dict[str, Any]:
    r = s.report
    age = s.report_age(now)
    return {
        "name": s.node.name,
        "region": s.node.region,
        "role": s.node.role,
        "state": s.state,
        "reason": s.reason,
        "capacity_rps": s.node.capacity_rps,
        "utilization": s.utilization,
        "rps": r.rps if r else None,
        "inflight": r.inflight if r else None,
        "cache_hit_ratio": r.cache_hit_ratio if r else None,
        "tunnels": r.tunnels if r else None,
        "hot_objects": len(r.hot) if r else None,
        "edge_status": r.status if r else None,
        "seq": r.seq if r else None,
        "report_age_s": None if age is None else round(age, 3),
        "drained": s.api_drained,
        "weight": s.weight,
        "probe_health": s.probe_health,
        "last_probe_ok": s.last_probe_ok,
        "last_probe_age_s": None if s.last_probe_at is None else round(now - s.last_probe_at, 3),
        "answers_since_report": selector.answers_since_report(s.node.name),
    }
