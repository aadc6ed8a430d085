"""Edge config: TOML + flags into frozen dataclasses; every defect one line, exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cdn.config import HostPort
from cdn.errors import ConfigError as SharedConfigError
from edge.cli import main
from edge.config import (
    DRAIN_S,
    MAX_BODY_BYTES,
    MiB,
    load_config,
    parse_size,
)
from edge.errors import ConfigError, EdgeError
from georouter.config import ANSWER_TTL_S

GOOD = """
[edge]
name = "edge-eu-1"
listen = "127.0.0.13:8080"
control = "127.0.0.13:9080"
origin = "http://127.0.0.1:8000"
routers = ["http://127.0.0.1:9153", "http://127.0.0.2:9153/"]
token = "s3cret"
capacity_rps = 2000

[cache]
size = "128M"
eviction = "lru"

[limits]
max_headers = 50
coalesce_wait_s = 2.5
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_full_config_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.name == "edge-eu-1"
    assert cfg.listen == HostPort("127.0.0.13", 8080)
    assert cfg.routers == ("http://127.0.0.1:9153", "http://127.0.0.2:9153")
    assert cfg.cache.size_bytes == 128 * MiB and cfg.cache.eviction == "lru"
    assert cfg.limits.max_headers == 50 and cfg.limits.coalesce_wait_s == 2.5
    assert cfg.limits.max_body_bytes == MAX_BODY_BYTES


def test_previous_tokens_load_for_a_rotation(tmp_path: Path) -> None:
    text = GOOD.replace('token = "s3cret"', 'token = "new"\nprevious_tokens = ["old", "older"]')
    cfg = load_config(write(tmp_path, text))
    assert (cfg.token, cfg.previous_tokens) == ("new", ("old", "older"))
    assert load_config(write(tmp_path, GOOD)).previous_tokens == ()


def test_disk_level_is_off_unless_a_path_is_set(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, GOOD)).cache.disk_path is None
    text = GOOD.replace('"lru"', '"lru"\ndisk_path = "cache"\ndisk_size = "2G"\ndisk_fsync = true')
    cache = load_config(write(tmp_path, text)).cache
    assert cache.disk_path == str(tmp_path / "cache")  # relative to the config file
    assert (cache.disk_size_bytes, cache.disk_fsync) == (2048 * MiB, True)


def test_default_drain_outlasts_the_routers_answer_ttl() -> None:
    # Resolvers keep handing out a draining edge until their cached answer expires.
    assert DRAIN_S >= ANSWER_TTL_S


def test_flags_override_file(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD), {"edge.drain_s": 1.5, "cache.size": "1G"})
    assert cfg.drain_s == 1.5 and cfg.cache.size_bytes == 1024 * MiB


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (('name = "edge-eu-1"', ""), "edge.toml: edge.name: required"),
        (('"http://127.0.0.1:8000"', '"ftp://x"'), "edge.toml: edge.origin: expected an http://"),
        (('"lru"', '"fifo"'), "edge.toml: cache.eviction: expected lru | sieve | s3fifo"),
        (('"128M"', '"lots"'), "edge.toml: cache.size: expected a size"),
        (
            ("max_headers = 50", "max_headers = 0"),
            "edge.toml: limits.max_headers: expected a",
        ),
        (('"127.0.0.13:8080"', '"nowhere"'), "edge.toml: edge.listen: expected HOST:PORT"),
        (("capacity_rps = 2000", "capacity_rps = 0"), "edge.toml: edge.capacity_rps: expected"),
        (("[limits]", "[limits]\nbogus = 1"), "edge.toml: limits.bogus: unknown key"),
        (
            ("capacity_rps = 2000", "drain_s = -1"),
            "edge.toml: edge.drain_s: expected a number in [0, 3600]",
        ),
        (
            ("capacity_rps = 2000", "capacity_rps = 2000\nprewarm_concurrency = 0"),
            "edge.toml: edge.prewarm_concurrency: expected an integer in 1..64, got 0",
        ),
        (
            ("capacity_rps = 2000", "capacity_rps = 2000\nprewarm_max_utilization = 0"),
            "edge.toml: edge.prewarm_max_utilization: expected a number in (0, 10]",
        ),
        (('token = "s3cret"', "token = 7"), "edge.toml: edge.token: expected a string, got an"),
        (("routers = [", 'routers = ["http://ok", 1, '), "edge.toml: edge.routers[1]: expected a"),
        (('"http://127.0.0.2:9153/"', '"http://x?q"'), "edge.toml: edge.routers[1]: expected an"),
        (
            ("max_headers = 50", "max_headers = 1e3"),
            "edge.toml: limits.max_headers: expected an int",
        ),
        (("[edge]", "[edgy]\n[edge]"), "edge.toml: edgy: unknown key"),
        (("[cache]", "[cache"), "edge.toml: not valid TOML"),
        (('"lru"', '"lru"\ndisk_size = "big"'), "edge.toml: cache.disk_size: expected a size"),
        (('"lru"', '"lru"\ndisk_fsync = "yes"'), "edge.toml: cache.disk_fsync: expected a bool"),
        (('"lru"', '"lru"\ndisk_path = 3'), "edge.toml: cache.disk_path: expected a string"),
        (
            ('token = "s3cret"', 'previous_tokens = ["ok", "two words"]'),
            "edge.toml: edge.previous_tokens[1]: expected a non-empty bearer token",
        ),
        (
            ('token = "s3cret"', f"previous_tokens = {['t'] * 9}"),
            "edge.toml: edge.previous_tokens: expected at most 8 tokens",
        ),
    ],
)
def test_every_defect_is_one_line_naming_the_key(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD.replace(*change)))
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^nope.toml: cannot read"):
        load_config(tmp_path / "nope.toml")


