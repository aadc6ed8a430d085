"""The edge's routing state: the site table, one origin client per site, and the
certificate map that decides misdirected TLS requests. Built from a config at start and
again on each reload, then swapped whole: a reload makes new clients (so a changed CA file
is read again) and retires the old ones, which close once their fetches are done."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from edge.config import DEFAULT_SITE, EdgeConfig, SiteConfig
from edge.metrics import EdgeMetrics
from edge.origin import OriginClient
from edge.sites import SiteTable
from edge.tls import origin_context

log = logging.getLogger("edge.routing")


@dataclass(frozen=True, slots=True)
class Routing:
    sites: SiteTable
    origins: Mapping[str, OriginClient]  # site name -> its client
    certificate_of: Mapping[str, str] = field(default_factory=dict)  # TLS host -> cert name

    async def start(self) -> None:
        for client in self.origins.values():
            await client.start()

    def retire(self) -> None:
        """Close every client once its fetches are done (a reload replaced them)."""
        for client in self.origins.values():
            client.retire()

    async def close(self) -> None:
        for client in self.origins.values():
            await client.close()


def origin_tls(site: SiteConfig, cfg: EdgeConfig) -> ssl.SSLContext | None:
    """The client context for a site's https:// origin (ConfigError on a bad CA file)."""
    if not site.origin.startswith("https://"):
        return None
    own = site.origin_ca is not None and site.name != DEFAULT_SITE
    where = f"sites.{site.name}.origin_ca" if own else "edge.origin_ca"
    return origin_context(site.origin_ca or cfg.origin_ca, cfg.origin_verify, where, cfg.source)


def build_routing(
    cfg: EdgeConfig,
    metrics: EdgeMetrics,
    clock: Callable[[], float],
    certificate_of: Mapping[str, str] | None = None,
) -> Routing:
    """Routing for ``cfg`` (start() it); a bad CA file raises ConfigError."""
    sites = SiteTable.from_config(cfg)
    contexts = {site.name: origin_tls(site, cfg) for site in sites.sites()}
    origins: dict[str, OriginClient] = {}
    for site in sites.sites():
        tls = contexts[site.name]
        client = OriginClient(site.origin, cfg.limits, metrics, clock, tls=tls)
        origins[site.name] = client
        if tls is not None and not cfg.origin_verify:
            log.warning(
                "event=origin_verify_off site=%s origin=%s: the origin's certificate is not "
                "checked (edge.origin_verify = false)",
                site.name, site.origin,
            )  # fmt: skip
    return Routing(sites, origins, certificate_of or {})
