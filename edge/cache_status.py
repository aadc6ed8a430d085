"""This cache's member of the Cache-Status response field (RFC 9211).

Each cache on the path appends one list member naming itself (its node name: the
router's topology name, ``edge.name``) and what it did
(RFC 9211 §2): ``hit``, or ``fwd=<reason>`` with ``fwd-status``, ``stored``,
``ttl`` and ``detail`` parameters. Values are RFC 8941 structured-field items.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Final

__all__ = ["CACHE_NAME", "cache_status"]

# The CDN's name as a surrogate (Surrogate-Control targets, edge/directives.py); each
# node's Cache-Status member carries its own node name instead.
CACHE_NAME: Final = "georouter-edge"
_TOKEN: Final = re.compile(r"[A-Za-z*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*\Z")  # RFC 8941 §3.3.4


def cache_status(
    cache: str,
    outcome_token: str,
    *,
    fwd: str | None = None,
    stored: bool = False,
    detail: str | None = None,
    ttl: float | None = None,
    fwd_status: int | None = None,
) -> str:
    """The RFC 9211 §2 Cache-Status member of the cache named ``cache`` (its node name),
    e.g. 'edge-eu-1; hit; ttl=372'.

    ``outcome_token`` is "hit" or "fwd" (then ``fwd`` names the §2.2 reason).
    """
    if outcome_token == "hit":
        params = ["hit"]
    elif outcome_token == "fwd" and fwd is not None and _TOKEN.match(fwd):
        params = [f"fwd={fwd}"]
    else:
        raise ValueError(f"Cache-Status needs 'hit' or 'fwd' with a token reason, got {fwd!r}")
    if fwd_status is not None:
        params.append(f"fwd-status={int(fwd_status)}")
    if stored:
        params.append("stored")
    if ttl is not None:
        params.append(f"ttl={math.floor(ttl)}")
    if detail is not None:
        params.append(f"detail={_sf_string_or_token(detail)}")
    return "; ".join([_node_item(cache), *params])


@lru_cache(maxsize=16)  # a process has one node name: serialised once, not per answer
def _node_item(name: str) -> str:
    return _sf_string_or_token(name)


def _sf_string_or_token(value: str) -> str:
    """RFC 8941 §3.3.4 token if possible, else a §3.3.3 string (ASCII printable)."""
    if _TOKEN.match(value):
        return value
    printable = "".join(ch for ch in value if " " <= ch <= "~")
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'
