"""Edge configuration: TOML and command-line flags loaded once into frozen dataclasses.

A config file looks like::

    [edge]
    name = "edge-eu-1"
    listen = "127.0.0.13:8080"        # content (the caching proxy)
    control = "127.0.0.13:9080"       # /healthz, /metrics, /purge
    origin = "http://127.0.0.1:8000"
    routers = ["http://127.0.0.1:9153"]
    token = "demo-edge-eu-1-token"     # this node's own: [[nodes]] token in the router's topology
    parents = ["http://127.0.0.21:8080"]   # shields, by rendezvous hash (edge/parents.py)
    parent_fail_after = 3             # consecutive failures before a parent is down
    parent_retry_s = 10               # then tried again after this long
    go_direct = true                  # all parents failed: the origin itself (false: 502)
    previous_tokens = []              # still accepted while clients rotate
    capacity_rps = 2000
    drain_s = 25

    origin_ca = "private-ca.pem"      # more CAs to trust for https:// origins
    origin_verify = true              # false: no origin certificate check (logged)

    [[sites]]                         # more hostnames, each with its own origin
    hosts = ["img.example.com", "cdn.example.com"]
    origin = "https://127.0.0.1:8443"
    websocket = true
    # name = "img.example.com"        # default: the first host; origin_ca per site

    [tls]                             # HTTPS on its own port
    listen = "127.0.0.13:8443"
    cert = "edge.pem"
    key = "edge.key"
    [[tls.certificates]]              # more certificates, chosen by SNI
    hosts = ["api.example.com"]
    cert = "api.pem"
    key = "api.key"

    [cache]
    size = "256M"
    max_object = "64M"
    eviction = "sieve"
    disk_path = "cache"               # a second level on disk (unset: memory only)
    disk_size = "1G"
    disk_fsync = false
    fast_path = true                  # plain fresh hits answered before aiohttp (edge/fast_hit.py)

    [limits]
    max_line_bytes = 8190
    ...

    [websocket]
    max_tunnels = 10000
    max_message_bytes = "1M"
    idle_timeout_s = 100
    ping_interval_s = 30

    [armour]                          # deadlines, caps, rate limits, filters (edge/armour.py)
    head_timeout_s = 10
    ...

    [access_log]                      # off unless path is set
    path = "/var/log/edge/access.log"

Flags given on the command line override the file, key by key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from cdn.config import (
    MAX_CAPACITY_RPS,
    MAX_TIMER_S,
    HostPort,
    http_url,
    parse_host_port,
    previous_tokens,
)
from cdn.tomltable import Table, read_toml
from edge.armour import AccessLogSettings, ArmourSettings, parse_access_log, parse_armour
from edge.errors import ConfigError
from edge.eviction import POLICIES, PolicyName
from edge.filters import DEFAULT_METHODS

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

LISTEN = "127.0.0.1:8080"
CONTROL = "127.0.0.1:9080"
CAPACITY_RPS = 1000.0
# Longer than the router's answer TTL (20 s): resolvers keep handing out a draining
# edge's address until their cached answer expires, so it keeps serving that long.
DRAIN_S = 25.0
CACHE_BYTES = 256 * MiB
MAX_OBJECT_BYTES = 64 * MiB
EVICTION: PolicyName = "sieve"
DISK_BYTES = 1024 * MiB  # cache.disk_size when cache.disk_path is set
# Answers to requests with a Cookie are kept from other users unless the origin says public
# or s-maxage (a social platform's pages are personal); "rfc9111" stores them as the RFC allows.
CookiePolicy = Literal["private-unless-public", "rfc9111"]
COOKIE_REQUESTS: CookiePolicy = "private-unless-public"
COOKIE_POLICIES: tuple[CookiePolicy, ...] = ("private-unless-public", "rfc9111")

MAX_LINE_BYTES = 8190  # request line and each header line (aiohttp max_line_size)
MAX_FIELD_BYTES = 8190  # one header field (aiohttp max_field_size)
MAX_HEADERS = 100  # header fields per request
MAX_BODY_BYTES = 16 * MiB  # request body passed to the origin (aiohttp client_max_size)
ORIGIN_CONNECT_TIMEOUT_S = 2.0
ORIGIN_READ_TIMEOUT_S = 10.0  # for the response head, then between body reads
# The whole fetch up to a complete response head, against an origin that trickles it (each
# read within the read timeout). Above connect + read (12 s), so an origin that is merely slow
# to answer meets the read timeout first; like Fastly's first_byte_timeout (15 s) and well
# under nginx's and Varnish's 60 s: a stale-if-error copy after a minute helps nobody.
ORIGIN_HEAD_TIMEOUT_S = 15.0
# A body below this rate over the window of waiting for it is cut (0: no floor). Twice
# Apache's MinRate for client bodies (500 bytes/s) and four times Kestrel's response floor
# (240 bytes/s): an origin sits on a data-centre link, not a phone's.
ORIGIN_MIN_BYTES_PER_S = 1024
# As long as one read may wait (the read timeout): the floor judges no shorter stretch.
ORIGIN_MIN_RATE_WINDOW_S = 10.0
# Between two reads of a stream's body (event streams, X-Accel-Buffering: no; edge/rules.py
# is_stream): Envoy's stream_idle_timeout (5 min), well over the 15-60 s heartbeats SSE
# servers send and over nginx's 60 s proxy_read_timeout that makes people add them.
STREAM_IDLE_TIMEOUT_S = 300.0
# Parents (shields): a parent is down after this many consecutive failed fetches and tried
# again this long after. Quicker than ATS (10 failures, 300 s): our tier is a handful of
# shields on one network, where a dead one should stop costing a connect attempt at once
# and a restarted one (seconds) should get its objects back soon.
PARENT_FAIL_AFTER = 3
PARENT_RETRY_S = 10.0
MAX_PARENT_FAIL_AFTER = 1000
COALESCE_WAIT_S = 5.0  # how long a request waits for another's fetch of the same key
REPORT_INTERVAL_S = 1.0
# Pre-warming (edge/prewarm.py) is background work: a few fetches at a time, and none
# while the edge is busier than this share of its capacity.
PREWARM_CONCURRENCY, MAX_PREWARM_CONCURRENCY = 2, 64
PREWARM_MAX_UTILIZATION = 0.7
# WebSocket tunnels (edge/tunnel.py). Each holds two sockets and at most about four
# messages in flight (one each way, plus socket buffers), so the cap bounds memory too.
MAX_TUNNELS = 10_000
MAX_MESSAGE_BYTES = MiB  # a chat message or a small image; larger ones close with 1009
# Cloudflare's 100 s, above nginx's proxy_read_timeout and Varnish's pipe_timeout (60 s).
IDLE_TIMEOUT_S = 100.0
# Our own pings to a quiet leg, well inside the idle timeout: a live peer's pong keeps a
# quiet chat open (and NAT mappings warm); a vanished one is found at the idle timeout.
PING_INTERVAL_S = 30.0

# Bounds of what a config may ask for: beyond them a value is a typo, not a setting.
MAX_HEADER_LIMIT_BYTES = MiB
MAX_HEADER_FIELDS = 10_000
MAX_MIN_BYTES_PER_S = GiB
MAX_TUNNELS_LIMIT = 1_000_000

_SECTIONS = ("edge", "cache", "limits", "websocket", "armour", "access_log")
# A site host: DNS labels (RFC 1123 §2.1), lower-case, no port, no wildcard.
_HOST = re.compile(
    r"^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)
_METHOD = re.compile(r"^[A-Z][A-Z-]{0,31}$")
DEFAULT_SITE = "default"  # the name of the site edge.origin makes (any other Host)
_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB}
_SIZE_EXPECTED = "expected a size like 1048576, 512K, 256M or 1G"


@dataclass(frozen=True, slots=True)
class ParentSettings:
    """The shield tier above this edge (edge.parents and friends; edge/parents.py)."""

    urls: tuple[str, ...] = ()  # content URLs http://host:port; empty: the origin only
    fail_after: int = PARENT_FAIL_AFTER
    retry_s: float = PARENT_RETRY_S
    go_direct: bool = True  # every parent failed: fetch from the origin (else 502)


@dataclass(frozen=True, slots=True)
class CacheSettings:
    size_bytes: int = CACHE_BYTES
    max_object_bytes: int = MAX_OBJECT_BYTES
    eviction: PolicyName = EVICTION
    cookie_requests: CookiePolicy = COOKIE_REQUESTS
    disk_path: str | None = None  # the second level's directory; None: memory only
    disk_size_bytes: int = DISK_BYTES
    disk_fsync: bool = False  # fsync each record before its rename (power-loss safety)
    fast_path: bool = True  # plain fresh hits skip aiohttp's request objects (edge/fast_hit.py)


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int = MAX_LINE_BYTES
    max_field_bytes: int = MAX_FIELD_BYTES
    max_headers: int = MAX_HEADERS
    max_body_bytes: int = MAX_BODY_BYTES
    origin_connect_timeout_s: float = ORIGIN_CONNECT_TIMEOUT_S
    origin_read_timeout_s: float = ORIGIN_READ_TIMEOUT_S
    origin_head_timeout_s: float = ORIGIN_HEAD_TIMEOUT_S
    origin_min_bytes_per_s: int = ORIGIN_MIN_BYTES_PER_S
    origin_min_rate_window_s: float = ORIGIN_MIN_RATE_WINDOW_S
    stream_idle_timeout_s: float = STREAM_IDLE_TIMEOUT_S
    coalesce_wait_s: float = COALESCE_WAIT_S


@dataclass(frozen=True, slots=True)
class SiteConfig:
    """A `[[sites]]` entry: hostnames served from one origin."""

    name: str
    hosts: tuple[str, ...]
    origin: str  # http(s)://host[:port][/base]
    websocket: bool = True
    origin_ca: str | None = None  # a PEM file of CAs to trust for this origin
    methods: tuple[str, ...] = DEFAULT_METHODS  # others answered 405 (edge/filters.py)


@dataclass(frozen=True, slots=True)
class CertificateConfig:
    """A certificate and its key (PEM files); ``hosts`` are the SNI names it serves."""

    hosts: tuple[str, ...]
    cert: str
    key: str
    where: str = "tls"  # its key path, for errors: tls, tls.certificates[0]


@dataclass(frozen=True, slots=True)
class TlsSettings:
    listen: HostPort
    default: CertificateConfig  # [tls] cert/key: for every name no other certificate has
    certificates: tuple[CertificateConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    max_tunnels: int = MAX_TUNNELS
    max_message_bytes: int = MAX_MESSAGE_BYTES
    idle_timeout_s: float = IDLE_TIMEOUT_S
    ping_interval_s: float = PING_INTERVAL_S  # 0: no pings of our own


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    source: str  # the file name, or "command line"
    name: str
    listen: HostPort
    control: HostPort
    origin: str | None  # the default site: http(s)://host[:port][/base], target appended
    routers: tuple[str, ...] = ()
    token: str = ""
    previous_tokens: tuple[str, ...] = ()  # still accepted for /purge during a rotation
    capacity_rps: float = CAPACITY_RPS
    drain_s: float = DRAIN_S
    report_interval_s: float = REPORT_INTERVAL_S
    cache: CacheSettings = CacheSettings()
    limits: Limits = Limits()
    origin_ca: str | None = None  # PEM CAs trusted for every https:// origin
    origin_verify: bool = True
    sites: tuple[SiteConfig, ...] = ()
    tls: TlsSettings | None = None
    path: Path | None = None  # the file SIGHUP reads again (None: flags only)
    overrides: tuple[tuple[str, Any], ...] = ()  # the flags, applied again on reload
    websocket: WebSocketSettings = WebSocketSettings()
    armour: ArmourSettings = ArmourSettings()  # noqa: RUF009 (frozen) edge/armour.py
    access_log: AccessLogSettings = AccessLogSettings()  # noqa: RUF009 (frozen)
    parents: ParentSettings = ParentSettings()
    prewarm_concurrency: int = PREWARM_CONCURRENCY
    prewarm_max_utilization: float = PREWARM_MAX_UTILIZATION


def parse_size(text: str | int) -> int:
    """Bytes from ``1048576``, ``"512K"``, ``"256M"``, ``"1G"`` (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"{_SIZE_EXPECTED}, got {text}")
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"{_SIZE_EXPECTED}, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> EdgeConfig:
    """Read and validate an edge config; ``overrides`` (flag values) win over the file."""
    source = path.name
    cfg = build_config(source, read_toml(path, source, ConfigError), overrides or {}, path.parent)
    return replace(cfg, path=path, overrides=tuple((overrides or {}).items()))


