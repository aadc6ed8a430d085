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
import urllib.error
from pathlib import Path

from georouter.config import load_config
from georouter.control_client import call, refused
from georouter.purge import DONE

EXIT_INCOMPLETE = 3


def purge_command(config_path: Path, selector: dict[str, str], control: str | None) -> int:
    config = load_config(config_path)
    where = control or str(config.router.control_listen)
    try:
        body = call(config, where, "/api/v1/purge", selector)
    except (urllib.error.URLError, OSError, ValueError) as exc:  # HTTPError is a URLError
        return refused(exc, "purge", where)
    print(json.dumps(body, indent=2))
    nodes = body.get("nodes", {}) if isinstance(body, dict) else {}
    return 0 if all(result == DONE for result in nodes.values()) else EXIT_INCOMPLETE
