"""The control API's fleet-wide actions: drain, undrain, weight, purge (aiohttp handlers).

    POST /api/v1/nodes/{name}/drain    take a node out of answers on every router
    POST /api/v1/nodes/{name}/undrain  put it back
    POST /api/v1/nodes/{name}/weight   {"weight": w}: 0..100, 1 = as configured
    POST /api/v1/purge                 {"url"|"prefix"|"key": ..., "site"?: ...}
                                       -> 200 {"id", "nodes": {name: done|pending|failed: …}}
    GET  /api/v1/purge/{id}            -> 200 {"id", "selector", "created_at", "nodes"}
    POST /api/v1/prewarm               {"region", "urls": [...], "site"?}
                                       -> 202 {"id", "region", "nodes": {name: progress}}
                                       400 bad input, 429 over the daily quota
    GET  /api/v1/prewarm/{id}          -> 200 the task and each node's progress
    GET  /api/v1/prewarm               -> 200 {"tasks": [{"id", "origin", "region",
                                       "created_at", "urls", "nodes"}]}, newest first

Each write needs the operator token (router.operator_token): `FleetApi.refusal` is the
one check, control.operator_refusal; the handlers translate HTTP to Controller calls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from cdn.jsonbody import decode_json_object, read_limited
from cdn.prewarm import MAX_ORDER_URLS, MAX_URL_CHARS, PrewarmError, valid_site, valid_urls
from cdn.purge import Purge, PurgeError
from georouter.controller import BusUnavailable, Controller, PrewarmRefused
from georouter.fleet import Fleet
from georouter.metrics import RouterMetrics
from georouter.state import valid_weight

log = logging.getLogger("georouter.fleet")


@dataclass(frozen=True, slots=True)
class FleetApi:
    controller: Controller
    fleet: Fleet
    metrics: RouterMetrics
    # None: an operator may act; else the 401/403 to send (control.operator_refusal)
    refusal: Callable[[web.Request], web.Response | None]


# Purge and weight bodies are one flat object; the control app admits 8 KiB.
MAX_BODY_BYTES = 8192
MAX_DEPTH = 4
API = web.AppKey("fleet_api", FleetApi)
# A pre-warm request: up to MAX_ORDER_URLS URLs of MAX_URL_CHARS (the per-task quota,
# [prewarm] max_urls_per_task, is usually far lower and is what a refusal names).
MAX_PREWARM_BODY_BYTES = MAX_ORDER_URLS * (MAX_URL_CHARS + 4) + 1024
MAX_LISTED = 100  # tasks in GET /api/v1/prewarm


def add_routes(app: web.Application, api: FleetApi) -> None:
    app[API] = api
    app.router.add_post("/api/v1/nodes/{name}/drain", _drain)
    app.router.add_post("/api/v1/nodes/{name}/undrain", _undrain)
    app.router.add_post("/api/v1/nodes/{name}/weight", _weight)
    app.router.add_post("/api/v1/purge", _purge)
    app.router.add_get("/api/v1/purge/{id}", _purge_status)
    app.router.add_post("/api/v1/prewarm", _prewarm)
    app.router.add_get("/api/v1/prewarm/{id}", _prewarm_status)
    app.router.add_get("/api/v1/prewarm", _prewarm_list)


async def _drain(request: web.Request) -> web.Response:
    return await _set_drain(request, drained=True)


async def _undrain(request: web.Request) -> web.Response:
    return await _set_drain(request, drained=False)


async def _set_drain(request: web.Request, drained: bool) -> web.Response:
    api = request.app[API]
    if (refused := api.refusal(request)) is not None:
        return refused
    name = request.match_info["name"]
    if name not in api.fleet.statuses:
        return _error(404, f"unknown node {name!r}")
    try:
        await api.controller.set_drained(name, drained)
    except BusUnavailable as exc:
        return _error(503, f"shared state unavailable, nothing changed: {exc}")
    log.info("event=%s node=%s", "drain" if drained else "undrain", name)
    return web.json_response({"node": name, "state": api.fleet.statuses[name].state})


async def _weight(request: web.Request) -> web.Response:
    api = request.app[API]
    if (refused := api.refusal(request)) is not None:
        return refused
    name = request.match_info["name"]
    if name not in api.fleet.statuses:
        return _error(404, f"unknown node {name!r}")
    try:
        body = await _json(request)
        if not isinstance(body, dict) or set(body) != {"weight"}:
            raise ValueError('expected {"weight": number}')
        weight = valid_weight(body["weight"])
    except ValueError as exc:
        return _error(400, str(exc))
    try:
        await api.controller.set_weight(name, weight)
    except BusUnavailable as exc:
        return _error(503, f"shared state unavailable, nothing changed: {exc}")
    log.info("event=weight node=%s weight=%g", name, weight)
    status = api.fleet.statuses[name]
    return web.json_response({"node": name, "weight": status.weight, "state": status.state})


async def _purge(request: web.Request) -> web.Response:
    api = request.app[API]
    if (refused := api.refusal(request)) is not None:
        api.metrics.purges.labels("unauthorized").inc()
        return refused
    try:
        purge = Purge.from_dict(await _json(request), need_id=False)
    except (ValueError, PurgeError) as exc:
        api.metrics.purges.labels("rejected").inc()
        return _error(400, str(exc))
    record = await api.controller.purge(purge)
    return web.json_response({"id": record.purge.id, "nodes": dict(record.nodes)})


async def _purge_status(request: web.Request) -> web.Response:
    record = request.app[API].controller.log.get(request.match_info["id"])
    if record is None:
        return _error(404, "unknown purge id")
    return web.json_response(record.to_dict())


async def _prewarm(request: web.Request) -> web.Response:
    api = request.app[API]
    if (refused := api.refusal(request)) is not None:  # the same check as a purge's
        api.metrics.prewarm_requests.labels("unauthorized").inc()
        return refused
    try:
        raw = await read_limited(request.content.read, MAX_PREWARM_BODY_BYTES)
        body = decode_json_object(raw, max_bytes=MAX_PREWARM_BODY_BYTES, max_depth=MAX_DEPTH)
        region, urls, site = _prewarm_request(body)
        task = await api.controller.prewarm(region, urls, site)
    except (ValueError, PurgeError) as exc:  # JsonBodyError; PrewarmError is a PurgeError
        api.metrics.prewarm_requests.labels("rejected").inc()
        return _error(400, str(exc))
    except PrewarmRefused as exc:
        api.metrics.prewarm_requests.labels("rejected" if exc.status == 400 else "over_quota").inc()
        return _error(exc.status, str(exc))
    api.metrics.prewarm_requests.labels("accepted").inc()
    return web.json_response(task.to_dict(), status=202)


def _prewarm_request(body: dict[str, Any]) -> tuple[str, tuple[str, ...], str | None]:
    unknown = set(body) - {"region", "urls", "site"}
    if unknown:
        raise PrewarmError(f"unknown field {sorted(unknown)[0]!r} (expected region, urls, site)")
    region = body.get("region")
    if not isinstance(region, str) or not region:
        raise PrewarmError("region: expected a region name")
    site = valid_site(body.get("site"))
    return region, valid_urls(body.get("urls"), site, MAX_ORDER_URLS), site


async def _prewarm_status(request: web.Request) -> web.Response:
    task = request.app[API].controller.prewarms.get(request.match_info["id"])
    if task is None:
        return _error(404, "unknown pre-warm task id")
    return web.json_response(task.to_dict())


async def _prewarm_list(request: web.Request) -> web.Response:
    """The latest MAX_LISTED tasks, newest first, without URLs' per-node detail."""
    tasks = request.app[API].controller.prewarms.tasks()[-MAX_LISTED:]
    listed = [
        {"id": t.id, "origin": t.origin, "region": t.region, "created_at": t.created_at,
         "urls": len(t.urls), "nodes": sorted(t.nodes)}
        for t in reversed(tasks)
    ]  # fmt: skip
    return web.json_response({"tasks": listed})


async def _json(request: web.Request) -> dict[str, Any]:
    """The body as one JSON object, its size and depth bounded before it is decoded."""
    return decode_json_object(await request.read(), max_bytes=MAX_BODY_BYTES, max_depth=MAX_DEPTH)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
