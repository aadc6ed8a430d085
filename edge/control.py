"""The edge's control port: GET /healthz, GET /metrics, POST /purge.

Purge takes one JSON object naming exactly one selector and answers how many stored
responses it removed::

    POST /purge  Authorization: Bearer <token>
    {"url": "http://cdn.example.com/img/a.png?v=2"}   every variant of that URL
    {"prefix": "http://cdn.example.com/img/"}         every URL of that host under a path
    {"key": "product-42"}                             every response tagged Surrogate-Key
    {"site": "img"}                                   everything a [[sites]] entry stored
    -> 200 {"purged": 3}

A URL's host chooses its site as a request's Host does, so any host of a site purges the
objects the site shares; a host no site serves has nothing stored.

One way in (no HTTP PURGE method): a POST with a body is what every client and proxy
passes unchanged, and the control port is not the content port.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from cdn import auth
from cdn.jsonbody import decode_json_object
from cdn.report import EDGE_STATUSES
from edge.cache import Cache
from edge.config import DEFAULT_SITE
from edge.load import LoadSnapshot
from edge.metrics import EdgeMetrics
from edge.sites import SiteTable, cache_host

MAX_PURGE_BODY_BYTES = 8192
MAX_PURGE_DEPTH = 4  # a purge is one flat object


def control_app(
    cache: Cache,
    metrics: EdgeMetrics,
    snapshot: Callable[[], LoadSnapshot],
    tokens: tuple[str, ...],
    sites: Callable[[], SiteTable],
    *,
    ready: Callable[[], bool] = lambda: True,
    on_scrape: Callable[[], None] = lambda: None,
) -> web.Application:
    """The control application; ``snapshot`` gives the current load figures, ``tokens``
    the purge credentials (edge.token, then edge.previous_tokens: a rotation), ``sites``
    the current site table; /healthz says 503 until ``ready()`` (the disk index is
    loaded); ``on_scrape`` sets gauges owned elsewhere."""
    app = web.Application(client_max_size=MAX_PURGE_BODY_BYTES)
    app.router.add_get("/healthz", _Health(snapshot, ready).handle)
    app.router.add_get("/metrics", _Metrics(cache, metrics, snapshot, on_scrape).handle)
    app.router.add_post("/purge", _Purge(cache, metrics, tokens, sites).handle)
    return app


class _Health:
    def __init__(self, snapshot: Callable[[], LoadSnapshot], ready: Callable[[], bool]) -> None:
        self._snapshot = snapshot
        self._ready = ready

    async def handle(self, request: web.Request) -> web.Response:
        snap = self._snapshot()
        # 503 while draining: a router's probe takes the node out even if reports are lost.
        # 503 before the disk index is loaded: the node would answer misses for its hits.
        status = 503 if snap.status == "draining" or not self._ready() else 200
        return web.json_response(snap.as_dict(), status=status)


class _Metrics:
    def __init__(
        self,
        cache: Cache,
        metrics: EdgeMetrics,
        snapshot: Callable[[], LoadSnapshot],
        on_scrape: Callable[[], None],
    ) -> None:
        self._cache = cache
        self._metrics = metrics
        self._snapshot = snapshot
        self._on_scrape = on_scrape

    async def handle(self, request: web.Request) -> web.Response:
        # Gauges are read at scrape time, so the request path never pays for them.
        m = self._metrics
        snap = self._snapshot()
        m.cache_objects.set(self._cache.objects)
        m.cache_bytes.set(self._cache.bytes)
        m.cache_level_objects.labels("memory").set(self._cache.objects)
        m.cache_level_bytes.labels("memory").set(self._cache.bytes)
        self._on_scrape()
        m.utilization.set(snap.utilization)
        m.hit_ratio.set(snap.cache_hit_ratio)
        for status in EDGE_STATUSES:
            m.status.labels(status).set(1 if status == snap.status else 0)
        body = generate_latest(m.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class _Purge:
    def __init__(
        self,
        cache: Cache,
        metrics: EdgeMetrics,
        tokens: tuple[str, ...],
        sites: Callable[[], SiteTable],
    ) -> None:
        self._sites = sites
        self._cache = cache
        self._metrics = metrics
        self._tokens = tokens

    async def handle(self, request: web.Request) -> web.Response:
        if (refused := refusal(request, self._tokens)) is not None:
            return refused
        try:
            body = await request.read()
            kind, value = _selector(
                decode_json_object(body, max_bytes=MAX_PURGE_BODY_BYTES, max_depth=MAX_PURGE_DEPTH)
            )
            purged = self._purge(kind, value)
        except ValueError as exc:  # JsonBodyError is one
            return _error(400, str(exc))
        self._metrics.purges.labels(kind).inc()
        self._metrics.purged_objects.inc(purged)
        return web.json_response({"purged": purged})

    def _purge(self, kind: str, value: str) -> int:
        return apply_purge(self._cache, self._sites(), kind, value)


def apply_purge(cache: Cache, table: SiteTable, kind: str, value: str) -> int:
    """Remove what one selector names (kind: url, prefix, key or site); how many went.
    The control port's /purge and the content port's PURGE share it."""
    if kind == "key":
        return cache.purge_key(value)
    if kind == "site":
        site = table.by_name.get(value)
        if site is None or site.name == DEFAULT_SITE:
            known = ", ".join(s.name for s in table.sites() if s.name != DEFAULT_SITE)
            raise ValueError(f"site: expected a [[sites]] name ({known or 'none'}), got {value!r}")
        return cache.purge_prefix(site.hosts[0], "")
    slot = purge_slot(table, value)
    if slot is None:
        return 0  # no site serves that host: nothing of it is stored
    host, target = slot
    if kind == "url":
        return cache.purge_url(host, target)
    return cache.purge_prefix(host, target)


def _selector(body: dict[str, Any]) -> tuple[str, str]:
    if len(body) != 1:
        raise ValueError(
            'expected one of {"url": ...}, {"prefix": ...}, {"key": ...}, {"site": ...}'
        )
    ((kind, value),) = body.items()
    if kind not in ("url", "prefix", "key", "site") or not isinstance(value, str) or not value:
        raise ValueError(f"{kind}: expected a non-empty string selector url, prefix, key or site")
    if kind in ("url", "prefix"):
        _split_url(value)
    return kind, value


def purge_slot(table: SiteTable, url: str) -> tuple[str, str] | None:
    """(host, target) as the cache keys the URL's requests; None: no site has its host."""
    authority, target = _split_url(url)
    site = table.choose(authority)
    return None if site is None else (cache_host(site, authority), target)


def _split_url(url: str) -> tuple[str, str]:
    """('host[:port]', '/path?query'): the URL's authority and its target."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an absolute http:// URL, got {url!r}")
    host = parts.netloc.rpartition("@")[2]
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, target


def refusal(request: web.Request, tokens: tuple[str, ...]) -> web.Response | None:
    """None if the request carries one of this edge's tokens, else its 401 with an RFC 6750
    challenge. An edge without a token refuses every purge and pre-warm, never allows any."""
    given = request.headers.get("Authorization")
    if auth.authorized(given, tokens):
        return None
    return _error(401, auth.UNAUTHORIZED, {"WWW-Authenticate": auth.challenge("edge", given)})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
