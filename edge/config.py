"""Edge configuration: TOML and command-line flags loaded once into frozen dataclasses.

A config file looks like::

    [edge]
    name = "edge-eu-1"
    listen = "127.0.0.13:8080"        # content (the caching proxy)
    control = "127.0.0.13:9080"       # /healthz, /metrics, /purge
    origin = "http://127.0.0.1:8000"
    routers = ["http://127.0.0.1:9153"]
    token = "demo-token"
    capacity_rps = 2000
    drain_s = 25

    [cache]
    size = "256M"
    max_object = "64M"
    eviction = "sieve"

    [limits]
    max_line_bytes = 8190
    ...

Flags given on the command line override the file, key by key.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from edge.errors import ConfigError
from georouter.config import HostPort

Eviction = Literal["lru", "sieve", "s3fifo"]
EVICTION_POLICIES: tuple[Eviction, ...] = ("lru", "sieve", "s3fifo")

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
EVICTION: Eviction = "sieve"

MAX_LINE_BYTES = 8190  # request line and each header line (aiohttp max_line_size)
MAX_FIELD_BYTES = 8190  # one header field (aiohttp max_field_size)
MAX_HEADERS = 100  # header fields per request
MAX_BODY_BYTES = 16 * MiB  # request body passed to the origin (aiohttp client_max_size)
ORIGIN_CONNECT_TIMEOUT_S = 2.0
ORIGIN_READ_TIMEOUT_S = 10.0  # for the response head, then between body reads
COALESCE_WAIT_S = 5.0  # how long a request waits for another's fetch of the same key
REPORT_INTERVAL_S = 1.0

_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB}


@dataclass(frozen=True, slots=True)
class CacheSettings:
    size_bytes: int = CACHE_BYTES
    max_object_bytes: int = MAX_OBJECT_BYTES
    eviction: Eviction = EVICTION


@dataclass(frozen=True, slots=True)
class Limits:
    max_line_bytes: int = MAX_LINE_BYTES
    max_field_bytes: int = MAX_FIELD_BYTES
    max_headers: int = MAX_HEADERS
    max_body_bytes: int = MAX_BODY_BYTES
    origin_connect_timeout_s: float = ORIGIN_CONNECT_TIMEOUT_S
    origin_read_timeout_s: float = ORIGIN_READ_TIMEOUT_S
    coalesce_wait_s: float = COALESCE_WAIT_S


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    source: str  # the file name, or "command line"
    name: str
    listen: HostPort
    control: HostPort
    origin: str  # http://host[:port][/base]: every request target is appended
    routers: tuple[str, ...] = ()
    token: str = ""
    capacity_rps: float = CAPACITY_RPS
    drain_s: float = DRAIN_S
    report_interval_s: float = REPORT_INTERVAL_S
    cache: CacheSettings = CacheSettings()
    limits: Limits = Limits()


def parse_size(text: str | int) -> int:
    """Bytes from ``1048576``, ``"512K"``, ``"256M"``, ``"1G"`` (binary units)."""
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ValueError("must not be negative")
        return text
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"expected a size like 1048576, 512K, 256M or 1G, got {text!r}")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


def parse_hostport(text: str) -> HostPort:
    """``127.0.0.1:8080`` or ``[::1]:8080``; port 0 asks the kernel for a free port."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return HostPort(host, int(port))


