"""cdn: the contract the router and the edge share; it imports neither program.

cdn.report     the load report codec (LoadReport), its path and the edge statuses
cdn.auth       the one bearer-token check of both control APIs
cdn.config     config primitives: HostPort, listen addresses, URLs, names, tokens, bounds
cdn.tomltable  the typed, path-aware TOML table reader both config loaders use
cdn.errors     the error root (CDNError) and the exit codes
cdn.logs       the log format and set-up
"""

from cdn.config import HostPort, parse_host_port
from cdn.errors import EXIT_CONFIG, CDNError, ConfigError, ReportError
from cdn.logs import setup_logging
from cdn.report import REPORT_PATH, LoadReport

__all__ = [
    "EXIT_CONFIG",
    "REPORT_PATH",
    "CDNError",
    "ConfigError",
    "HostPort",
    "LoadReport",
    "ReportError",
    "parse_host_port",
    "setup_logging",
]
