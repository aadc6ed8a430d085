"""The [armour] and [access_log] tables and a site's methods: defaults, and one clear error
naming the key for a bad value."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from edge.armour import HEAD_TIMEOUT_S, KEEPALIVE_TIMEOUT_S
from edge.config import build_config
from edge.errors import ConfigError
from edge.filters import DEFAULT_METHODS

BASE: dict[str, Any] = {"edge": {"name": "e", "origin": "http://127.0.0.1:1"}}


def config(**tables: Any) -> Any:
    return build_config("edge.toml", {**BASE, **tables}, {})


def test_defaults_are_on_with_rate_limits_and_the_access_log_off() -> None:
    cfg = config()
    assert (cfg.armour.head_timeout_s, cfg.armour.keepalive_timeout_s) == (
        HEAD_TIMEOUT_S, KEEPALIVE_TIMEOUT_S,
    )  # fmt: skip
    assert cfg.armour.rate.per_client_rps == 0 and cfg.access_log.path is None


def test_armour_keys_are_read() -> None:
    cfg = config(
        armour={
            "rate_limit_rps": 50, "trusted_proxies": ["10.0.0.0/8"], "log_only": ["slash"],
            "max_connections_per_client": 8,
        },
        access_log={"path": "/tmp/a.log", "sample": 0.1},
        sites=[{"hosts": ["a.example"], "origin": "http://127.0.0.1:2", "methods": ["GET"]}],
    )  # fmt: skip
    rate = cfg.armour.rate
    assert (rate.per_client_rps, rate.per_client_burst) == (50, 100)
    assert rate.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert cfg.armour.log_only == {"slash"} and cfg.armour.max_connections_per_client == 8
    assert cfg.access_log.sample == 0.1
    assert cfg.sites[0].methods == ("GET",)
    assert config().sites == () and DEFAULT_METHODS == ()  # any method


@pytest.mark.parametrize(
    ("tables", "key"),
    [
        ({"armour": {"head_timeout_s": 0}}, "armour.head_timeout_s"),
        ({"armour": {"log_only": ["nope"]}}, "armour.log_only[0]"),
        ({"armour": {"trusted_proxies": ["not-a-net"]}}, "armour.trusted_proxies[0]"),
        ({"armour": {"bogus": 1}}, "armour.bogus"),
        ({"access_log": {"sample": 2}}, "access_log.sample"),
        (
            {"sites": [{"hosts": ["a.example"], "origin": "http://x", "methods": ["get"]}]},
            "sites[0].methods[0]",
        ),
    ],
)
def test_a_bad_value_names_its_key(tables: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        config(**tables)
