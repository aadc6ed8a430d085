"""The messages between the router's main process and its DNS workers (georouter/workers.py).

Framed as a four-octet length and a pickle: parent and child only, so trusted. Each side
decodes into its own union and dispatches with `match` ... `assert_never`.
"""

from __future__ import annotations

import pickle
import struct
from dataclasses import dataclass

from georouter.config import RouterConfig
from georouter.fleet import FleetSnapshot
from georouter.tallies import HotPathTallies

LENGTH = struct.Struct(">I")  # the frame's length prefix


@dataclass(frozen=True, slots=True)
class Configure:
    """main -> worker at start and on every reload; the GeoIP database named `geoip_source`
    is passed just before it over the descriptor socketpair (SCM_RIGHTS)."""

    config: RouterConfig
    geoip_source: str


@dataclass(frozen=True, slots=True)
class FleetUpdate:
    """main -> worker on every fleet change: answer from this snapshot on."""

    snapshot: FleetSnapshot


@dataclass(frozen=True, slots=True)
class TallyReport:
    """worker -> main: the worker's cumulative counts (the first one is its "ready")."""

    tallies: HotPathTallies


ToWorker = Configure | FleetUpdate
ToMain = TallyReport


def frame(message: ToWorker | ToMain) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return LENGTH.pack(len(data)) + data


def to_worker(body: bytes) -> ToWorker:
    """A frame's body from main; TypeError for anything else."""
    message = pickle.loads(body)
    if not isinstance(message, Configure | FleetUpdate):
        raise TypeError(f"not a message to a worker: {type(message).__name__}")
    return message


def to_main(body: bytes) -> ToMain:
    """A frame's body from a worker; TypeError for anything else."""
    message = pickle.loads(body)
    if not isinstance(message, TallyReport):
        raise TypeError(f"not a message to main: {type(message).__name__}")
    return message