def test_cli_config_error_exits_2_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('"lru"', '"fifo"'))
    proc = subprocess.run(
        [sys.executable, "-m", "edge", "serve", "--config", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "edge: edge.toml: cache.eviction: expected lru | sieve | s3fifo, got 'fifo'"
    ]


def test_cli_flags_alone_need_name_and_origin(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--listen", "127.0.0.1:0"]) == 2
    assert capsys.readouterr().err == "edge: command line: --name: required without --config\n"


def test_cli_bad_flag_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["serve", "--name", "e", "--origin", "http://127.0.0.1:1", "--cache-size", "big"]
    assert main(argv) == 2
    assert "cache.size: expected a size" in capsys.readouterr().err


def test_sizes() -> None:
    assert parse_size("512K") == 512 * 1024
    assert parse_size("256M") == 256 * MiB
    assert parse_size("1GiB") == 1024 * MiB
    assert parse_size(4096) == 4096
    for bad in ("", "M", "-1", "1T", "1.5M"):
        with pytest.raises(ValueError):
            parse_size(bad)


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(["", "K", "M", "G"]))
def test_size_round_trip(number: int, unit: str) -> None:
    factor = {"": 1, "K": 1024, "M": MiB, "G": 1024 * MiB}[unit]
    assert parse_size(f"{number}{unit}") == number * factor


def test_listen_takes_ipv6_and_port_0(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace('"127.0.0.13:8080"', '"[::1]:0"')))
    assert cfg.listen == HostPort("::1", 0)


def test_sizes_may_be_integers_but_not_zero(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD.replace('"128M"', "1048576")))
    assert cfg.cache.size_bytes == MiB
    with pytest.raises(ConfigError, match=r"^edge.toml: cache.size: expected a size .*not 0"):
        load_config(write(tmp_path, GOOD.replace('"128M"', "0")))
    with pytest.raises(ConfigError, match=r"^edge.toml: cache.size: expected an integer or a"):
        load_config(write(tmp_path, GOOD.replace('"128M"', "1.5")))


def test_unknown_key_suggests_the_known_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD.replace("max_headers", "max_header")))
    assert (
        str(err.value) == "edge.toml: limits.max_header: unknown key (did you mean 'max_headers'?)"
    )


def test_config_error_is_the_edges_and_the_readers(tmp_path: Path) -> None:
    # One class serves both: `edge serve` catches EdgeError, the shared reader raises it.
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, GOOD.replace("[edge]", "edge = 1\n[edgy]")))
    assert isinstance(err.value, EdgeError) and isinstance(err.value, SharedConfigError)
