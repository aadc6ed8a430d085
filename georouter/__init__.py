"""georouter: the authoritative geo-DNS request router of the CDN."""

from cdn.report import LoadReport
from georouter.config import RouterConfig, load_config
from georouter.errors import ConfigError, GeoRouterError, ReportError

__all__ = [
    "ConfigError",
    "GeoRouterError",
    "LoadReport",
    "ReportError",
    "RouterConfig",
    "load_config",
]
