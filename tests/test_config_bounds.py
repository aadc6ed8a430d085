"""TOML that tomllib cannot take without an exception of its own: an integer past Python's
digit limit (ValueError) and arrays or inline tables nested thousands deep (RecursionError).

Both programs read TOML through cdn.tomltable.read_toml; each case is one line naming
the file, the key path and the line, exit code 2, and never a traceback: from the real
`georouter check`, `georouter serve` and `edge serve`, and from a router's SIGHUP reload.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdn.errors import ConfigError
from cdn.tomltable import read_toml
from tests.test_router_e2e import EU, TOPOLOGY, RouterProcess, poll, running_router

ROOT = Path(__file__).resolve().parent.parent
HUGE = "9" * 5000  # past sys.get_int_max_str_digits() (4300)
DEEP_ARRAY = "[" * 20_000 + "]" * 20_000
DEEP_TABLE = "{a = " * 5_000 + "1" + "}" * 5_000
EDGE = 'name = "edge-eu-1"\norigin = "http://127.0.0.1:1"\n\n[limits]\nmax_headers = {}\n'

CASES = {
    "huge integer": (HUGE, "integer longer than 4300 digits"),
    "deep array": (DEEP_ARRAY, "arrays or inline tables nested too deeply"),
    "deep inline table": (DEEP_TABLE, "arrays or inline tables nested too deeply"),
}


def router_config(tmp_path: Path, value: str) -> Path:
    path = tmp_path / "cdn.toml"
    path.write_text(TOPOLOGY.read_text().replace("answer_ttl = 20", f"answer_ttl = {value}"))
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def assert_one_line(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    for part in parts:
        assert part in result.stderr


@pytest.mark.parametrize("case", CASES)
def test_georouter_check_and_serve_exit_2_with_one_line(tmp_path: Path, case: str) -> None:
    value, reason = CASES[case]
    path = router_config(tmp_path, value)
    lines = path.read_text().splitlines()
    line = 1 + next(i for i, text in enumerate(lines) if text.startswith("answer_ttl = "))
    expected = (f"{path}: policy.answer_ttl: {reason} (line {line})",)
    assert_one_line(run("georouter", "check", "--config", str(path)), *expected)
    serve = ("serve", "--config", str(path), "--dns", "127.0.0.1:0", "--control", "127.0.0.1:0")
    assert_one_line(run("georouter", *serve), *expected)


@pytest.mark.parametrize("case", CASES)
def test_edge_serve_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    value, reason = CASES[case]
    path = tmp_path / "edge.toml"
    path.write_text(EDGE.format(value))
    result = run("edge", "serve", "--config", str(path))
    assert_one_line(result, f"edge: {path.name}: limits.max_headers: {reason} (line 5)")


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (f"a = {HUGE}", "a"),
        (f"[t]\nb.c = [1, {HUGE}]", "t.b.c"),
        (f"[[z]]\nn = 1\n[[z.r]]\n[[z]]\n[[z.r]]\n[[z.r]]\nttl = {HUGE}", "z[1].r[1].ttl"),
        (f"[[z]]\n[z.s]\nx = {DEEP_ARRAY}", "z[0].s.x"),
        (f"x = [\n  1,\n  {DEEP_ARRAY}]", "x"),  # the run of openers starts on x's line
        (f"x = [\n  1,\n  {HUGE}]", ""),  # not on a key's line: the line alone
    ],
)
def test_the_key_path_is_named_where_headers_and_keys_are_plain(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_toml(path, "c.toml")
    assert err.value.key == where
    assert "\n" not in str(err.value) and "(line " in str(err.value)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.sampled_from(["[", "]", "{", "}", "[[", "]]", "a", "=", "9", HUGE, "\n", '"', "."]),
        max_size=40,
    )
)
def test_any_text_reads_or_is_one_config_error(tmp_path: Path, pieces: list[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text("".join(pieces))
    try:
        read_toml(path, "c.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc)


async def test_sighup_reload_names_the_file_and_keeps_the_old_config(tmp_path: Path) -> None:
    async with running_router(tmp_path) as router:
        for reloads, case in enumerate(CASES, start=1):
            router_config(tmp_path, CASES[case][0])
            router.process.send_signal(signal.SIGHUP)
            await poll(partial(failed_reloads, router, reloads))
            assert await router.addresses() == EU  # the old config still answers
        failed = [line for line in router.log if "event=reload result=failed" in line]
        assert len(failed) == len(CASES)
        assert all(f"reason={router.config}: policy.answer_ttl: " in line for line in failed)
        assert not any("Traceback" in line for line in router.log)


async def failed_reloads(router: RouterProcess, count: int) -> bool:
    async with aiohttp.ClientSession() as s, s.get(router.api("/metrics")) as r:
        return f'georouter_reloads_total{{result="failed"}} {count}.0' in await r.text()
