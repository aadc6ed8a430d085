"""The one exception root of the CDN and what each kind of failure exits with.

Each program keeps its own subclasses under `CDNError` (georouter.errors, edge.errors),
split by whose fault it is; the shared modules raise the classes defined here. A command
line catches `CDNError`, prints it as one line and exits with `exit_code`.
"""

from __future__ import annotations

from typing import ClassVar

EXIT_OK = 0
EXIT_CONFIG = 2  # a bad config, GeoIP file, flag or listen address (like nginx -t, BIND's named)
EXIT_INTERRUPTED = 130  # SIGINT: 128 + signal number, the shell's convention


class CDNError(Exception):
    """Root of every error the router and the edge raise on purpose."""

    exit_code: ClassVar[int] = EXIT_CONFIG


class ConfigError(CDNError):
    """A configuration or data file is unusable: names the file, the key and the expectation."""

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(f"{source}: {key}: {message}" if key else f"{source}: {message}")
        self.source = source
        self.key = key
        self.message = message


class ReportError(CDNError):
    """A load report is malformed (the sending edge's fault: HTTP 400)."""