def load_config(path: Path, overrides: Mapping[str, Any] | None = None) -> EdgeConfig:
    """Read and validate an edge config; ``overrides`` (flag values) win over the file."""
    source = path.name
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(source, "", f"cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(source, "", f"not valid TOML: {exc}") from None
    return build_config(source, raw, overrides or {})


def config_from_flags(overrides: Mapping[str, Any]) -> EdgeConfig:
    """An edge config from command-line flags alone."""
    return build_config("command line", {}, overrides)


def build_config(source: str, raw: dict[str, Any], overrides: Mapping[str, Any]) -> EdgeConfig:
    """Validate a parsed TOML document plus flag overrides (keys: section.key)."""
    _reject_unknown(source, "", raw, {"edge", "cache", "limits"})
    sections = {name: dict(_table(source, raw, name)) for name in ("edge", "cache", "limits")}
    for dotted, value in overrides.items():
        if value is not None:
            section, key = dotted.split(".")
            sections[section][key] = value
    cfg = _edge(source, sections["edge"])
    return replace(
        cfg,
        cache=_cache(source, sections["cache"]),
        limits=_limits(source, sections["limits"]),
    )


def _table(source: str, raw: dict[str, Any], name: str) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise ConfigError(source, name, "expected a table")
    return table


def _reject_unknown(source: str, where: str, table: dict[str, Any], known: set[str]) -> None:
    for key in table:
        if key not in known:
            path = f"{where}.{key}" if where else key
            raise ConfigError(source, path, f"unknown key (known: {', '.join(sorted(known))})")


def _edge(source: str, t: dict[str, Any]) -> EdgeConfig:
    known = {"name", "listen", "control", "origin", "routers", "token", "capacity_rps",
             "drain_s", "report_interval_s"}  # fmt: skip
    _reject_unknown(source, "edge", t, known)
    get = _Getter(source, "edge", t)
    routers = t.get("routers", [])
    if not isinstance(routers, list | tuple):
        raise ConfigError(source, "edge.routers", "expected a list of http:// URLs")
    return EdgeConfig(
        source=source,
        name=get.text("name", required=True),
        listen=get.hostport("listen", LISTEN),
        control=get.hostport("control", CONTROL),
        origin=_url(source, "edge.origin", get.text("origin", required=True)),
        routers=tuple(_url(source, f"edge.routers[{i}]", r) for i, r in enumerate(routers)),
        token=get.text("token"),
        capacity_rps=get.number("capacity_rps", CAPACITY_RPS, positive=True),
        drain_s=get.number("drain_s", DRAIN_S),
        report_interval_s=get.number("report_interval_s", REPORT_INTERVAL_S, positive=True),
    )


def _cache(source: str, t: dict[str, Any]) -> CacheSettings:
    _reject_unknown(source, "cache", t, {"size", "max_object", "eviction"})
    get = _Getter(source, "cache", t)
    eviction = t.get("eviction", EVICTION)
    if eviction not in EVICTION_POLICIES:
        expected = " | ".join(EVICTION_POLICIES)
        raise ConfigError(source, "cache.eviction", f"expected {expected}, got {eviction!r}")
    return CacheSettings(
        size_bytes=get.size("size", CACHE_BYTES),
        max_object_bytes=get.size("max_object", MAX_OBJECT_BYTES),
        eviction=cast(Eviction, eviction),
    )


def _limits(source: str, t: dict[str, Any]) -> Limits:
    defaults = Limits()
    _reject_unknown(source, "limits", t, set(Limits.__dataclass_fields__))
    get = _Getter(source, "limits", t)
    return Limits(
        max_line_bytes=get.integer("max_line_bytes", defaults.max_line_bytes),
        max_field_bytes=get.integer("max_field_bytes", defaults.max_field_bytes),
        max_headers=get.integer("max_headers", defaults.max_headers),
        max_body_bytes=get.size("max_body_bytes", defaults.max_body_bytes),
        origin_connect_timeout_s=get.number(
            "origin_connect_timeout_s", defaults.origin_connect_timeout_s, positive=True
        ),
        origin_read_timeout_s=get.number(
            "origin_read_timeout_s", defaults.origin_read_timeout_s, positive=True
        ),
        coalesce_wait_s=get.number("coalesce_wait_s", defaults.coalesce_wait_s),
    )


def _url(source: str, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(source, key, f"expected an http:// URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme != "http" or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(source, key, f"expected an http://host[:port][/path] URL, got {value!r}")
    return value.rstrip("/")


@dataclass(frozen=True, slots=True)
class _Getter:
    """Typed reads from one table, each failing as `file: section.key: expectation`."""

    source: str
    section: str
    table: dict[str, Any]

    def _fail(self, key: str, expectation: str) -> ConfigError:
        got = self.table.get(key)
        return ConfigError(self.source, f"{self.section}.{key}", f"{expectation}, got {got!r}")

    def text(self, key: str, default: str = "", *, required: bool = False) -> str:
        if key not in self.table and required:
            raise ConfigError(self.source, f"{self.section}.{key}", "required")
        value = self.table.get(key, default)
        if not isinstance(value, str) or (required and not value):
            raise self._fail(key, "expected a non-empty string")
        return value

    def hostport(self, key: str, default: str) -> HostPort:
        value = self.table.get(key, default)
        try:
            return parse_hostport(str(value))
        except ValueError:
            raise self._fail(key, "expected HOST:PORT") from None

    def number(self, key: str, default: float, *, positive: bool = False) -> float:
        value = self.table.get(key, default)
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise self._fail(key, "expected a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, "expected a number")
        if not 0 <= value < float("inf") or (positive and value == 0):
            raise self._fail(key, "expected a finite number " + ("> 0" if positive else ">= 0"))
        return float(value)

    def integer(self, key: str, default: int) -> int:
        value = self.table.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise self._fail(key, "expected a positive integer")
        return value

    def size(self, key: str, default: int) -> int:
        try:
            return parse_size(self.table.get(key, default))
        except ValueError:
            raise self._fail(key, "expected a size like 1048576, 512K, 256M or 1G") from None
