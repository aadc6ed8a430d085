"""Exception root of the router, split by whose fault it is."""

from __future__ import annotations


class GeoRouterError(Exception):
    """Root of every error the router raises on purpose."""


class ConfigError(GeoRouterError):
    """A configuration or GeoIP file is unusable: names the file, the key and the expectation."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source = source
        self.key = key
        self.message = message


class ReportError(GeoRouterError):
    """A load report from an edge is malformed (the edge's fault: HTTP 400)."""
