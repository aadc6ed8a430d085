"""The fuzz targets by name; each is built lazily (the DNS one opens the GeoIP database)."""

from __future__ import annotations

from collections.abc import Callable

from fuzz.runner import Target


def _dns() -> Target:
    from fuzz.dns_target import DnsTarget

    return DnsTarget()


def _http() -> Target:
    from fuzz.http_target import HttpTarget

    return HttpTarget()


TARGETS: dict[str, Callable[[], Target]] = {"dns": _dns, "http": _http}
