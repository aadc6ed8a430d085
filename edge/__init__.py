"""edge: the CDN's caching HTTP reverse proxy, reporting its load to the routers."""

__all__: list[str] = []
