"""CDN-Loop (RFC 8586): each of our nodes names itself on the requests it forwards.

RFC 8586 §2: ``CDN-Loop = #cdn-info``, ``cdn-info = cdn-id *( OWS ";" OWS parameter )``,
``cdn-id = ( uri-host [ ":" port ] ) / pseudonym``, a pseudonym being a token. Each node's
cdn-id is the pseudonym ``georouter-<node name>`` (characters a token cannot hold become
``_``), e.g. ``CDN-Loop: georouter-edge-eu-1, georouter-shield-1``. A node appends its
own to every request it forwards (to a parent or the origin, §2: "intermediaries ...
append"), and a request that already names it has come round: it is answered 508 (Loop
Detected, RFC 5842 §7.2), never forwarded again.

The shared prefix ``georouter-`` is how a node recognises a request from a downstream
node of ours (an edge asking its shield): such a request is given the surrogate fields
(Surrogate-Key, Surrogate-Control) that clients never see, so that key purges and
surrogate lifetimes hold at every tier. The header is not secret, so anyone can claim to
be one of ours; what it reveals is purge tags and lifetimes, not content.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from edge.directives import split_list

__all__ = ["OUR_PREFIX", "from_our_cdn", "loop_id", "names", "with_loop_id"]

OUR_PREFIX: Final = "georouter-"
_NOT_TOKEN: Final = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]")  # RFC 9110 §5.6.2 tchar


def loop_id(node: str) -> str:
    """This node's cdn-id: ``georouter-<name>`` as an RFC 9110 token."""
    return OUR_PREFIX + _NOT_TOKEN.sub("_", node)


def names(lines: Iterable[str], cdn_id: str) -> bool:
    """Does a CDN-Loop field (its lines) name ``cdn_id``? (cdn-ids compare case-insensitively)"""
    wanted = cdn_id.lower()
    return any(_cdn_id(member) == wanted for member in split_list(lines))


def from_our_cdn(lines: Iterable[str]) -> bool:
    """Did one of our nodes forward this request (a member with our prefix)?"""
    return any(_cdn_id(member).startswith(OUR_PREFIX) for member in split_list(lines))


def with_loop_id(lines: Iterable[str], cdn_id: str) -> str:
    """The CDN-Loop field value to forward: what came in, then ``cdn_id``."""
    return ", ".join([*(line for line in lines if line.strip()), cdn_id])


def _cdn_id(member: str) -> str:
    return member.partition(";")[0].strip(" \t").lower()