def config_from_flags(overrides: Mapping[str, Any]) -> EdgeConfig:
    """An edge config from command-line flags alone."""
    return build_config("command line", {}, overrides, Path.cwd())


def reload_config(cfg: EdgeConfig) -> EdgeConfig:
    """The config ``cfg`` came from, read again (SIGHUP); the same flags win again."""
    if cfg.path is None:
        return cfg
    return load_config(cfg.path, dict(cfg.overrides))


def build_config(
    source: str, raw: dict[str, Any], overrides: Mapping[str, Any], base: Path | None = None
) -> EdgeConfig:
    """Validate a parsed TOML document plus flag overrides (keys: section.key); relative
    file names (certificates, CAs) are read from ``base``."""
    here = Path.cwd() if base is None else base
    with Table(source, "", _with_flags(raw, overrides), ConfigError) as top:
        cache = _cache(top.table("cache"), here)
        limits = _limits(top.table("limits"))
        sites = _sites(top.tables("sites"), here)
        tls = _tls(top.table("tls"), here) if top.has("tls") else None
        websocket = _websocket(top.table("websocket"))
        cfg = _edge(top.table("edge"), cache, limits, websocket, here)
        if cfg.origin is None and not sites:
            raise ConfigError(source, "edge.origin", "required key missing (or [[sites]])")
        armour = parse_armour(top.table("armour"))
        access_log = parse_access_log(top.table("access_log"))
        return replace(cfg, sites=sites, tls=tls, armour=armour, access_log=access_log)


