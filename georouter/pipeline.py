"""The answering pipeline, built in one place: GeoIP placement, then the selector's pick,
then the responder's encoding. The main process (start and reload), each DNS worker, the
fuzz target and the benchmarks build it here, so they all answer the same way."""

from __future__ import annotations

from georouter.config import RouterConfig
from georouter.geo import Geo
from georouter.geodb import GeoDatabase
from georouter.responder import Picker, Responder
from georouter.tallies import HotPathTallies


def build_answering(
    config: RouterConfig, geodb: GeoDatabase, tallies: HotPathTallies, picker: Picker
) -> Responder:
    """A responder for `config` that places clients with `geodb` and picks with `picker`
    (the router's long-lived Selector); raises ConfigError when the two do not fit."""
    return Responder(config, Geo(config, geodb, tallies), picker, tallies)
