"""The router's inspection commands, `georouter check` and `georouter locate`: they print.

The GeoIP placement itself is pure (georouter/geo.py); this module only loads, asks and
prints one line per answer for the command line.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from ipaddress import ip_network
from pathlib import Path

from georouter.config import load_config
from georouter.geo import Geo, open_geoip
from georouter.tallies import HotPathTallies

EXIT_BAD_ADDRESS = 2


def check(config_path: Path, geoip_path: Path | None) -> int:
    """`georouter check`: load the config and the database, print a one-line summary."""
    config = load_config(config_path)
    path = geoip_path or config.router.geoip
    with open_geoip(path) as reader:
        meta = reader.metadata()
    built = datetime.fromtimestamp(meta.build_epoch, UTC).date()
    zones = ", ".join(z.origin for z in config.zones)
    regions = ", ".join(r.name for r in config.regions)
    shields = tuple(node for node in config.nodes if node.role == "shield")
    nodes = _count(config.nodes, "node") + (f" ({_count(shields, 'shield')})" if shields else "")
    print(
        f"{config_path}: ok: {_count(config.zones, 'zone')} ({zones}), "
        f"{_count(config.regions, 'region')} ({regions}), {nodes}, "
        f"{_count(config.overrides, 'override')}; geoip: {meta.database_type} built {built} "
        f"({'embedded' if path is None else path})"
    )
    return 0


def _count(items: tuple[object, ...], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def locate_command(config_path: Path, geoip_path: Path | None, addresses: list[str]) -> int:
    """`georouter locate IP[/LEN]...`: one line per address; exit 2 if any was not an address.

    ADDR/LEN places the network as an ECS query with SOURCE PREFIX-LENGTH LEN would.
    """
    config = load_config(config_path)
    status = 0
    with open_geoip(geoip_path or config.router.geoip) as reader:
        geo = Geo(config, reader, HotPathTallies())
        for text in addresses:
            try:
                print(_describe(geo, text), flush=True)
            except ValueError as exc:
                print(f"georouter: locate: {exc}", file=sys.stderr)
                status = EXIT_BAD_ADDRESS
    return status


def _describe(geo: Geo, text: str) -> str:
    address, source_prefix = text, None
    if "/" in text:
        network = ip_network(text, strict=False)
        address, source_prefix = str(network.network_address), network.prefixlen
    location = geo.locate(address)
    placement = geo.place(address, source_prefix)
    position = "-" if location.latitude is None else f"{location.latitude:g},{location.longitude:g}"
    return (
        f"{text} country={location.country or '-'} continent={location.continent or '-'} "
        f"lat/lon={position} network={location.network} region={placement.region} "
        f"scope=/{placement.prefix_len}"
    )
