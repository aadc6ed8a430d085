"""`georouter purge`: one fleet purge through the router's control API, from the shell.

The token and the control address come from the config (router.operator_token, else
router.token;
router.control_listen; --control overrides the address). Prints the router's answer as
JSON and exits 0 when every node confirmed, 3 when some are pending or failed (they get
the purge with the reply to their next load report), 1 when the router refused or could
not be reached.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

from georouter.config import load_config
from georouter.credentials import Credentials
from georouter.purge import DONE

EXIT_INCOMPLETE = 3
EXIT_FAILED = 1
# The router answers within router.fanout_timeout_s; this is for a router that hangs.
REQUEST_TIMEOUT_S = 30.0


def purge_command(config_path: Path, selector: dict[str, str], control: str | None) -> int:
    config = load_config(config_path)
    where = control or str(config.router.control_listen)
    request = urllib.request.Request(
        f"http://{where}/api/v1/purge",
        data=json.dumps(selector).encode(),
        headers={
            "Authorization": f"Bearer {Credentials.of(config).operator[0]}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        print(f"georouter: purge refused ({exc.code}): {exc.read().decode(errors='replace')}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAILED
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"georouter: cannot reach the router at {where}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(body, indent=2))
    nodes = body.get("nodes", {}) if isinstance(body, dict) else {}
    return 0 if all(result == DONE for result in nodes.values()) else EXIT_INCOMPLETE
