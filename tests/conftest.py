"""Session set-up: routers started by the tests keep their state files in a temporary
directory (XDG_STATE_HOME), never in the developer's home; a test that hangs past every
deadline ends the run with every thread's stack instead of hanging it."""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
from collections.abc import Generator, Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(tmp_path_factory.mktemp("xdg-state"))
    yield
    if before is None:
        os.environ.pop("XDG_STATE_HOME", None)
    else:
        os.environ["XDG_STATE_HOME"] = before


# pytest-timeout's SIGALRM (120 s) fails a hung test, but when the signal lands in an
# asyncio task that spins, the task swallows it and the run would hang until CI's limit.
HARD_LIMIT_S = 300.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    watchdog = threading.Timer(HARD_LIMIT_S, _end_the_run, args=(item,))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()


def _end_the_run(item: pytest.Item) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    print(f"\n{item.nodeid}: still running after {HARD_LIMIT_S:.0f} s; stacks:", file=sys.stderr)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(3)
