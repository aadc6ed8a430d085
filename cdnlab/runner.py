"""`georouter demo`: origin, one edge per node (shields too) and the router as child processes.

Start order: origin, the shields, the edges, the router (each step waits for the previous
to listen), so the router's first probe round already finds every edge up. Then the guide, then the
live table until SIGINT or SIGTERM, when every child is stopped by PID and the demo exits
0. A busy port or a child that dies while starting ends the demo with one line and exit
code 2. An edge that dies later is reported and the demo goes on (killing one is how to
watch failover); the origin or the router dying ends it with exit code 1, its last log lines
printed and the log directory kept (it is removed only after a clean exit).
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import signal
import tempfile
from dataclasses import replace
from pathlib import Path

import aiohttp

from cdnlab.certs import make_demo_tls
from cdnlab.plan import (
    DemoPlan,
    addresses_needed,
    edge_spec,
    guide,
    make_plan,
    origin_spec,
    router_spec,
)
from cdnlab.status import STATUS_INTERVAL_S, STATUS_TIMEOUT_S, fetch_table
from cdnlab.supervisor import Child, DemoError, Supervisor, check_ports_free
from georouter.config import load_config

ESSENTIAL = frozenset({"origin", "router"})
EXIT_CHILD_DIED = 1
DEMO_EXTRA_INSTALL = "pip install 'georouter[demo]'"


def run_demo(config_path: Path, geoip_path: Path | None, load: bool = False) -> int:
    """Run the demo CDN until SIGINT/SIGTERM; returns the process exit code.

    Config and busy-port problems raise CDNError (the CLI prints it, exit code 2).
    """
    if load and importlib.util.find_spec("dns") is None:
        raise DemoError(f"--load needs dnspython, the demo extra: {DEMO_EXTRA_INSTALL}")
    plan = make_plan(load_config(config_path), config_path, geoip_path)
    check_ports_free(addresses_needed(plan))
    return asyncio.run(_run(plan, load))


async def _run(plan: DemoPlan, load: bool) -> int:
    log_dir = Path(tempfile.mkdtemp(prefix="georouter-demo-"))
    plan = with_tls(plan, log_dir)
    supervisor = Supervisor(log_dir)
    _cancel_on_signals()
    load_task: asyncio.Task[None] | None = None
    try:
        await start_all(supervisor, plan)
        pids = {c.spec.name: c.pid for c in supervisor.children}
        print(guide(plan, log_dir, pids), flush=True)
        if load:
            load_task = asyncio.create_task(_load(plan))
        code = await _watch(supervisor, plan)
    except asyncio.CancelledError:
        _uncancel()
        print("\ngeorouter demo: stopping", flush=True)
        code = 0
    finally:
        if load_task is not None:
            load_task.cancel()
        await supervisor.stop_all()
    if code == 0:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        print(f"georouter demo: logs kept in {log_dir}", flush=True)
    return code


def _cancel_on_signals() -> None:
    """The first SIGINT/SIGTERM cancels the demo; later ones are ignored while it stops."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    assert task is not None

    def cancel_once() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: None)
        task.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, cancel_once)


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def with_tls(plan: DemoPlan, directory: Path) -> DemoPlan:
    """The plan with HTTPS on every edge: a fresh CA and certificate made in `directory`."""
    addresses = [e.content.host for e in plan.edges]
    return replace(plan, tls=make_demo_tls(directory, plan.names, addresses, plan.origin_url))


async def start_all(supervisor: Supervisor, plan: DemoPlan) -> None:
    """Origin, then the shields, then every edge at once, then the router; raises DemoError
    if one fails."""
    await supervisor.start(origin_spec(plan))
    await asyncio.gather(*(supervisor.start(edge_spec(plan, s)) for s in plan.shields))
    await asyncio.gather(*(supervisor.start(edge_spec(plan, e)) for e in plan.edges))
    await supervisor.start(router_spec(plan))


async def _watch(supervisor: Supervisor, plan: DemoPlan) -> int:
    """Print the table every few seconds; report children that die; stop if one is essential."""
    seen: set[int] = set()
    timeout = aiohttp.ClientTimeout(total=STATUS_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            for child in _newly_exited(supervisor, seen):
                if child.spec.name in ESSENTIAL:
                    print(f"georouter demo: {await supervisor.obituary(child)}", flush=True)
                    return EXIT_CHILD_DIED
                print(f"georouter demo: {_death(child)}", flush=True)
            print(await fetch_table(session, plan.control_url), flush=True)
            await asyncio.sleep(STATUS_INTERVAL_S)


def _newly_exited(supervisor: Supervisor, seen: set[int]) -> list[Child]:
    fresh = [c for c in supervisor.exited() if c.pid not in seen]
    seen.update(c.pid for c in fresh)
    return fresh


def _death(child: Child) -> str:
    return f"{child.spec.name} (pid {child.pid}) exited with code {child.process.returncode}"


async def _load(plan: DemoPlan) -> None:
    # Imported here: the workload needs dnspython, which only --load uses.
    from cdnlab.workload import LOAD_DURATION_S, LOAD_MAX_REQUESTS, Workload

    print(
        f"georouter demo: synthetic load for {LOAD_DURATION_S:g} s "
        f"(at most {LOAD_MAX_REQUESTS} requests)",
        flush=True,
    )
    stats = await Workload(plan.dns, plan.service, plan.content_port).run()
    print(f"georouter demo: {stats.summary()}", flush=True)
