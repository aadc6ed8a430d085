"""The edge's content handler: drives the sans-IO cache (edge/cache.py); the relay moves the bytes.

Theory of operation, per request (design.md "The edge"; RFC 9111 §4):

    not GET/HEAD  -> forwarded with its body, never stored; then invalidate (§4.4)
    lookup fresh  -> answered from the cache (client conditionals, Range)
    lookup stale  -> stale-while-revalidate: answered from the cache, one background
                     refresh per key; else revalidated (If-None-Match/If-Modified-Since)
    lookup miss   -> one origin fetch per key at a time (edge/coalesce.py); with one
                     Range, the whole object is filled in the background and the
                     range sent as it arrives (edge/fill.py)
    lookup pass   -> forwarded, never stored (e.g. request no-store)

The origin's answer to a miss or a revalidation goes through the response step
(`Cache.respond`, edge/response_step.py), in the foreground and in the background alike;
`_answer_fill` and `_refresh_from` carry its decision out: Freshen (§4.3.4), ServeStale
(RFC 5861 §4), Store (streamed to the client while it is buffered for the store) or Pass.
An origin that cannot be reached serves the stale entry if stale-if-error allows.

A HEAD miss fills the cache with a GET (as the cache engine expects) and answers the head.

Every answer carries `Via` (RFC 9110 §7.6.3) and this cache's `Cache-Status` member
(RFC 9211). Origin failures become 502/504 in exactly one place (`_origin_failed`).
The origin gets the origin's own Host (from its URL); the client's Host travels in
X-Forwarded-Host, its address in X-Forwarded-For.

With parents (shields, edge.parents), a GET/HEAD's fetch goes to the parent its cache key
hashes to, keeping the client's Host, then the next parent, then the origin
(edge/upstream.py); other methods go to the origin. Every forwarded request names this
node in CDN-Loop, and one that names it already is answered 508 (RFC 8586, edge/cdn_loop.py).

The Host chooses the site (edge/sites.py) and so the origin client: `handle` sets the
request's `Route`, which `self.origin` and `self.route` read (a background refresh started
by the request inherits it). A Host no site has, or one that needs another certificate
than its TLS connection presented, is answered 421 (RFC 9110 §15.5.20).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import assert_never

from aiohttp import web
from multidict import CIMultiDict

from edge.access_log import CACHE_RESULT, SITE
from edge.cache import Cache, Lookup, RequestInfo
from edge.cache_status import cache_status
from edge.cdn_loop import loop_id, names
from edge.coalesce import Coalescer, Flight
from edge.config import EdgeConfig, SiteConfig
from edge.disk import DiskLevel
from edge.entry import CacheEntry
from edge.errors import OriginError
from edge.fill import FillHead, Filling, PassOn
from edge.gate import Gate
from edge.load import CacheResult, LoadTracker
from edge.metrics import EdgeMetrics
from edge.origin import OriginClient, OriginResponse
from edge.prewarm import HotSet
from edge.ranges import Spec, early_length, early_range, satisfiable
from edge.relay import PREWARM_HEADER, Relay, Reply, UploadBody, narrowed, origin_headers
from edge.response_step import Freshen, OriginAnswer, Pass, ResponseStep, ServeStale, Store
from edge.routing import Routing
from edge.sites import cache_host, misdirected
from edge.tls import TlsTerminator
from edge.tunnel import Tunnels
from edge.upstream import Upstream
from edge.websocket import wants_websocket

log = logging.getLogger("edge.proxy")

_CACHEABLE_METHODS = frozenset({"GET", "HEAD"})
_POPULAR = frozenset({"hit", "stale", "revalidated", "miss"})  # answers the cache could give
_METHOD_LABELS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes: its site and that site's origin client."""

    site: SiteConfig
    origin: OriginClient


_ROUTE: ContextVar[Route] = ContextVar("edge_route")


