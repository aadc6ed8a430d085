"""The [rrl] and [cookies] tables: defaults, and each defect one line naming the key."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from georouter.config import load_config
from georouter.errors import ConfigError
from georouter.rrl import RrlConfig
from tests.test_config import BASE, write

SECRET = "e5e973e5a6b2a43f48e7dc849e37bfcf"


def test_off_unless_present_and_bind_defaults_when_present(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, BASE)).rrl is None
    assert load_config(write(tmp_path, BASE)).cookies is None  # a random secret at start
    config = load_config(write(tmp_path, BASE + "\n[rrl]\n"))
    assert config.rrl == RrlConfig(20, 15.0, 2, 24, 56, (), False)


def test_every_key(tmp_path: Path) -> None:
    text = BASE + (
        "\n[rrl]\nresponses_per_second = 50\nwindow_s = 5\nslip = 1\nipv4_prefix = 32\n"
        'ipv6_prefix = 64\nexempt = ["8.8.8.0/24"]\nlog_only = true\n'
        f'\n[cookies]\nsecret = "{SECRET}"\nprevious_secrets = ["{"00" * 16}"]\n'
    )
    config = load_config(write(tmp_path, text))
    exempt = (ipaddress.ip_network("8.8.8.0/24"),)
    assert config.rrl == RrlConfig(50, 5, 1, 32, 64, exempt, True)
    assert config.cookies is not None
    assert config.cookies.current == bytes.fromhex(SECRET)
    assert config.cookies.previous == (bytes(16),)


@pytest.mark.parametrize(
    ("table", "key", "expectation"),
    [
        ("[rrl]\nresponses_per_second = 0", "rrl.responses_per_second", ""),
        ("[rrl]\nslip = 11", "rrl.slip", ""),
        ("[rrl]\nipv6_prefix = 129", "rrl.ipv6_prefix", ""),
        ('[rrl]\nexempt = ["8.8.8.8/24"]', "rrl.exempt[0]", "host bits set"),
        ("[rrl]\nburst = 3", "rrl.burst", "unknown key"),
        ('[cookies]\nsecret = "abcd"', "cookies.secret", "128 bits"),
        ('[cookies]\nsecret = "xyz"', "cookies.secret", "hex digits"),
        (f'[cookies]\nsecret = "{SECRET}"\nprevious_secrets = ["00"]',
         "cookies.previous_secrets[0]", "128 bits"),
        ("[cookies]\nprevious_secrets = []", "cookies.secret", "required"),
    ],
)  # fmt: skip
def test_defects(tmp_path: Path, table: str, key: str, expectation: str) -> None:
    path = write(tmp_path, BASE + "\n" + table + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.key == key
    assert expectation in caught.value.message
