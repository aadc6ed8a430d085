"""GeoIP placement: precedence, ECS scope (RFC 7871 §7.2.1), the per-network cache."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from georouter import geo as geo_module
from georouter.commands import check
from georouter.config import DEFAULT_CONFIG, RouterConfig, load_config
from georouter.errors import ConfigError
from georouter.geo import Geo, Location, Placement, open_geoip
from georouter.responder import CachingPlacer
from georouter.tallies import HotPathTallies
from tests.geoip_fixture import TEST_NETWORKS, write_test_geoip

OVERRIDES = {
    "203.0.113.128/26": "ap",  # narrower than the DE /24
    "198.18.5.0/24": "eu",  # cuts a piece out of the BR /16
    "10.0.0.0/8": "eu",  # private space, which would otherwise go to the default region
    "10.20.0.0/16": "ap",  # nested in the override above
    "2001:db8:2:8000::/49": "eu",  # the upper half of the US /48
}


@pytest.fixture(scope="module")
def db_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_test_geoip(tmp_path_factory.mktemp("geoip") / "test-city.mmdb")


@pytest.fixture(scope="module")
def reader(db_path: Path) -> Iterator[maxminddb.Reader]:
    with open_geoip(db_path) as opened:
        yield opened


@pytest.fixture(scope="module")
def config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "cdn.toml"
    blocks = [f'\n[[overrides]]\nnetwork = "{n}"\nregion = "{r}"\n' for n, r in OVERRIDES.items()]
    path.write_text(DEFAULT_CONFIG.read_text() + "".join(blocks))
    return path


@pytest.fixture(scope="module")
def config(config_path: Path) -> RouterConfig:
    return load_config(config_path)


@pytest.fixture
def geo(config: RouterConfig, reader: maxminddb.Reader) -> Geo:
    return Geo(config, reader, HotPathTallies())


def uncached(config: RouterConfig, reader: maxminddb.Reader, address: str) -> Placement:
    return Geo(config, reader, HotPathTallies()).place(address)


# ---- precedence: override > country > continent > nearest > default ---------------------

PRECEDENCE = [
    # address, region, scope, why
    ("203.0.113.150", "ap", 26, "override beats country DE"),
    ("198.19.2.1", "eu", 24, "country SA (eu) beats continent AS (ap)"),
    ("198.19.7.1", "eu", 24, "continent EU beats the nearest region (ap, Vladivostok)"),
    ("198.51.100.7", "na", 24, "continent NA"),
    ("192.0.2.1", "ap", 25, "continent AS, /25 network"),
    ("192.0.2.129", "ap", 25, "continent OC, the other /25"),
    ("198.19.0.1", "ap", 24, "AQ/AN claimed by nobody: nearest to Davis Station"),
    ("198.19.1.1", "na", 24, "no country, only coordinates (Honolulu): nearest"),
    ("198.19.3.1", "eu", 24, "continent only"),
    ("198.19.5.1", "na", 24, "registered country US, no continent: nearest is moot, default"),
    ("198.19.4.1", "na", 24, "empty record: default"),
    ("2001:db8:1::1", "eu", 48, "IPv6 FR/EU"),
    ("2001:db8:3:ffff::1", "ap", 48, "IPv6 SG/AS"),
    ("2001:db8:8000::1", "na", 33, "IPv6 /33 BR/SA"),
    ("2001:db8:4:1::1", "ap", 64, "IPv6 /64"),
]


@pytest.mark.parametrize(("address", "region", "scope", "why"), PRECEDENCE)
def test_precedence(geo: Geo, address: str, region: str, scope: int, why: str) -> None:
    assert geo.place(address) == Placement(region, scope), why


def test_fixture_networks_land_in_their_demo_regions(reader: maxminddb.Reader) -> None:
    demo = Geo(load_config(DEFAULT_CONFIG), reader, HotPathTallies())
    for net in TEST_NETWORKS:
        address = str(ip_network(net.network).network_address + 1)
        assert demo.place(address).region == net.demo_region, net.purpose


@pytest.mark.parametrize(
    ("address", "scope"),
    [
        ("127.0.0.1", 8),
        ("192.168.1.1", 16),
        ("172.31.255.255", 12),
        ("169.254.1.1", 16),
        ("100.64.0.1", 10),
        ("0.0.0.0", 8),
        ("224.0.0.251", 4),
        ("255.255.255.255", 4),
        ("::1", 128),
        ("::", 128),
        ("fe80::1", 10),
        ("fd00::1", 7),
        ("ff02::1", 8),
    ],
)
def test_no_geography_goes_to_default_region(geo: Geo, address: str, scope: int) -> None:
    assert geo.place(address) == Placement("na", scope)


def test_not_found_goes_to_default_with_the_empty_subtree_as_scope(geo: Geo) -> None:
    # 8.8.8.8 is not in the test database: the lookup ends in an empty /1, and the nearest
    # rule that could cut it is 10.0.0.0/8, which shares 6 leading bits with 8.8.8.8.
    assert geo.locate("8.8.8.8").network == ip_network("0.0.0.0/1")
    assert geo.place("8.8.8.8") == Placement("na", 7)
    assert geo.place("198.19.6.1") == Placement("na", 28)  # the empty /28 beside the JP /28


# ---- ECS scope: overrides and the source prefix (RFC 7871 §7.2.1) -------------------------


@pytest.mark.parametrize(
    ("address", "placement", "why"),
    [
        ("203.0.113.150", Placement("ap", 26), "inside an override narrower than the network"),
        ("203.0.113.5", Placement("eu", 25), "the /24 is cut by the /26 override: /25 is uniform"),
        ("198.18.5.1", Placement("eu", 24), "inside the /24 override cut from the /16"),
        ("198.18.4.1", Placement("na", 24), "next to the override: 23 shared bits"),
        ("198.18.200.1", Placement("na", 17), "other half of the /16 from the override"),
        ("10.1.2.3", Placement("eu", 12), "override /8 cut by the nested /16"),
        ("10.20.1.1", Placement("ap", 16), "nested override wins"),
        ("2001:db8:2::1", Placement("na", 49), "the US /48 cut by the /49 override"),
        ("2001:db8:2:8000::1", Placement("eu", 49), "IPv6 override"),
        ("::fffe:cb00:7105", Placement("na", 96), "beside ::ffff:0:0/96, placed by IPv4 rules"),
    ],
)
def test_scope_rfc7871_7_2_1(geo: Geo, address: str, placement: Placement, why: str) -> None:
    assert geo.place(address) == placement, why


def test_override_on_private_space_beats_the_no_geography_rule(geo: Geo) -> None:
    assert geo.place("10.0.0.1").region == "eu"


@pytest.mark.parametrize(
    ("address", "source", "scope"),
    [
        ("198.51.100.0", 24, 24),  # equal
        ("198.51.100.0", 32, 24),  # a longer source does not lengthen the scope
        ("198.51.100.0", 16, 16),  # capped: we only know the first 16 bits
        ("198.18.0.0", 8, 8),
        ("192.0.2.0", 24, 24),  # the /25 network would need /25; we never claim more than /24
        ("2001:db8:4:1::", 56, 56),
        ("2001:db8:1::", 56, 48),
        ("0.0.0.0", 0, 0),
    ],
)
def test_scope_capped_at_source_prefix_rfc7871_7_2_1(
    geo: Geo, address: str, source: int, scope: int
) -> None:
    assert geo.place(address, source).prefix_len == scope
    assert geo.place(address, source).prefix_len == scope  # and again from the cache


def test_ipv4_prefix_is_relative_to_ipv4_in_an_ipv6_database(
    reader: maxminddb.Reader, geo: Geo
) -> None:
    assert reader.metadata().ip_version == 6
    assert reader.get_with_prefix_len("203.0.113.5")[1] == 24
    assert reader.get_with_prefix_len("::203.0.113.5")[1] == 120  # the IPv4 subtree at ::/96
    assert geo.locate("203.0.113.5").network == ip_network("203.0.113.0/24")


def test_ipv4_mapped_addresses_are_placed_by_their_ipv4_address(geo: Geo) -> None:
    assert geo.place("::ffff:203.0.113.5") == Placement("eu", 96 + 25)
    assert geo.place("::ffff:10.20.0.1") == Placement("ap", 96 + 16)
    assert geo.locate("::ffff:198.51.100.1").country == "US"


# ---- the cache -----------------------------------------------------------------------------


def test_tallies_count_lookups_and_cache_hits(
    config: RouterConfig, reader: maxminddb.Reader
) -> None:
    tallies = HotPathTallies()
    geo = Geo(config, reader, tallies)
    for host in range(1, 11):
        geo.place(f"198.51.100.{host}")  # one /24 network: one miss, nine hits
    geo.place("198.18.1.1")
    geo.place("198.18.200.1")  # same /16 network, but another /24 bucket: a miss
    assert (tallies.geoip_lookups, tallies.geoip_cache_hits) == (12, 9)
    geo.reused()  # a placement the responder kept, given again: a lookup served by a cache
    assert (tallies.geoip_lookups, tallies.geoip_cache_hits) == (13, 10)
    assert isinstance(geo, CachingPlacer)  # so the responder keeps its placements


def test_long_networks_are_cached_per_address(
    config: RouterConfig, reader: maxminddb.Reader
) -> None:
    tallies = HotPathTallies()
    geo = Geo(config, reader, tallies)
    assert geo.place("198.19.6.17") == Placement("ap", 28)
    assert geo.place("198.19.6.1") == Placement("na", 28)  # same /24, other /28: not a hit
    assert geo.place("198.19.6.17") == Placement("ap", 28)
    assert tallies.geoip_cache_hits == 1


def test_cache_is_bounded(
    config: RouterConfig, reader: maxminddb.Reader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(geo_module, "GEO_CACHE_ENTRIES", 4)
    geo = Geo(config, reader, HotPathTallies())
    for third in range(20):
        assert geo.place(f"198.18.{third}.1").region == ("eu" if third == 5 else "na")
        assert len(geo._cache) <= 4


def test_not_an_address_is_a_value_error(geo: Geo) -> None:
    for bad in ("", "example.com", "1.2.3", "01.2.3.4", "fe80::1%eth0", "1.2.3.4/24"):
        with pytest.raises(ValueError, match="not an IP address"):
            geo.place(bad)


def _in_test_networks() -> st.SearchStrategy[str]:
    nets = [ip_network(n.network) for n in TEST_NETWORKS] + [ip_network(n) for n in OVERRIDES]
    return st.sampled_from(nets).flatmap(
        lambda net: st.integers(0, net.num_addresses - 1).map(
            lambda i: str(net.network_address + i)
        )
    )


addresses = st.one_of(
    _in_test_networks(),
    _in_test_networks().map(lambda a: f"::ffff:{a}" if "." in a else a),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.integers(0, 2**16 - 1).map(lambda i: str(ip_address(0x20010DB8 << 96 | i << 80))),
    st.integers(0, 2**33 - 1).map(lambda i: str(ip_address(0xFFFE << 32 | i))),  # ::fffe:0:0/95
)


@settings(max_examples=300, deadline=None)
@given(st.lists(addresses, min_size=1, max_size=30), st.randoms(use_true_random=False))
def test_cached_and_uncached_placement_agree(
    config: RouterConfig, reader: maxminddb.Reader, batch: list[str], rng: random.Random
) -> None:
    cached = Geo(config, reader, HotPathTallies())
    replay = batch * 2
    rng.shuffle(replay)
    for address in replay:
        assert cached.place(address) == uncached(config, reader, address), address


@settings(max_examples=300, deadline=None)
@given(addresses, st.integers(0, 2**128 - 1))
def test_every_address_within_the_scope_is_placed_alike(
    config: RouterConfig, reader: maxminddb.Reader, address: str, noise: int
) -> None:
    # The ECS promise (RFC 7871 §7.2.1): the answer holds for the whole SCOPE prefix.
    placement = uncached(config, reader, address)
    ip = ip_address(address)
    host_bits = ip.max_prefixlen - placement.prefix_len
    neighbour = type(ip)(int(ip) ^ (noise & ((1 << host_bits) - 1)))
    assert uncached(config, reader, str(neighbour)).region == placement.region, str(neighbour)


# ---- databases -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "region", "country"),
    [
        ("185.60.216.35", "eu", "IE"),  # Facebook, Dublin
        ("8.8.8.8", "na", "US"),
        ("1.1.1.1", "ap", "AU"),
        ("202.12.27.33", "ap", "JP"),  # M-root, Tokyo
        ("2a03:2880::1", "na", "US"),
    ],
)
def test_embedded_geolite2(address: str, region: str, country: str) -> None:
    config = load_config(DEFAULT_CONFIG)
    with open_geoip(None) as embedded:
        assert embedded.metadata().database_type == "GeoLite2-City"
        geo = Geo(config, embedded, HotPathTallies())
        assert geo.locate(address).country == country
        assert geo.place(address).region == region


def test_embedded_geolite2_scope_and_mapped_prefix() -> None:
    with open_geoip(None) as embedded:
        assert embedded.get_with_prefix_len("8.8.8.8")[1] == 19
        assert embedded.get_with_prefix_len("::ffff:8.8.8.8")[1] == 96 + 19
        geo = Geo(load_config(DEFAULT_CONFIG), embedded, HotPathTallies())
        assert geo.place("8.8.8.8") == Placement("na", 19)
        assert geo.place("8.8.8.0", 24) == Placement("na", 19)
        assert geo.place("::ffff:8.8.8.8") == Placement("na", 115)


def test_corrupt_database_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "GeoLite2.mmdb"
    path.write_bytes(b"\x00" * 1000)
    with pytest.raises(ConfigError) as caught:
        open_geoip(path)
    assert str(caught.value).startswith(f"{path}: geoip: not a valid MaxMind DB file (")


def test_missing_database_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.mmdb"
    with pytest.raises(ConfigError, match=r"absent\.mmdb: geoip: cannot read: No such file"):
        open_geoip(path)


def test_country_database_is_accepted_and_asn_is_not(tmp_path: Path) -> None:
    with open_geoip(write_test_geoip(tmp_path / "c.mmdb", "GeoLite2-Country")) as country:
        assert country.metadata().database_type == "GeoLite2-Country"
    asn = write_test_geoip(tmp_path / "asn.mmdb", "GeoLite2-ASN")
    with pytest.raises(ConfigError, match="unsupported database type 'GeoLite2-ASN'"):
        open_geoip(asn)


def test_ipv4_only_database_places_ipv6_in_default(config: RouterConfig, tmp_path: Path) -> None:
    writer = MMDBWriter(ip_version=4, database_type="DBIP-City-Lite")
    writer.insert_network(IPSet(["203.0.113.0/24"]), {"continent": {"code": "AS"}})
    writer.to_db_file(str(tmp_path / "v4.mmdb"))
    with open_geoip(tmp_path / "v4.mmdb") as v4:
        geo = Geo(config, v4, HotPathTallies())
        assert geo.place("203.0.113.5").region == "ap"
        assert geo.place("2001:db8:1::1").region == "na"
        assert geo.locate("2001:db8:1::1") == Location(None, None, None, None, ip_network("::/0"))


# ---- commands ------------------------------------------------------------------------------


def test_check_prints_one_summary_line(
    config_path: Path, db_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check(config_path, db_path) == 0
    out = capsys.readouterr().out
    assert out == (
        f"{config_path}: ok: 1 zone (example.com.), 3 regions (na, eu, ap), 8 nodes (2 shields), "
        f"5 overrides; geoip: GeoIP2-City built 2025-01-01 ({db_path})\n"
    )


def test_check_with_a_corrupt_database_exits_2(config_path: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_text("not a database")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "georouter",
            "check",
            "--config",
            str(config_path),
            "--geoip",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"georouter: {bad}: geoip: not a valid MaxMind DB file")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_locate_command_prints_one_line_per_address(config_path: Path, db_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "georouter",
            "locate",
            "--config",
            str(config_path),
            "--geoip",
            str(db_path),
            "203.0.113.150",
            "bogus",
            "198.51.100.0/16",
            "::1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "203.0.113.150 country=DE continent=EU lat/lon=50.11,8.68 network=203.0.113.0/24 "
        "region=ap scope=/26",
        "198.51.100.0/16 country=- continent=- lat/lon=- network=198.51.0.0/18 region=na scope=/16",
        "::1 country=- continent=- lat/lon=- network=::/97 region=na scope=/128",
    ]
    assert result.stderr == (
        "georouter: locate: 'bogus' does not appear to be an IPv4 or IPv6 address\n"
    )


def test_location_types(geo: Geo) -> None:
    location = geo.locate("2001:db8:1::42")
    assert location == Location("FR", "EU", 48.86, 2.35, ip_network("2001:db8:1::/48"))
    assert isinstance(geo.locate("192.0.2.1").network.network_address, IPv4Address)
