"""edge: the CDN's caching HTTP reverse proxy, reporting its load to the routers."""

from edge.config import EdgeConfig, load_config
from edge.errors import ConfigError, EdgeError, OriginError
from edge.server import EdgeServer, run, serve

__all__ = [
    "ConfigError",
    "EdgeConfig",
    "EdgeError",
    "EdgeServer",
    "OriginError",
    "load_config",
    "run",
    "serve",
]
