"""The operator's side of the router's control API, for `georouter purge` and `georouter
prewarm`: one request with the operator's token from the config, the answer as JSON."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

from georouter.config import RouterConfig
from georouter.credentials import Credentials

EXIT_FAILED = 1
# The router answers within router.fanout_timeout_s; this is for a router that hangs.
REQUEST_TIMEOUT_S = 30.0


def call(config: RouterConfig, where: str, path: str, body: Any = None) -> Any:
    """POST `body` to http://{where}{path} (GET without one) as the operator
    (router.operator_token, else router.token); the decoded answer. Raises what urllib
    and json raise: see `refused`."""
    headers = {"Authorization": f"Bearer {Credentials.of(config).operator[0]}"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode()
    request = urllib.request.Request(f"http://{where}{path}", data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        return json.loads(response.read())


def refused(exc: Exception, what: str, where: str) -> int:
    """Say why a `call` failed, on stderr; EXIT_FAILED."""
    if isinstance(exc, urllib.error.HTTPError):
        text = exc.read().decode(errors="replace")
        print(f"georouter: {what} refused ({exc.code}): {text}", file=sys.stderr)
    else:
        print(f"georouter: cannot reach the router at {where}: {exc}", file=sys.stderr)
    return EXIT_FAILED
