"""`georouter prewarm --region eu URL...`: one pre-warm task through the router's control API.

The token and the control address come from the config, as for `georouter purge`
(router.operator_token, else router.token; router.control_listen; --control overrides
the address). Prints the
task as JSON. With --wait S it then polls GET /api/v1/prewarm/{id} every POLL_S until
every node is done or S seconds have passed, and prints the last answer. Exit 0 once
the router accepted the task (with --wait: and every node finished it), 3 when --wait
ran out first, 1 when the router refused (bad input, quota) or could not be reached.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.error
from pathlib import Path
from typing import Any

from georouter.config import load_config
from georouter.control_client import EXIT_FAILED, call, refused

EXIT_INCOMPLETE = 3
POLL_S = 0.25


def prewarm_command(
    config_path: Path, body: dict[str, Any], control: str | None, wait_s: float
) -> int:
    config = load_config(config_path)
    where = control or str(config.router.control_listen)
    try:
        task = call(config, where, "/api/v1/prewarm", body)
        if not isinstance(task, dict) or not isinstance(task.get("id"), str):
            print(f"georouter: the router's answer has no task id: {task!r}", file=sys.stderr)
            return EXIT_FAILED
        task_id, deadline = task["id"], time.monotonic() + wait_s
        while wait_s > 0 and not _finished(task) and time.monotonic() < deadline:
            time.sleep(POLL_S)
            task = call(config, where, f"/api/v1/prewarm/{task_id}")
    except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
        return refused(exc, "prewarm", where)
    print(json.dumps(task, indent=2))
    return 0 if wait_s <= 0 or _finished(task) else EXIT_INCOMPLETE


def _finished(task: Any) -> bool:
    nodes = task.get("nodes", {}) if isinstance(task, dict) else {}
    return all(
        p.get("state") == "done" or str(p.get("delivery", "")).startswith("failed")
        for p in nodes.values()
    )
