"""georouter: the authoritative geo-DNS request router of the CDN."""

from georouter.config import RouterConfig, load_config
from georouter.errors import ConfigError, GeoRouterError, ReportError
from georouter.report import LoadReport

__all__ = [
    "ConfigError",
    "GeoRouterError",
    "LoadReport",
    "ReportError",
    "RouterConfig",
    "load_config",
]
