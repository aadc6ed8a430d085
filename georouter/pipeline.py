"""The answering pipeline, built in one place: GeoIP placement, then the selector's pick,
then the responder's encoding. The main process (start and reload), each DNS worker, the
fuzz target and the benchmarks build it here, so they all answer the same way."""

from __future__ import annotations

from georouter.config import RouterConfig
from georouter.geo import Geo
from georouter.geodb import GeoDatabase
from georouter.responder import Picker, QueryRecorder, Responder
from georouter.tallies import HotPathTallies


def build_answering(
    config: RouterConfig,
    geodb: GeoDatabase,
    tallies: HotPathTallies,
    picker: Picker,
    query_log: QueryRecorder | None = None,
) -> Responder:
    """A responder for `config` that places clients with `geodb` and picks with `picker`
    (the router's long-lived Selector), recording to `query_log` if on; raises ConfigError
    when the two do not fit."""
    geo = Geo(config, geodb, tallies)
    return Responder(config, geo, picker, tallies, query_log=query_log)