class Proxy:
    """The content handler of one edge; `handle` is its only route."""

    def __init__(
        self,
        cfg: EdgeConfig,
        cache: Cache,
        routing: Routing,
        tracker: LoadTracker,
        metrics: EdgeMetrics,
        clock: Callable[[], float],
        on_status_change: Callable[[], None],
        tunnels: Tunnels | None = None,
    ) -> None:
        self.cfg = cfg
        self.cache = cache
        self.routing = routing  # swapped whole by a reload
        self.tls: TlsTerminator | None = None  # set when the edge has a TLS port
        self.tracker = tracker
        self.metrics = metrics
        self.coalescer = Coalescer()
        self._clock = clock
        self._on_status_change = on_status_change
        self._relay = Relay(cfg.name, metrics, cfg.cache.max_object_bytes)
        self._refreshes: set[asyncio.Task[None]] = set()
        self._fills: dict[str, Filling] = {}  # background fills of range misses, by key
        self.tunnels = tunnels
        self.disk: DiskLevel | None = None  # set when the edge has a disk level
        self._memory_hits = metrics.cache_level_hits.labels("memory")
        self._disk_hits = metrics.cache_level_hits.labels("disk")
        self.gate: Gate | None = None  # PURGE and request filters (edge/gate.py)
        self.upstream = Upstream(cfg.parents, cfg.limits, metrics, clock)
        self._loop_id = loop_id(cfg.name)
        self.hot: HotSet | None = None  # popularity, for pre-warming (edge/prewarm.py)
        self.prewarm_secret: str | None = None  # marks this edge's own pre-warm fetches

    async def close(self) -> None:
        """Cancel background refreshes (at shutdown)."""
        for task in list(self._refreshes):
            task.cancel()
        await asyncio.gather(*self._refreshes, return_exceptions=True)

    @property
    def route(self) -> Route:
        """The current request's site and origin client (set by `handle`)."""
        return _ROUTE.get()

    @property
    def origin(self) -> OriginClient:
        return _ROUTE.get().origin

    def route_for(self, request: web.Request) -> Route | str:
        """The request's route, or why it is misdirected (RFC 9110 §15.5.20)."""
        transport = request.transport
        ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
        site = self.site_for(request.host, ssl_object)
        if isinstance(site, str):
            return site
        return Route(site, self.routing.origins[site.name])

    def site_for(self, host: str, ssl_object: object) -> SiteConfig | str:
        """The site of a request's ``host`` on a connection (``ssl_object``: its TLS,
        None on plain TCP), or why it is misdirected: "no_site", "certificate"."""
        routing = self.routing
        site = routing.sites.choose(host)
        if site is None:
            return "no_site"
        tls = self.tls
        if (
            ssl_object is not None
            and tls is not None
            and misdirected(tls.sni(ssl_object), host, routing.certificate_of)
        ):
            return "certificate"
        return site

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # Before any site's cache or origin: PURGE is the edge's, filtered requests stop.
        if self.gate is not None and (screened := self.gate.screen(request)) is not None:
            return screened
        if self.tunnels is not None and wants_websocket(request.method, request.headers):
            if self._looped(request):  # tunnel.py names this node too: a loop of tunnels
                return (await self._relay.error(request, 508, "error", "cdn-loop")).response
            return await self._tunnel(request, self.tunnels)
        start = self._clock()
        # This edge's own pre-warm fetch (edge/prewarmer.py) is background work: neither
        # client load nor popularity.
        own = self.prewarm_secret is not None and hmac.compare_digest(
            request.headers.get(PREWARM_HEADER, "").encode(errors="replace"),
            self.prewarm_secret.encode(),
        )
        if not own:
            self.tracker.begin(start)
        self.metrics.inflight.inc()
        result: CacheResult = "error"
        status = 500
        route = self.route_for(request)
        if not isinstance(route, str):
            _ROUTE.set(route)
            route.origin.hold()  # a reload's retirement of the client waits for this request
        try:
            if isinstance(route, str):
                self.metrics.misdirected.labels(route).inc()
                reply = await self._relay.error(request, 421, "error", f"misdirected-{route}")
            else:
                reply = await self._answer(request)
            result, status = reply.result, reply.response.status
            return reply.response
        finally:
            end = self._clock()
            if not own:
                self.tracker.end(end, result)
                if self.hot is not None and result in _POPULAR and request.method == "GET":
                    self.hot.add(f"http://{request.host}{request.raw_path}", end)
            self.metrics.inflight.dec()
            method = request.method if request.method in _METHOD_LABELS else "other"
            request[CACHE_RESULT] = result  # for the access log
            self.metrics.requests.labels(result, method, str(status)).inc()
            self.metrics.request_duration.labels(result).observe(max(0.0, end - start))
            if not isinstance(route, str):
                route.origin.release()
                self.metrics.site_requests.labels(route.site.name, result).inc()
                request[SITE] = route.site.name

    async def _tunnel(self, request: web.Request, tunnels: Tunnels) -> web.StreamResponse:
        """An upgrade to the site's origin: never the cache, never a request in flight (a
        tunnel is counted as a tunnel); the site's `websocket` flag may refuse it."""
        route = self.route_for(request)
        if isinstance(route, str):
            self.metrics.misdirected.labels(route).inc()
            reply = await self._relay.error(request, 421, "error", f"misdirected-{route}")
            return reply.response
        site = route.site
        return await tunnels.handle(
            request, site.origin, enabled=site.websocket, ssl=route.origin.tls
        )

    def _looped(self, request: web.Request) -> bool:
        """RFC 8586 §2: the request already passed this node; forwarding it would loop."""
        if not names(request.headers.getall("CDN-Loop", []), self._loop_id):
            return False
        self.metrics.cdn_loops.inc()
        log.warning("event=cdn_loop target=%r cdn_loop=%r", request.raw_path,
                    ", ".join(request.headers.getall("CDN-Loop", [])))  # fmt: skip
        return True

    async def _answer(self, request: web.Request) -> Reply:
        if self._looped(request):
            return await self._relay.error(request, 508, "error", "cdn-loop")
        host = cache_host(self.route.site, request.host)
        req = RequestInfo(
            method=request.method, host=host, target=request.raw_path, headers=request.headers
        )
        if req.method not in _CACHEABLE_METHODS:
            return await self._forward_unsafe(request, req)
        lookup = self.cache.lookup(req, self._clock())
        level = self._memory_hits
        if lookup.outcome == "miss" and self.disk is not None:
            lookup = await self._from_disk(req, lookup)
            level = self._disk_hits
        if lookup.only_if_cached and lookup.outcome != "fresh":
            # RFC 9111 §5.2.1.7: only-if-cached and nothing fit to serve.
            return await self._relay.error(request, 504, "miss", "only-if-cached")
        if lookup.outcome == "fresh" and lookup.entry is not None:
            level.inc()
            return await self._relay.entry(request, req, lookup.entry, "hit", self._clock())
        if lookup.outcome == "stale" and lookup.serve_stale_while_revalidate:
            return await self._stale_while_revalidate(request, req, lookup)
        if lookup.outcome == "pass":
            return await self._forward(request, req, lookup)
        return await self._fetch_coalesced(request, req, lookup)

    async def _from_disk(self, req: RequestInfo, lookup: Lookup) -> Lookup:
        """A memory miss: promote the disk's variants of the URL and look up again."""
        assert self.disk is not None
        entries = await self.disk.read(req.host, req.target)
        for entry in reversed(entries):  # newest last, as the store keeps them
            self.cache.promote(req.host, req.target, entry)
        return self.cache.lookup(req, self._clock()) if entries else lookup

    async def _stale_while_revalidate(
        self, request: web.Request, req: RequestInfo, lookup: Lookup
    ) -> Reply:
        # RFC 5861 §3: serve the stale entry now; refresh it once in the background.
        assert lookup.entry is not None
        flight = self.coalescer.lead(lookup.key)
        if flight is not None:
            headers = origin_headers(request, self.cfg.name, fill=True)
            headers.update(lookup.revalidate_headers)
            task = asyncio.create_task(self._refresh(lookup, headers, flight))
            self._refreshes.add(task)
            task.add_done_callback(self._refreshes.discard)
        detail = "stale-while-revalidate"
        return await self._relay.entry(request, req, lookup.entry, "stale", self._clock(), detail)

    async def _refresh(self, lookup: Lookup, headers: CIMultiDict[str], flight: Flight) -> None:
        stored = False
        try:
            async with self._upstream("GET", lookup, headers) as resp:
                stored = await self._refresh_from(lookup, resp)
        except OriginError as exc:
            self._count_origin_error(exc.kind)
            log.info("event=refresh_failed key=%r error=%r", lookup.key, exc.message)
        finally:
            self.coalescer.finish(flight, stored=stored)

    async def _refresh_from(self, lookup: Lookup, resp: OriginResponse) -> bool:
        """Carry out the response step for a background refresh; True if the cache has it."""
        step = self._respond(lookup, resp)
        match step:
            case Freshen():
                self.cache.update(lookup.request, step)
                return True
            case Store():
                body = await self._relay.read_limited(resp)
                return body is not None and self.cache.fill(step, body) is not None
            case ServeStale() | Pass():
                return False  # the stale entry stays; nobody waits for this answer
            case _:
                assert_never(step)

    async def _fetch_coalesced(
        self, request: web.Request, req: RequestInfo, lookup: Lookup
    ) -> Reply:
        flight = self.coalescer.lead(lookup.key)
        if flight is not None:
            spec = early_range(req.method, req.headers) if lookup.entry is None else None
            if spec is not None:
                return await self._range_miss(request, req, lookup, flight, spec)
            return await self._fetch(request, req, lookup, flight)
        current = self.coalescer.current(lookup.key)
        assert current is not None
        self.metrics.coalesced.inc()
        filling = self._fills.get(lookup.key)
        spec = early_range(req.method, req.headers)
        if filling is not None and spec is not None:
            reply = await self._range_from_fill(request, filling, spec)
            if reply is not None:
                return reply
        await self.coalescer.follow(current, self.cfg.limits.coalesce_wait_s)
        # Stored or not, the cache now knows best: serve what it holds, else fetch alone.
        again = self.cache.lookup(req, self._clock())
        if again.outcome == "fresh" and again.entry is not None:
            return await self._relay.entry(request, req, again.entry, "hit", self._clock())
        return await self._fetch(request, req, again, None)

    async def _fetch(
        self, request: web.Request, req: RequestInfo, lookup: Lookup, flight: Flight | None
    ) -> Reply:
        headers = origin_headers(request, self.cfg.name, fill=True)
        headers.update(lookup.revalidate_headers)  # empty unless revalidating a stale entry
        stored = False
        try:
            async with self._upstream("GET", lookup, headers) as resp:
                reply = await self._answer_fill(request, lookup, resp, flight)
                stored = reply.stored
                return reply
        except OriginError as exc:
            return await self._origin_failed(request, req, lookup, exc)
        finally:
            if flight is not None:
                self.coalescer.finish(flight, stored=stored)

    async def _range_miss(
        self, request: web.Request, req: RequestInfo, lookup: Lookup, flight: Flight, spec: Spec
    ) -> Reply:
        """A Range request for an uncached object (RFC 9110 §14.2): the whole object is
        fetched in the background (edge/fill.py) and this request's range is sent from
        it as it arrives, so the 206 need not wait for the whole object."""
        filling = self._fills[lookup.key] = Filling()
        headers = origin_headers(request, self.cfg.name, fill=True)
        task = asyncio.create_task(self._fill_behind(lookup, headers, flight, filling))
        self._refreshes.add(task)
        task.add_done_callback(self._refreshes.discard)
        try:
            head = await filling.head()
            if isinstance(head, PassOn):  # not storable: relayed as it is, nothing shared
                return await self._pass_on(request, req, head)
            if head is None:  # the fill stopped without an answer: fetch alone
                return await self._forward(request, req, lookup)
            if head.length is None:
                return await self._after_fill(request, req, lookup, head, filling)
            ranges = satisfiable([spec], head.length)
            return await self._relay.early_range(request, head, ranges, filling.read)
        except OriginError as exc:  # counted and logged by the fill
            if self._relay.started(request):
                return self._relay.abort(request)
            return await self._relay.error(request, exc.status, "error", f"origin-{exc.kind}")
        finally:
            filling.abandon()  # a client that left releases an answer handed to it

    async def _range_from_fill(
        self, request: web.Request, filling: Filling, spec: Spec
    ) -> Reply | None:
        """Another Range request for an object a range miss is filling: its range is sent
        from the same fill as it arrives; None to follow the flight as usual (the answer
        is not one to share, its length is unknown, or it Varies: this request might
        select another variant)."""
        try:
            head = await filling.head()
        except OriginError:
            return None  # the flight has ended: the cache decides, as for any follower
        if not isinstance(head, FillHead) or head.length is None or "Vary" in head.headers:
            return None
        try:
            ranges = satisfiable([spec], head.length)
            return await self._relay.early_range(request, head, ranges, filling.read)
        except OriginError:
            return self._relay.abort(request) if self._relay.started(request) else None

    async def _pass_on(self, request: web.Request, req: RequestInfo, head: PassOn) -> Reply:
        try:
            resp = head.response
            member = cache_status(
                self.cfg.name, "fwd", fwd=head.fwd, stored=False, fwd_status=resp.status
            )
            return await self._relay_origin(request, req, resp, member, "pass", None)
        finally:
            head.relayed.set()

    async def _after_fill(
        self, request: web.Request, req: RequestInfo, lookup: Lookup, head: FillHead, f: Filling
    ) -> Reply:
        """The fill's range cannot be cut as it arrives: answer from the store once it ends."""
        await f.finished()
        again = self.cache.lookup(req, self._clock())
        if again.outcome == "fresh" and again.entry is not None:
            return await self._relay.stored(
                request, req, again.entry, self._clock(), head.member, "miss"
            )
        return await self._forward(request, req, lookup)

    async def _fill_behind(
        self, lookup: Lookup, headers: CIMultiDict[str], flight: Flight, filling: Filling
    ) -> None:
        """Fetch and store the whole object for ``_range_miss``, publishing its progress."""
        stored = False
        limit = self.cfg.cache.max_object_bytes
        try:
            async with self._upstream("GET", lookup, headers) as resp:
                step = self._respond(lookup, resp)
                if not isinstance(step, Store) or resp.at_once:
                    # Nothing to share: followers fetch on their own now (as _answer_fill).
                    self.coalescer.finish(flight, stored=False)
                    fwd = step.fwd if isinstance(step, Store | Pass) else "miss"
                    handed = PassOn(resp, fwd, asyncio.Event())
                    filling.publish(handed)
                    await handed.relayed.wait()
                    return
                member = cache_status(
                    self.cfg.name, "fwd", fwd=step.fwd, stored=True, fwd_status=resp.status
                )
                length = early_length(resp.status, resp.headers, limit)
                filling.publish(FillHead(resp.status, step.headers, length, member))
                async for chunk in resp.chunks():
                    filling.add(chunk)
                    if filling.size > limit:
                        filling.end()  # too large to keep after all: the waiter fetches alone
                        return
                stored = self.cache.fill(step, filling.body()) is not None
                filling.end()
        except OriginError as exc:
            self._count_origin_error(exc.kind)
            log.info("event=origin_error kind=%s target=%r error=%r",
                     exc.kind, lookup.request.target, exc.message)  # fmt: skip
            filling.fail(exc)
        finally:
            filling.close()
            if self._fills.get(lookup.key) is filling:
                del self._fills[lookup.key]
            self.coalescer.finish(flight, stored=stored)

    async def _answer_fill(
        self, request: web.Request, lookup: Lookup, resp: OriginResponse, flight: Flight | None
    ) -> Reply:
        """Carry out the response step for a client waiting on a fill or revalidation."""
        req = lookup.request
        step = self._respond(lookup, resp)
        match step:
            case Freshen():
                # RFC 9111 §4.3.4: the stored response, updated with the 304's header fields.
                self.cache.update(req, step)
                reply = await self._relay.entry(
                    request, req, step.entry, "revalidated", self._clock(), fwd="stale",
                    fwd_status=304,
                )  # fmt: skip
                return replace(reply, stored=True)
            case ServeStale():
                return await self._serve_stale(request, req, step.entry, step.detail)
            case Store():
                member = cache_status(
                    self.cfg.name, "fwd", fwd=step.fwd, stored=True, fwd_status=resp.status
                )
                return await self._relay_origin(request, req, resp, member, "miss", step)
            case Pass():
                if flight is not None:
                    # Nothing to share: followers fetch on their own now, not once the body
                    # ends (a stream may never end).
                    self.coalescer.finish(flight, stored=False)
                member = cache_status(
                    self.cfg.name, "fwd", fwd=step.fwd, stored=False, fwd_status=resp.status
                )
                return await self._relay_origin(request, req, resp, member, "pass", None)
            case _:
                assert_never(step)

    def _upstream(
        self, method: str, lookup: Lookup, headers: CIMultiDict[str]
    ) -> AbstractAsyncContextManager[OriginResponse]:
        """Fetch for ``lookup`` through the parents (if any) or from the site's origin.
        ``headers`` come from origin_headers, whose X-Forwarded-Host is the client's Host."""
        return self.upstream.fetch(
            method,
            lookup.request.target,
            headers,
            origin=self.origin,
            key=lookup.key,
            host=headers["X-Forwarded-Host"],
        )

    def _respond(self, lookup: Lookup, resp: OriginResponse) -> ResponseStep:
        """The response step for ``resp``, counted: a 5xx is an origin error, and a
        Pass is counted by why the answer is not stored."""
        answer = OriginAnswer(
            status=resp.status, headers=resp.headers, request_time=resp.request_time
        )
        step = self.cache.respond(lookup, answer, resp.response_time)
        if resp.status >= 500:
            self._count_origin_error("status_5xx")
        if isinstance(step, Pass):
            self.metrics.uncacheable.labels(step.reason).inc()
        return step

    async def _relay_origin(
        self,
        request: web.Request,
        req: RequestInfo,
        resp: OriginResponse,
        member: str,
        result: CacheResult,
        fill: Store | None,
    ) -> Reply:
        """Relay an origin answer; with a Store decision, store its body once whole."""
        start = await self._relay.prebuffer(resp)
        if not start.ended:
            reply, body = await self._relay.stream(
                request, resp, start, member, result, keep=fill is not None
            )
            if fill is None or body is None or self.cache.fill(fill, body) is None:
                return reply
            return replace(reply, stored=True)
        entry = None if fill is None else self.cache.fill(fill, start.head)
        if entry is None:
            return await self._relay.send_whole(request, resp, member, result, start.head)
        if narrowed(req):
            # The fill went without the client's Range and preconditions: answer them
            # from the entry just stored.
            now = resp.response_time
            reply = await self._relay.stored(request, req, entry, now, member, result)
        else:
            reply = await self._relay.send_whole(request, resp, member, result, start.head)
        return replace(reply, stored=True)

    async def _forward(self, request: web.Request, req: RequestInfo, lookup: Lookup) -> Reply:
        """A GET/HEAD the cache will neither answer nor store (e.g. request no-store)."""
        headers = origin_headers(request, self.cfg.name, fill=False)
        try:
            async with self._upstream(req.method, lookup, headers) as resp:
                member = cache_status(
                    self.cfg.name, "fwd", fwd=lookup.fwd or "bypass", fwd_status=resp.status
                )
                return await self._relay_origin(request, req, resp, member, "pass", None)
        except OriginError as exc:
            return await self._origin_failed(request, req, lookup, exc)

    async def _forward_unsafe(self, request: web.Request, req: RequestInfo) -> Reply:
        """Any other method: its body streamed to the origin as it arrives (never held
        whole; 413 past max_body_bytes), the answer never stored; §4.4 invalidation."""
        limit = self.cfg.limits.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            return await self._relay.error(request, 413, "pass", "request-too-large")
        headers = origin_headers(request, self.cfg.name, fill=False)
        if declared is not None:
            headers["Content-Length"] = str(declared)  # else chunked, as the client sent it
        upload = UploadBody(request.content, limit) if request.body_exists else None
        try:
            body = None if upload is None else upload.chunks()
            async with self.origin.fetch(req.method, req.target, headers, body) as resp:
                self.cache.invalidate(req, resp.status, resp.headers)
                member = cache_status(self.cfg.name, "fwd", fwd="method", fwd_status=resp.status)
                return await self._relay_origin(request, req, resp, member, "pass", None)
        except OriginError as exc:
            if upload is not None and upload.too_large:
                return await self._upload_too_large(request)
            return await self._origin_failed(request, req, None, exc)

    async def _upload_too_large(self, request: web.Request) -> Reply:
        """A chunked body went past max_body_bytes on its way: 413 if nothing went out yet,
        else the connection is closed mid-answer (RFC 9112 §8)."""
        log.info("event=upload_too_large limit=%d", self.cfg.limits.max_body_bytes)
        if self._relay.started(request):
            return self._relay.abort(request)
        return await self._relay.error(request, 413, "pass", "request-too-large")

    async def _origin_failed(
        self, request: web.Request, req: RequestInfo, lookup: Lookup | None, exc: OriginError
    ) -> Reply:
        """The one place an origin failure becomes an answer: stale if allowed, else 502/504."""
        self._count_origin_error(exc.kind)
        log.info("event=origin_error kind=%s target=%r error=%r", exc.kind, req.target, exc.message)
        if self._relay.started(request):
            # The head already went out: an incomplete response is the only honest signal.
            return self._relay.abort(request)
        if lookup is not None and lookup.entry is not None and lookup.stale_if_error:
            return await self._serve_stale(request, req, lookup.entry, f"origin-{exc.kind}")
        return await self._relay.error(request, exc.status, "error", f"origin-{exc.kind}")

    async def _serve_stale(
        self, request: web.Request, req: RequestInfo, entry: CacheEntry, detail: str
    ) -> Reply:
        return await self._relay.entry(request, req, entry, "stale", self._clock(), detail)

    def _count_origin_error(self, kind: str) -> None:
        self.metrics.origin_errors.labels(kind).inc()
        if self.tracker.origin_failed(self._clock()):
            self._on_status_change()
