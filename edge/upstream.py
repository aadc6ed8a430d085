"""Where a cache fill goes: a parent (shield) chosen by rendezvous hash, then the origin.

The decisions are edge/parents.py's; this shell walks its candidates. A request to a
parent keeps the client's Host (so the shield keys, routes by site and purges exactly as
an edge does); only the origin gets the origin's own host. A parent fails a fetch when it
cannot be reached or answered in time (OriginError) or makes a 502, 503 or 504 itself: a
proxy's own failures (RFC 9110 §15.6.3-5), after which the next parent or the origin may
well do better. A 5xx the parent relays from the origin (its Cache-Status member, the last,
carries ``fwd-status``, RFC 9211 §2.3) is the origin's word, as is any other answer: it
counts as a success and is final, since asking the origin again would only repeat it. The
last candidate's answer is taken as it is, a 503 included. Once a response head is handed
to the proxy the choice is final: a body that breaks later is the proxy's to handle, as
from an origin.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Final

from multidict import CIMultiDict

from edge.config import Limits, ParentSettings
from edge.directives import Headers, split_list
from edge.errors import OriginError
from edge.metrics import EdgeMetrics
from edge.origin import OriginClient, OriginResponse
from edge.parents import ParentHealth, Transition

log = logging.getLogger("edge.upstream")

# A proxy's own failures (RFC 9110 §15.6.3 Bad Gateway, .4 Service Unavailable, .5 Gateway
# Timeout): the next parent is asked.
PARENT_FAILURES: Final = frozenset({502, 503, 504})


def parent_failure(status: int, headers: Headers) -> bool:
    """Is this a parent's own 502/503/504, not one it relayed from the origin? A relayed
    answer's last Cache-Status member (the parent's) names the origin's status in
    ``fwd-status`` (RFC 9211 §2.3); a parent's own error, or a non-cache in front of it,
    does not."""
    if status not in PARENT_FAILURES:
        return False
    members = split_list(headers.getall("Cache-Status", []))
    return not members or "fwd-status=" not in members[-1]


class Upstream:
    """The parents of one edge, their health, and the failover walk."""

    def __init__(
        self,
        settings: ParentSettings,
        limits: Limits,
        metrics: EdgeMetrics,
        clock: Callable[[], float],
    ) -> None:
        self.settings = settings
        # Read at start (a reload keeps them): the same timeouts as towards an origin.
        self.parents = {url: OriginClient(url, limits, metrics, clock) for url in settings.urls}
        self.health = ParentHealth(
            settings.urls,
            fail_after=settings.fail_after,
            retry_s=settings.retry_s,
            go_direct=settings.go_direct,
        )
        self._metrics = metrics
        self._clock = clock
        for url in settings.urls:
            metrics.parent_up.labels(url).set(1)

    async def start(self) -> None:
        for client in self.parents.values():
            await client.start()

    async def close(self) -> None:
        for client in self.parents.values():
            await client.close()

    @asynccontextmanager
    async def fetch(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        *,
        origin: OriginClient,
        key: str,
        host: str,
    ) -> AsyncIterator[OriginResponse]:
        """``method`` (GET or HEAD) ``target`` from the parents in ``key``'s order, then
        (go_direct) from ``origin``; ``host`` is the client's Host, sent to parents."""
        parents = self.parents
        order = self.health.candidates(key, self._clock()) if parents else []
        for i, url in enumerate(order):
            last = i == len(order) - 1 and not self.settings.go_direct
            to_parent = headers.copy()
            to_parent["Host"] = host  # the client's: the shield routes and keys by it
            async with AsyncExitStack() as stack:
                try:
                    resp = await stack.enter_async_context(
                        parents[url].fetch(method, target, to_parent)
                    )
                except OriginError as exc:
                    self._failed(url, exc.kind)
                    if last:
                        raise
                    continue
                if parent_failure(resp.status, resp.headers) and not last:
                    self._failed(url, "unavailable")
                    continue
                self._succeeded(url)
                yield resp
                return
        if parents:  # every parent failed or is down
            self._metrics.parent_go_direct.inc()
        async with origin.fetch(method, target, headers) as resp:
            yield resp

    def _failed(self, url: str, result: str) -> None:
        self._metrics.parent_requests.labels(url, result).inc()
        self._changed(url, self.health.failed(url, self._clock()), result)

    def _succeeded(self, url: str) -> None:
        self._metrics.parent_requests.labels(url, "ok").inc()
        self._changed(url, self.health.succeeded(url), "ok")

    def _changed(self, url: str, transition: Transition | None, result: str) -> None:
        if transition == "down":
            self._metrics.parent_up.labels(url).set(0)
            log.warning(
                "event=parent_down parent=%s failures=%d last=%s retry_s=%g",
                url, self.settings.fail_after, result, self.settings.retry_s,
            )  # fmt: skip
        elif transition == "up":
            self._metrics.parent_up.labels(url).set(1)
            log.info("event=parent_up parent=%s", url)
