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
import urllib.request
from pathlib import Path
from typing import Any

from georouter.config import load_config
from georouter.credentials import Credentials

EXIT_INCOMPLETE = 3
EXIT_FAILED = 1
REQUEST_TIMEOUT_S = 30.0
POLL_S = 0.25


def prewarm_command(
    config_path: Path, body: dict[str, Any], control: str | None, wait_s: float
) -> int:
    config = load_config(config_path)
    where = control or str(config.router.control_listen)
    headers = {
        "Authorization": f"Bearer {Credentials.of(config).operator[0]}",
        "Content-Type": "application/json",
    }
    request = urllib.request.Request(
        f"http://{where}/api/v1/prewarm",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            task = json.loads(response.read())
        deadline = time.monotonic() + wait_s
        while wait_s > 0 and not _finished(task) and time.monotonic() < deadline:
            time.sleep(POLL_S)
            url = f"http://{where}/api/v1/prewarm/{task['id']}"
            with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as response:
                task = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"georouter: prewarm refused ({exc.code}): {exc.read().decode(errors='replace')}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"georouter: cannot reach the router at {where}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(task, indent=2))
    return 0 if wait_s <= 0 or _finished(task) else EXIT_INCOMPLETE


def _finished(task: Any) -> bool:
    nodes = task.get("nodes", {}) if isinstance(task, dict) else {}
    return all(
        p.get("state") == "done" or str(p.get("delivery", "")).startswith("failed")
        for p in nodes.values()
    )
