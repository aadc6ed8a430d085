"""Choose the edge nodes named in an answer: spread by spare capacity, never herd."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from georouter.config import Node

DecisionReason = Literal["geo", "drained", "spillover", "failover", "fail_open", "fail_closed"]


@dataclass(frozen=True, slots=True)
class Decision:
    region: str  # the region whose nodes answer (the client's own unless spilled or failed over)
    nodes: tuple[Node, ...]  # best first; each has an address of the asked family; () only if fail_closed
    reason: DecisionReason
