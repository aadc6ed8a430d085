"""Exception root of the router, split by whose fault it is (under the shared cdn.errors)."""

from __future__ import annotations

from cdn import errors as shared
from cdn.errors import ReportError as ReportError  # raised by the shared report codec


class GeoRouterError(shared.CDNError):
    """Root of every error the router raises on purpose."""


class ConfigError(GeoRouterError, shared.ConfigError):
    """A configuration or GeoIP file is unusable: names the file, the key and the expectation."""