def _with_flags(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The document with each given flag's value in its section (a flag names a key)."""
    merged = dict(raw)
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        table = merged.get(section, {})
        if value is not None and isinstance(table, dict):  # else the reader reports it
            merged[section] = {**table, key: value}
    return merged


def _edge(
    t: Table, cache: CacheSettings, limits: Limits, websocket: WebSocketSettings, here: Path
) -> EdgeConfig:
    with t:
        return EdgeConfig(
            source=t.source,
            name=t.parsed("name", _non_empty),
            listen=t.parsed("listen", parse_host_port, LISTEN),
            control=t.parsed("control", parse_host_port, CONTROL),
            origin=t.optional("origin", _http_url),
            routers=tuple(t.item(key, url, _http_url) for key, url in t.strings("routers")),
            token=t.get("token", str, ""),
            previous_tokens=previous_tokens(t),
            capacity_rps=t.real("capacity_rps", 0, MAX_CAPACITY_RPS, CAPACITY_RPS, lo_open=True),
            drain_s=t.real("drain_s", 0, MAX_TIMER_S, DRAIN_S),
            report_interval_s=t.real(
                "report_interval_s", 0, MAX_TIMER_S, REPORT_INTERVAL_S, lo_open=True
            ),
            cache=cache,
            limits=limits,
            origin_ca=_file(t, "origin_ca", here),
            origin_verify=t.get("origin_verify", bool, True),
            websocket=websocket,
            parents=_parents(t),
            prewarm_concurrency=t.integer(
                "prewarm_concurrency", 1, MAX_PREWARM_CONCURRENCY, PREWARM_CONCURRENCY
            ),
            prewarm_max_utilization=t.real(
                "prewarm_max_utilization", 0, 10, PREWARM_MAX_UTILIZATION, lo_open=True
            ),
        )


def _parents(t: Table) -> ParentSettings:
    urls: list[str] = []
    for key, text in t.strings("parents"):
        url = t.item(key, text, _parent_url)
        if url in urls:
            raise t.error(key, f"{url} is listed twice")
        urls.append(url)
    return ParentSettings(
        urls=tuple(urls),
        fail_after=t.integer("parent_fail_after", 1, MAX_PARENT_FAIL_AFTER, PARENT_FAIL_AFTER),
        retry_s=t.real("parent_retry_s", 0, MAX_TIMER_S, PARENT_RETRY_S, lo_open=True),
        go_direct=t.get("go_direct", bool, True),
    )


def _parent_url(text: str) -> str:
    """A parent's content URL: http://host:port, no path (the request's own is sent), no
    userinfo (never sent as credentials); lower-cased, so a duplicate is found."""
    url = http_url(text, ("http",)).rstrip("/")
    if url.count("/") > 2 or "@" in url:
        raise ValueError(
            f"expected a content URL like http://127.0.0.21:8080 (no path, no user), got {text!r}"
        )
    return url.lower()  # scheme and host compare case-insensitively (RFC 3986 §6.2.2.1)


def _sites(tables: list[Table], here: Path) -> tuple[SiteConfig, ...]:
    sites: list[SiteConfig] = []
    owner: dict[str, str] = {}  # host -> the site that has it
    for t in tables:
        with t:
            hosts = tuple(t.item(key, host, _host) for key, host in t.strings("hosts"))
            if not hosts:
                raise t.error("hosts", "expected at least one host name")
            site = SiteConfig(
                name=t.parsed("name", _non_empty, hosts[0]),
                hosts=hosts,
                origin=t.parsed("origin", _http_url),
                websocket=t.get("websocket", bool, True),
                origin_ca=_file(t, "origin_ca", here),
                methods=_methods(t),
            )
        if site.name == DEFAULT_SITE or any(s.name == site.name for s in sites):
            raise t.error("name", f"site name {site.name!r} is taken (names are unique)")
        for host in hosts:
            if host in owner:
                raise t.error("hosts", f"{host!r} is already a host of site {owner[host]!r}")
            owner[host] = site.name
        sites.append(site)
    return tuple(sites)


def _methods(t: Table) -> tuple[str, ...]:
    if not t.has("methods"):
        return DEFAULT_METHODS
    return tuple(t.item(key, text, _method) for key, text in t.strings("methods"))


def _method(text: str) -> str:
    if not _METHOD.match(text):
        raise ValueError(f"expected an upper-case HTTP method like GET, got {text!r}")
    return text


def _tls(t: Table, here: Path) -> TlsSettings:
    with t:
        default = CertificateConfig(
            (), _required_file(t, "cert", here), _required_file(t, "key", here)
        )
        certificates = []
        seen: set[str] = set()
        for c in t.tables("certificates"):
            with c:
                hosts = tuple(c.item(key, host, _host) for key, host in c.strings("hosts"))
                if not hosts:
                    raise c.error("hosts", "expected at least one host name")
                if seen & set(hosts):
                    raise c.error(
                        "hosts", f"{sorted(seen & set(hosts))[0]!r} has a certificate already"
                    )
                seen.update(hosts)
                certificates.append(
                    CertificateConfig(
                        hosts,
                        _required_file(c, "cert", here),
                        _required_file(c, "key", here),
                        c.path,
                    )
                )
        return TlsSettings(
            listen=t.parsed("listen", parse_host_port),
            default=default,
            certificates=tuple(certificates),
        )


def _file(t: Table, key: str, here: Path) -> str | None:
    """An optional file name, relative to the config file's directory; read later."""
    name = t.optional(key, _non_empty)
    return None if name is None else str(here / name)


def _required_file(t: Table, key: str, here: Path) -> str:
    return str(here / t.parsed(key, _non_empty))


def _host(text: str) -> str:
    host = text.lower().rstrip(".")
    if not _HOST.match(host):
        raise ValueError(f"expected a host name like img.example.com (no port), got {text!r}")
    return host


def _cache(t: Table, here: Path) -> CacheSettings:
    with t:
        return CacheSettings(
            disk_path=_file(t, "disk_path", here),
            disk_size_bytes=t.amount("disk_size", _positive_size, DISK_BYTES),
            disk_fsync=t.get("disk_fsync", bool, False),
            fast_path=t.get("fast_path", bool, True),
            size_bytes=t.amount("size", _positive_size, CACHE_BYTES),
            max_object_bytes=t.amount("max_object", _positive_size, MAX_OBJECT_BYTES),
            eviction=t.parsed("eviction", _eviction, EVICTION),
            cookie_requests=t.parsed("cookie_requests", _cookie_policy, COOKIE_REQUESTS),
        )


def _limits(t: Table) -> Limits:
    def seconds(key: str, default: float, *, lo_open: bool = True) -> float:
        return t.real(key, 0, MAX_TIMER_S, default, lo_open=lo_open)

    def header_limit(key: str, default: int) -> int:
        return t.integer(key, 1, MAX_HEADER_LIMIT_BYTES, default)

    with t:
        return Limits(
            max_line_bytes=header_limit("max_line_bytes", MAX_LINE_BYTES),
            max_field_bytes=header_limit("max_field_bytes", MAX_FIELD_BYTES),
            max_headers=t.integer("max_headers", 1, MAX_HEADER_FIELDS, MAX_HEADERS),
            max_body_bytes=t.amount("max_body_bytes", _positive_size, MAX_BODY_BYTES),
            origin_connect_timeout_s=seconds("origin_connect_timeout_s", ORIGIN_CONNECT_TIMEOUT_S),
            origin_read_timeout_s=seconds("origin_read_timeout_s", ORIGIN_READ_TIMEOUT_S),
            origin_head_timeout_s=seconds("origin_head_timeout_s", ORIGIN_HEAD_TIMEOUT_S),
            origin_min_bytes_per_s=t.integer(
                "origin_min_bytes_per_s", 0, MAX_MIN_BYTES_PER_S, ORIGIN_MIN_BYTES_PER_S
            ),
            origin_min_rate_window_s=seconds("origin_min_rate_window_s", ORIGIN_MIN_RATE_WINDOW_S),
            stream_idle_timeout_s=seconds("stream_idle_timeout_s", STREAM_IDLE_TIMEOUT_S),
            coalesce_wait_s=seconds("coalesce_wait_s", COALESCE_WAIT_S, lo_open=False),
        )


def _websocket(t: Table) -> WebSocketSettings:
    with t:
        idle_s = t.real("idle_timeout_s", 0, MAX_TIMER_S, IDLE_TIMEOUT_S, lo_open=True)
        ping_s = t.real("ping_interval_s", 0, MAX_TIMER_S, PING_INTERVAL_S)
        if ping_s >= idle_s:
            # A ping no sooner than the timeout could never keep a quiet tunnel open.
            raise t.error("ping_interval_s", f"must be under idle_timeout_s ({idle_s:g}), or 0")
        return WebSocketSettings(
            max_tunnels=t.integer("max_tunnels", 0, MAX_TUNNELS_LIMIT, MAX_TUNNELS),
            max_message_bytes=t.amount("max_message_bytes", _positive_size, MAX_MESSAGE_BYTES),
            idle_timeout_s=idle_s,
            ping_interval_s=ping_s,
        )


def _non_empty(text: str) -> str:
    if not text:
        raise ValueError("expected a non-empty string")
    return text


def _http_url(text: str) -> str:
    return http_url(text, ("http", "https")).rstrip("/")


def _positive_size(value: str | int) -> int:
    size = parse_size(value)
    if size == 0:
        raise ValueError(f"{_SIZE_EXPECTED} (not 0)")
    return size


def _cookie_policy(text: str) -> CookiePolicy:
    for policy in COOKIE_POLICIES:
        if text == policy:
            return policy
    raise ValueError(f"expected {' | '.join(COOKIE_POLICIES)}, got {text!r}")


def _eviction(text: str) -> PolicyName:
    if text not in POLICIES:
        raise ValueError(f"expected {' | '.join(POLICIES)}, got {text!r}")
    return text
