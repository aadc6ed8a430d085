"""The router's control state in one small local file: drains, weights, the purge log,
the pre-warm tasks.

`router.state_dir`/state.json is rewritten whole and atomically (a temporary file in the
same directory, fsync, rename over the old one, fsync of the directory: POSIX rename is
atomic, so a crash leaves the old state or the new, never half of one). A router reads
it before it answers DNS, so a drain or weight survives a restart. With a bus the file is
the router's last known copy of the shared state: what it answers with while the bus is
away. An unreadable file stops the router with one line naming it (exit 2): silently
forgetting an operator's drain is worse than not starting.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdn.errors import CDNError
from georouter.errors import ConfigError
from georouter.prewarm import PrewarmTask
from georouter.purge import PurgeRecord

STATE_FILE = "state.json"
FORMAT = 1
MAX_WEIGHT = 100.0  # a weight override multiplies capacity_rps; above this it is a typo


@dataclass(frozen=True, slots=True)
class ControlState:
    drained: frozenset[str] = frozenset()
    weights: Mapping[str, float] = field(default_factory=dict)  # only nodes not at 1.0
    purges: tuple[PurgeRecord, ...] = ()
    stream_seq: int = 0  # the last purge-stream sequence this router has applied
    prewarms: tuple[PrewarmTask, ...] = ()

    def to_json(self) -> bytes:
        raw = {
            "format": FORMAT,
            "drained": sorted(self.drained),
            "weights": dict(sorted(self.weights.items())),
            "stream_seq": self.stream_seq,
            "purges": [r.to_dict() for r in self.purges],
            "prewarms": [t.to_state() for t in self.prewarms],
        }
        return json.dumps(raw, indent=1).encode()

    @classmethod
    def from_json(cls, body: bytes) -> ControlState:
        raw = json.loads(body)
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"expected a JSON object with format {FORMAT}")
        drained = raw.get("drained", [])
        weights = raw.get("weights", {})
        if not isinstance(drained, list) or not all(isinstance(n, str) for n in drained):
            raise ValueError("drained: expected a list of node names")
        if not isinstance(weights, dict):
            raise ValueError("weights: expected an object")
        seq = raw.get("stream_seq", 0)
        if not isinstance(seq, int) or seq < 0:
            raise ValueError("stream_seq: expected a whole number")
        return cls(
            drained=frozenset(drained),
            weights={str(k): valid_weight(v) for k, v in weights.items()},
            purges=tuple(PurgeRecord.from_dict(r) for r in raw.get("purges", [])),
            stream_seq=seq,
            prewarms=tuple(PrewarmTask.from_state(t) for t in raw.get("prewarms", [])),
        )


def valid_weight(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"weight: expected a number, got {value!r}")
    if not 0 <= value <= MAX_WEIGHT:
        raise ValueError(f"weight: expected 0 to {MAX_WEIGHT:g}, got {value!r}")
    return float(value)


class StateFile:
    """Reads and atomically replaces `state_dir`/state.json."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> ControlState:
        """The saved state; an empty one if there is none yet (ConfigError if unreadable)."""
        try:
            body = self.path.read_bytes()
        except FileNotFoundError:
            return ControlState()
        except OSError as exc:
            raise ConfigError(str(self.path), "", f"cannot read: {exc.strerror}") from None
        try:
            return ControlState.from_json(body)
        except (ValueError, UnicodeDecodeError, CDNError) as exc:
            raise ConfigError(str(self.path), "", f"not a router state file: {exc}") from None

    def save(self, state: ControlState) -> None:
        self.write(state.to_json())

    def write(self, body: bytes) -> None:
        """Replace the file with `body`: temp file, fsync, rename, fsync of the directory."""
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".state-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(body)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself is durable only once the directory is
        finally:
            os.close(dir_fd)
