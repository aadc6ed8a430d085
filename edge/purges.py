"""Fleet purges on the edge: applied once per id, whichever way they arrive.

A router sends a purge two ways: at once to POST /api/v1/purge on the control port (the
fan-out), and again with its reply to this edge's load report while the edge has not
acknowledged it (the edge was unreachable, or its answer was lost). Several routers send
the same purge. So each id is applied once and remembered for REMEMBER_S (longer than a
router keeps a purge it still has to deliver), at most MAX_REMEMBERED ids, oldest out;
an id forgotten and seen again is applied again, which is harmless (a purge is
idempotent by nature, the id only saves the work). Ids applied from report replies are
acknowledged in the next report (`take_acks`), which tells every router they are done.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable

from aiohttp import web

from cdn.jsonbody import decode_json_object
from cdn.purge import Purge, PurgeError
from cdn.report import MAX_ACKS
from edge.cache import Cache
from edge.control import purge_slot, refusal
from edge.metrics import EdgeMetrics
from edge.sites import SiteTable, cache_host

REMEMBER_S = 26 * 3600.0  # a router keeps an undelivered purge 24 h
MAX_PURGE_BODY_BYTES = 8192
MAX_PURGE_DEPTH = 4  # {"id", selector, "site"}: one flat object
MAX_REMEMBERED = 100_000


class AppliedPurges:
    """The ids applied lately (pure: `now` is passed in)."""

    def __init__(self, remember_s: float = REMEMBER_S, limit: int = MAX_REMEMBERED) -> None:
        self._seen: OrderedDict[str, float] = OrderedDict()
        self._remember_s = remember_s
        self._limit = limit

    def __contains__(self, purge_id: object) -> bool:
        return purge_id in self._seen

    def first_time(self, purge_id: str, now: float) -> bool:
        """True (and remembered) if the id is new; False if applied before."""
        while self._seen and (
            len(self._seen) >= self._limit
            or now - next(iter(self._seen.values())) > self._remember_s
        ):
            self._seen.popitem(last=False)
        if purge_id in self._seen:
            return False
        self._seen[purge_id] = now
        return True


class FleetPurges:
    """Applies router purges to the cache, once per id; collects the acks for reports."""

    def __init__(
        self,
        cache: Cache,
        metrics: EdgeMetrics,
        clock: Callable[[], float],
        tokens: tuple[str, ...],
        sites: Callable[[], SiteTable],
    ) -> None:
        self._cache = cache
        self._sites = sites  # the current table: a reload may replace it
        self._tokens = tokens
        self._metrics = metrics
        self._clock = clock
        self.applied = AppliedPurges()
        self._acks: list[str] = []

    def apply(self, purge: Purge, via: str) -> int | None:
        """Remove what the purge selects; None if this id was applied before."""
        if not self.applied.first_time(purge.id, self._clock()):
            self._metrics.fleet_purges.labels(via, "duplicate").inc()
            return None
        removed = purge_cache(self._cache, self._sites(), purge)
        self._metrics.fleet_purges.labels(via, "applied").inc()
        self._metrics.purges.labels(purge.kind).inc()
        self._metrics.purged_objects.inc(removed)
        return removed

    def apply_from_reply(self, purges: Iterable[Purge]) -> bool:
        """Apply a report reply's purges; True if any was new (report again soon)."""
        new = False
        for purge in purges:
            new |= self.apply(purge, "report") is not None
            if purge.id not in self._acks:
                self._acks.append(purge.id)
        del self._acks[:-MAX_ACKS]
        return new

    def take_acks(self) -> tuple[str, ...]:
        acks, self._acks = tuple(self._acks), []
        return acks

    async def handle(self, request: web.Request) -> web.Response:
        """POST /api/v1/purge from a router: {"id", selector, "site"?} → {"purged": n}."""
        if (refused := refusal(request, self._tokens)) is not None:
            return refused
        try:
            body = decode_json_object(
                await request.read(), max_bytes=MAX_PURGE_BODY_BYTES, max_depth=MAX_PURGE_DEPTH
            )
            purge = Purge.from_dict(body, need_id=True)
        except (ValueError, PurgeError) as exc:  # JsonBodyError is a ValueError
            return web.json_response({"error": str(exc)}, status=400)
        removed = self.apply(purge, "fanout")
        return web.json_response({"id": purge.id, "purged": removed, "duplicate": removed is None})


def purge_cache(cache: Cache, table: SiteTable, purge: Purge) -> int:
    """Remove what a purge selects: every variant of a URL, every URL of its host under a
    prefix, or every response tagged with the key (only those of the site serving the
    purge's `site` host, if given). Hosts are keyed as the site table keys requests."""
    if purge.kind == "key":
        if purge.site is None:
            return cache.purge_key(purge.value)
        site = table.choose(purge.site)
        return (
            0 if site is None else cache.purge_key(purge.value, host=cache_host(site, purge.site))
        )
    slot = purge_slot(table, purge.value)
    if slot is None:
        return 0  # no site serves that host: nothing of it is stored
    host, target = slot
    if purge.kind == "url":
        return cache.purge_url(host, target)
    return cache.purge_prefix(host, target)
