"""The content port's gate: what is decided about a request before its site's cache or
origin is touched (design.md "The edge": limits, then the site).

    rate limit  -> a token bucket per client and per /24 or /56 (edge/ratelimit.py);
                   empty: 429 with Retry-After
    PURGE, BAN  -> the edge's own business, never forwarded: 401 without the purge token
                   (edge.token or a previous one: the control port's check); with it the
                   request's own URL is purged (PURGE: that URL, BAN: every URL under it
                   as a prefix), answered 200 {"purged": n}
    filters     -> edge/filters.py; a refusing rule answers 405/414/400, a rule in
                   armour.log_only is counted and logged and the request goes on

Every rule a request matches is counted in edge_filter_matches_total{rule, action}.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable

from aiohttp import web

from cdn import auth
from edge.armour import ArmourSettings
from edge.cache import Cache
from edge.control import apply_purge
from edge.filters import DEFAULT_METHODS, FilterPolicy, inspect
from edge.metrics import EdgeMetrics
from edge.ratelimit import RateLimiter, client_address, retry_after
from edge.sites import SiteTable

log = logging.getLogger("edge.gate")

# Methods that ask a cache to forget (Varnish's PURGE and BAN; Squid and Fastly's PURGE).
PURGE_METHODS = {"PURGE": "url", "BAN": "prefix"}
MAX_LOGGED_TARGET_CHARS = 160  # of a client's request target in a log line
# GET targets remembered as matching no filter rule (the fast path's; cleared when full),
# each at most this long: at most 8 MiB of strings.
MAX_CLEAN_TARGETS = 16384
MAX_CLEAN_TARGET_CHARS = 512


class Gate:
    """Screens each content request; ``screen`` answers it or lets it through (None)."""

    def __init__(
        self,
        settings: ArmourSettings,
        metrics: EdgeMetrics,
        cache: Cache,
        tokens: tuple[str, ...],
        sites: Callable[[], SiteTable],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._cache = cache
        self._tokens = tokens
        self._sites = sites
        self._settings = settings
        self._policies: dict[tuple[str, ...], FilterPolicy] = {}
        self._clean: dict[FilterPolicy, dict[str, None]] = {}  # GET targets no rule matches
        self._limiter = RateLimiter(settings.rate)
        self._clock = clock

    def screen(self, request: web.Request) -> web.Response | None:
        """An answer for a request the edge handles itself or refuses, else None."""
        if self._limiter.enabled and (limited := self._rate_limited(request)) is not None:
            return limited
        kind = PURGE_METHODS.get(request.method)
        table = self._sites()
        if kind is not None:
            return self._purge(request, table, kind)
        site = table.choose(request.host)
        policy = self._policy(DEFAULT_METHODS if site is None else site.methods)
        verdict = inspect(request.method, request.raw_path, request.headers.items(), policy)
        if not verdict.matched:
            return None
        for rule in verdict.matched:
            logged = rule in policy.log_only
            self._metrics.filter_matches.labels(rule, "logged" if logged else "refused").inc()
        log.log(
            logging.DEBUG if verdict.refused_by else logging.INFO,
            "event=filtered rules=%s action=%s method=%s target=%s",
            ",".join(verdict.matched),
            "refused" if verdict.refused_by else "logged",
            json.dumps(request.method[:16]),
            json.dumps(request.raw_path[:MAX_LOGGED_TARGET_CHARS]),
        )
        if verdict.refused_by is None:
            return None
        headers = {"Allow": ", ".join(policy.methods)} if verdict.refused_by == "method" else {}
        return _answer(verdict.status, f"refused by rule {verdict.refused_by}", headers)

    def passes_filters(self, target: str, methods: tuple[str, ...]) -> bool:
        """Whether no filter rule matches a plain GET of ``target`` (edge/fast_hit.py: no
        header field it reads); short targets that pass are remembered."""
        policy = self._policy(methods)
        clean = self._clean.setdefault(policy, {})
        if target in clean:
            return True
        if inspect("GET", target, (), policy).matched:
            return False
        if len(target) <= MAX_CLEAN_TARGET_CHARS:
            if len(clean) >= MAX_CLEAN_TARGETS:
                clean.clear()
            clean[target] = None  # a str: nothing more for the garbage collector to track
        return True

    def within_rate(self, peer: str) -> bool:
        """Whether the rate limit, if any, has a token for a request from ``peer`` with no
        X-Forwarded-For (taken), as ``screen`` would."""
        return not self._limiter.enabled or self._limited(peer, ()) is None

    def _limited(self, peer: str, forwarded_for: Iterable[str]) -> tuple[str, float] | None:
        """The limiter's verdict on a request's client (a token taken if it has one)."""
        client = client_address(peer, forwarded_for, self._limiter.settings.trusted_proxies)
        return None if client is None else self._limiter.check(client, self._clock())

    def _rate_limited(self, request: web.Request) -> web.Response | None:
        limited = self._limited(request.remote or "", request.headers.getall("X-Forwarded-For", ()))
        if limited is None:
            return None
        scope, wait_s = limited
        self._metrics.rate_limited.labels(scope).inc()
        # RFC 6585 §4: 429 Too Many Requests, with how long to wait (RFC 9110 §10.2.3).
        return _answer(429, "too many requests", {"Retry-After": retry_after(wait_s)})

    def _policy(self, methods: tuple[str, ...]) -> FilterPolicy:
        policy = self._policies.get(methods)
        if policy is None:
            settings = self._settings
            policy = self._policies[methods] = FilterPolicy(
                frozenset(methods), settings.max_url_bytes, settings.log_only
            )
        return policy

    def _purge(self, request: web.Request, table: SiteTable, kind: str) -> web.Response:
        given = request.headers.get("Authorization")
        if not auth.authorized(given, self._tokens):
            self._metrics.content_purges.labels("unauthorized").inc()
            challenge = {"WWW-Authenticate": auth.challenge("edge", given)}
            return _answer(401, auth.UNAUTHORIZED, challenge)
        try:
            purged = apply_purge(
                self._cache, table, kind, f"http://{request.host}{request.raw_path}"
            )
        except ValueError as exc:
            return _answer(400, str(exc))
        self._metrics.content_purges.labels("ok").inc()
        self._metrics.purges.labels(kind).inc()
        self._metrics.purged_objects.inc(purged)
        return web.json_response({"purged": purged})


def _answer(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
