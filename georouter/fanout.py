"""Send one purge (or pre-warm task) to many nodes at once, each with its own deadline.

Every node gets its POST {control_url}/api/v1/purge (or PREWARM_PATH) at the same
moment (one task each);
`fan_out` returns when all have answered or `deadline_s` has passed, with "done",
"failed: reason" or, for a node still silent, "pending". The requests still running go
on for up to LATE_S and report through `settle` when they end: a node slower than the
deadline becomes "done" as soon as it confirms.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from cdn.purge import PURGE_PATH, Purge
from georouter.purge import DONE, PENDING

LATE_S = 10.0  # a request past the deadline may still confirm within this
MAX_REASON_CHARS = 80

Settle = Callable[[str, str], None]  # node, result


async def fan_out(
    session: aiohttp.ClientSession,
    *,
    purge: Purge,
    nodes: Mapping[str, str],
    token: Callable[[str], str],
    deadline_s: float,
    settle: Settle,
) -> dict[str, str]:
    """Node → result for every node in `nodes` (name → control URL); `token(name)` is the
    node's own credential, which its control port accepts."""
    return await post_all(
        session, path=PURGE_PATH, body=purge.to_dict(), nodes=nodes, token=token,
        deadline_s=deadline_s, settle=settle, done=DONE,
    )  # fmt: skip


async def post_all(
    session: aiohttp.ClientSession,
    *,
    path: str,
    body: Mapping[str, Any],
    nodes: Mapping[str, str],
    token: Callable[[str], str],
    deadline_s: float,
    settle: Settle,
    done: str,
) -> dict[str, str]:
    """Node → `done`, "failed: reason" or "pending" for one POST of `body` to each node,
    signed with that node's own credential `token(name)`."""
    tasks = {
        name: asyncio.create_task(
            _send(session, url.rstrip("/") + path, body, token(name), done), name=f"post-{name}"
        )
        for name, url in nodes.items()
    }
    if tasks:
        await asyncio.wait(tasks.values(), timeout=deadline_s)
    results: dict[str, str] = {}
    for name, task in tasks.items():
        if task.done():
            results[name] = task.result()
        else:
            results[name] = PENDING
            task.add_done_callback(_late(name, settle))
    return results


def _late(name: str, settle: Settle) -> Callable[[asyncio.Task[str]], None]:
    def done(task: asyncio.Task[str]) -> None:
        if not task.cancelled():
            settle(name, task.result())

    return done


async def _send(
    session: aiohttp.ClientSession, url: str, body: Mapping[str, Any], token: str, done: str
) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = aiohttp.ClientTimeout(total=LATE_S)
    try:
        async with session.post(url, json=body, headers=headers, timeout=timeout) as response:
            await response.read()
            if response.status < 300:
                return done
            return _failed(f"status {response.status}")
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return _failed(type(exc).__name__)


def _failed(reason: str) -> str:
    return f"failed: {reason[:MAX_REASON_CHARS]}"
