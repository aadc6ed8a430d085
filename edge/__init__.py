"""edge: the CDN's caching HTTP reverse proxy, reporting its load to the routers.

Light on purpose: importing a pure module (``edge.rules``, ``edge.cache``) loads no aiohttp;
the server's names are imported on first use (PEP 562).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.config import EdgeConfig, load_config
from edge.errors import ConfigError, EdgeError, OriginError

if TYPE_CHECKING:
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

_SERVER_NAMES = frozenset({"EdgeServer", "run", "serve"})


def __getattr__(name: str) -> object:
    if name in _SERVER_NAMES:
        from edge import server

        return getattr(server, name)
    raise AttributeError(f"module 'edge' has no attribute {name!r}")
