"""Sites: which origin serves a request, chosen by its Host (and on TLS, checked against SNI).

Pure: no sockets, no files. One `SiteTable` is built from the config and swapped whole on
reload, so a request reads one consistent table without locks.

- A `[[sites]]` entry owns its hosts exclusively (the config refuses a host in two sites).
- `edge.origin` makes the site named "default", for every other Host; without it an
  unknown Host is misdirected: 421 (RFC 9110 §15.5.20).
- The cache keys a named site's responses by its first host, so its aliases share one
  object and two sites never do (a host belongs to one site); the default site keys by the
  request's own Host, as the one-origin edge always has.
- On TLS the certificate a connection presented was chosen by SNI before any Host was
  seen. A request whose Host would have been given a different certificate reached an
  edge connection that is not authoritative for it (RFC 9110 §4.3.3, §7.4): 421, so that
  the client retries on a new connection. A Host covered by the same certificate is
  served: that is a legitimate reuse of the connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from edge.config import DEFAULT_SITE, EdgeConfig, SiteConfig


def request_host(host: str) -> str:
    """A Host field value as a site name matches it: lower-case, no port, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal: [::1]:8080
        return host.partition("]")[0] + "]"
    return host.partition(":")[0].rstrip(".")


def default_site(cfg: EdgeConfig) -> SiteConfig | None:
    """The site edge.origin makes, if it is set."""
    if cfg.origin is None:
        return None
    return SiteConfig(name=DEFAULT_SITE, hosts=(), origin=cfg.origin, origin_ca=cfg.origin_ca)


@dataclass(frozen=True, slots=True)
class SiteTable:
    """Every site of one config, indexed by host."""

    by_host: Mapping[str, SiteConfig]
    by_name: Mapping[str, SiteConfig]
    default: SiteConfig | None

    @classmethod
    def from_config(cls, cfg: EdgeConfig) -> SiteTable:
        default = default_site(cfg)
        named = {site.name: site for site in cfg.sites}
        by_name = named if default is None else {**named, DEFAULT_SITE: default}
        by_host = {host: site for site in cfg.sites for host in site.hosts}
        return cls(by_host=by_host, by_name=by_name, default=default)

    def choose(self, host: str) -> SiteConfig | None:
        """The site for a request's Host; None: no site, and no default (421)."""
        return self.by_host.get(request_host(host), self.default)

    def sites(self) -> tuple[SiteConfig, ...]:
        return tuple(self.by_name.values())


def cache_host(site: SiteConfig, host: str) -> str:
    """The host part of the cache key: a named site's first host, else the Host itself
    (lower-case, without the default port: RFC 9110 §4.2.3)."""
    if site.hosts:
        return site.hosts[0]
    host = host.lower()
    return host[:-3] if host.endswith(":80") else host


def misdirected(sni: str | None, host: str, certificate_of: Mapping[str, str]) -> bool:
    """Whether a TLS request's Host would get another certificate than the one its
    connection presented for ``sni`` (None: the client sent no SNI).
    ``certificate_of`` maps host names to certificate names; others get the default."""
    presented = certificate_of.get(request_host(sni or ""), DEFAULT_SITE)
    return certificate_of.get(request_host(host), DEFAULT_SITE) != presented
