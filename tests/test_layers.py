"""The package layers: the pure cores load no aiohttp, asyncio or prometheus_client.

import-linter (`lint-imports`, run by `make test` and `make lint`) checks the import graph
that the source code states; this checks what an import really loads, in a fresh
interpreter, for the same list of modules (read from the contract in pyproject.toml).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = ("aiohttp", "asyncio", "prometheus_client")


def pure_modules() -> list[str]:
    linter = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in linter["contracts"] if c["type"] == "forbidden"]
    assert sorted(contract["forbidden_modules"]) == sorted(FORBIDDEN)
    modules = []
    for name in contract["source_modules"]:
        module = import_module(name)
        modules.append(name)
        if hasattr(module, "__path__"):  # a package: every module in it
            modules += [m.name for m in pkgutil.walk_packages(module.__path__, f"{name}.")]
    return modules


def loaded_by(module: str) -> list[str]:
    probe = (
        f"import sys, {module}; "
        f"print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    return out.stdout.split()


@pytest.mark.parametrize("module", pure_modules())
def test_pure_module_loads_no_event_loop_or_metrics(module: str) -> None:
    assert loaded_by(module) == []


def test_the_probe_sees_what_a_shell_module_loads() -> None:
    # The check can fail: the servers are shells around the cores and load all three.
    assert {"aiohttp", "asyncio", "prometheus_client"} <= set(loaded_by("edge.server"))


def test_the_pure_list_names_the_cores() -> None:
    modules = pure_modules()
    assert {"edge.rules", "edge.cache", "georouter.wire", "georouter.selector"} <= set(modules)
    assert {"georouter.geo", "georouter.geodb", "georouter.responder"} <= set(modules)
    assert {"cdn.auth", "cdn.report", "cdn.tomltable"} <= set(modules)


def test_the_router_loads_the_demo_only_for_georouter_demo() -> None:
    # cdnlab sits above the programs; `georouter demo` imports it inside that command only.
    probe = "import sys, georouter.cli, georouter.server, edge.cli; print(sorted(sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert not [m for m in out.stdout.split("'") if m.split(".")[0] == "cdnlab"]
    linter = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    ignored = [c.get("ignore_imports", []) for c in linter["contracts"]]
    assert sorted(i for group in ignored for i in group) == ["georouter.cli -> cdnlab.runner"]
