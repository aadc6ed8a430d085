"""A small MaxMind-format City database for tests: `write_test_geoip(path)`.

Run as `python tests/geoip_fixture.py OUT.mmdb` to write one by hand. Every network lies in
address space reserved for documentation or benchmarking (RFC 5737, RFC 2544, RFC 3849), so
no test can mistake it for real data. `TEST_NETWORKS` says what each network is for and where
the shipped topology (georouter/data/cdn.toml) places it.

The database is IPv6 with the IPv4 tree at ::/96, as MaxMind builds theirs (mmdb_writer's
`ipv4_compatible=True`): an IPv4 lookup starts 96 bits down, so its prefix length is
relative to IPv4. Unlike MaxMind's files it has no ::ffff:0:0/96 alias for IPv4-mapped
addresses; `Geo` unmaps those itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet

BUILD_EPOCH = 1735689600  # 2025-01-01T00:00:00Z, fixed so the file is byte-for-byte repeatable
DATABASE_TYPE = "GeoIP2-City"


@dataclass(frozen=True, slots=True)
class TestNetwork:
    network: str
    country: str | None
    continent: str | None
    latitude: float | None
    longitude: float | None
    demo_region: str  # where georouter/data/cdn.toml places it
    purpose: str
    registered_country: str | None = None

    __test__ = False  # not a pytest test class despite the name

    def record(self) -> dict[str, Any]:
        """The City record as MaxMind lays it out (names trimmed to English)."""
        record: dict[str, Any] = {}
        if self.continent:
            record["continent"] = {"code": self.continent, "names": {"en": self.continent}}
        if self.country:
            record["country"] = {"iso_code": self.country, "names": {"en": self.country}}
        if self.registered_country:
            record["registered_country"] = {"iso_code": self.registered_country}
        if self.latitude is not None and self.longitude is not None:
            record["location"] = {
                "latitude": self.latitude,
                "longitude": self.longitude,
                "accuracy_radius": 100,
            }
        return record


TEST_NETWORKS: tuple[TestNetwork, ...] = (
    TestNetwork("203.0.113.0/24", "DE", "EU", 50.11, 8.68, "eu", "continent EU"),
    TestNetwork("198.51.100.0/24", "US", "NA", 37.75, -97.82, "na", "continent NA"),
    TestNetwork("192.0.2.0/25", "JP", "AS", 35.69, 139.69, "ap", "sub-/24 network, AS"),
    TestNetwork("192.0.2.128/25", "AU", "OC", -33.87, 151.21, "ap", "sub-/24 network, OC"),
    TestNetwork("198.18.0.0/16", "BR", "SA", -23.55, -46.63, "na", "a /16: one lookup, 256 /24s"),
    TestNetwork(
        "198.19.0.0/24", "AQ", "AN", -68.58, 77.97, "ap", "country and continent unclaimed: nearest"
    ),
    TestNetwork("198.19.1.0/24", None, None, 21.3, -157.8, "na", "coordinates only: nearest"),
    TestNetwork("198.19.2.0/24", "SA", "AS", 24.71, 46.68, "eu", "country SA beats continent AS"),
    TestNetwork("198.19.3.0/24", None, "EU", None, None, "eu", "continent only"),
    TestNetwork("198.19.4.0/24", None, None, None, None, "na", "empty record: default region"),
    TestNetwork("198.19.5.0/24", None, None, None, None, "na", "registered country only", "US"),
    TestNetwork(
        "198.19.7.0/24", "RU", "EU", 43.12, 131.89, "eu", "continent EU beats nearest (ap)"
    ),
    TestNetwork("198.19.6.16/28", "JP", "AS", 35.69, 139.69, "ap", "a /28: cached per address"),
    TestNetwork("2001:db8:1::/48", "FR", "EU", 48.86, 2.35, "eu", "IPv6 /48, EU"),
    TestNetwork("2001:db8:2::/48", "US", "NA", 37.75, -97.82, "na", "IPv6 /48, NA"),
    TestNetwork("2001:db8:3::/48", "SG", "AS", 1.29, 103.85, "ap", "IPv6 /48, AS"),
    TestNetwork("2001:db8:4:1::/64", "JP", "AS", 35.69, 139.69, "ap", "IPv6 /64: per address"),
    TestNetwork("2001:db8:8000::/33", "BR", "SA", -23.55, -46.63, "na", "IPv6 /33: wide"),
)


class _RepeatableWriter(MMDBWriter):
    def _build_meta(self) -> dict[str, Any]:
        return {**super()._build_meta(), "build_epoch": BUILD_EPOCH}


def write_test_geoip(path: Path, database_type: str = DATABASE_TYPE) -> Path:
    """Write the test database (TEST_NETWORKS) to `path` and return `path`."""
    writer = _RepeatableWriter(
        ip_version=6,
        database_type=database_type,
        languages=["en"],
        description="georouter test database (documentation address space only)",
        ipv4_compatible=True,
    )
    for net in TEST_NETWORKS:
        writer.insert_network(IPSet([net.network]), net.record())
    writer.to_db_file(str(path))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/geoip_fixture.py OUT.mmdb")
    print(write_test_geoip(Path(sys.argv[1])))
