"""The built wheel, installed outside the source tree, runs on its packaged defaults.

A user who installs georouter from a wheel gets no `data/` directory beside it: the default
topology (georouter/data/cdn.toml) and the demo content (cdnlab/content/) must come from
package data, read with importlib.resources. This builds the wheel from a copy of the
sources, installs it into a fresh virtual environment in tmp_path, and runs `georouter
check`, `georouter locate` and a short `georouter serve` from a directory outside the tree.

Offline and fast: the wheel is built without build isolation (setuptools comes with the dev
extra) and installed without its dependencies, which the fresh environment reads from this
one's site-packages through a plain path in a .pth file. A path line does not run the .pth
files of that directory, so this checkout's editable install stays out of the way; the test
checks that georouter really loads from the fresh environment.
"""

from __future__ import annotations

import re
import select
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "README.md", "cdn", "cdnlab", "edge", "georouter")
BUILD_TIMEOUT_S = 120.0
RUN_TIMEOUT_S = 30.0
START_DEADLINE_S = 15.0
STOP_GRACE_S = 10.0
CACHES = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")


def _run(argv: list[str], cwd: Path, timeout_s: float = RUN_TIMEOUT_S) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh virtual environment with the wheel installed; yields its bin directory."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=CACHES)
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    wheels = root / "dist"
    build = [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels)]
    _run([*build, str(source)], cwd=root, timeout_s=BUILD_TIMEOUT_S)
    (wheel,) = wheels.glob("georouter-*.whl")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    python = venv / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root)
    (Path(site.strip()) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    install = [*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)]
    _run(install, cwd=root, timeout_s=BUILD_TIMEOUT_S)
    yield venv / "bin"


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with no source tree in or above it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    assert not (cwd / "georouter").exists() and REPO not in cwd.parents
    return cwd


def test_wheel_loads_from_the_fresh_environment(installed: Path, elsewhere: Path) -> None:
    probe = (
        "import importlib.resources as r, georouter, cdnlab; print(georouter.__file__); "
        "print(r.files('cdnlab').joinpath('content', 'img', 'cat.jpg').is_file())"
    )
    module, has_content = _run([str(installed / "python"), "-c", probe], elsewhere).split()
    assert Path(module).is_relative_to(installed.parent)
    assert has_content == "True"


def test_installed_check_reads_the_packaged_topology(installed: Path, elsewhere: Path) -> None:
    out = _run([str(installed / "georouter"), "check"], elsewhere)
    config, _, verdict = out.partition(": ok: ")
    assert Path(config).is_relative_to(installed.parent), out
    assert Path(config).match("georouter/data/cdn.toml")
    assert verdict.startswith("1 zone (example.com.), 3 regions"), out


def test_installed_locate_uses_the_embedded_geoip(installed: Path, elsewhere: Path) -> None:
    out = _run([str(installed / "georouter"), "locate", "8.8.8.8"], elsewhere)
    assert "country=US" in out and "region=na" in out, out


@pytest.fixture
def serving(installed: Path, elsewhere: Path) -> Iterator[int]:
    """`georouter serve` from the wheel on ephemeral loopback ports; yields its DNS port."""
    argv = [str(installed / "georouter"), "serve", "--dns", "127.0.0.1:0"]
    argv += ["--control", "127.0.0.1:0"]
    process = subprocess.Popen(
        argv, cwd=elsewhere, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        yield _dns_port(process)
    finally:
        process.terminate()  # by PID
        try:
            process.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _dns_port(process: subprocess.Popen[str]) -> int:
    assert process.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + START_DEADLINE_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stderr], [], [], deadline - time.monotonic())
        line = process.stderr.readline() if ready else ""
        seen.append(line)
        if match := re.search(r"event=listening dns=127\.0\.0\.1:(\d+)", line):
            return int(match.group(1))
        if not line and process.poll() is not None:
            break
    pytest.fail(f"georouter serve from the wheel did not listen: {''.join(seen[-8:])}")


def test_installed_serve_answers_dns(serving: int) -> None:
    query = dns.message.make_query("example.com.", "SOA")
    response = dns.query.udp(query, "127.0.0.1", port=serving, timeout=2.0)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA  # authoritative for the packaged zone
    assert [rrset.name.to_text() for rrset in response.answer] == ["example.com."]
