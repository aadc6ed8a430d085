"""Run a target under the structured mutator: bounded by inputs and seconds, stop at a find.

A find is any exception out of `Target.check` (the target raises FuzzFailure for a broken
property and lets an undocumented exception through), or an input that outlives the
per-input time budget: a SIGALRM watchdog interrupts it, so a hang is found, not waited on.
An input whose behaviour signature (what `check` returns) is new joins the corpus: a cheap
stand-in for coverage feedback.
"""

from __future__ import annotations

import hashlib
import signal
import threading
import time
import traceback
from collections.abc import Hashable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Protocol

from fuzz.mutator import Mutator

INPUT_BUDGET_S = 2.0  # per input: microseconds are normal, a second is a hang
MAX_CORPUS = 4096  # inputs kept for new behaviour; the seeds always stay


class FuzzFailure(AssertionError):
    """A target's property does not hold for an input."""


class InputTimeout(FuzzFailure):
    """An input outlived the per-input time budget."""


class Target(Protocol):
    """One thing to fuzz: seeds, a mutation dictionary, and the property check."""

    name: str
    max_len: int
    tokens: Sequence[bytes]

    def seeds(self) -> list[bytes]: ...

    def check(self, data: bytes) -> Hashable:
        """Raise FuzzFailure (or let an undocumented exception out) if a property breaks;
        return a small signature of what the input did."""


@dataclass(frozen=True, slots=True)
class Finding:
    target: str
    data: bytes
    error: str  # the exception, one line
    trace: str

    @property
    def digest(self) -> str:
        return hashlib.sha1(self.data).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class FuzzResult:
    target: str
    inputs: int
    corpus: int
    seconds: float
    finding: Finding | None


def fuzz(
    target: Target,
    *,
    max_inputs: int | None = None,
    seconds: float | None = None,
    seed: int = 0,
    budget_s: float = INPUT_BUDGET_S,
) -> FuzzResult:
    """Seeds first, then mutated inputs until max_inputs, seconds or the first finding."""
    seeds = target.seeds()
    mutator = Mutator(seeds, target.tokens, seed, target.max_len)
    seen: set[Hashable] = set()
    started = time.monotonic()
    deadline = None if seconds is None else started + seconds
    count = 0
    with _watchdog() as arm:
        while max_inputs is None or count < max_inputs:
            if deadline is not None and count % 64 == 0 and time.monotonic() >= deadline:
                break
            data = seeds[count] if count < len(seeds) else mutator.generate()
            count += 1
            try:
                arm(budget_s)
                signature = target.check(data)
            except Exception as exc:
                arm(0)
                return FuzzResult(
                    target.name, count, len(mutator.corpus), time.monotonic() - started,
                    Finding(target.name, data, _one_line(exc), traceback.format_exc()),
                )  # fmt: skip
            arm(0)
            if signature not in seen:
                seen.add(signature)
                if len(mutator.corpus) < MAX_CORPUS:
                    mutator.add(data)
    return FuzzResult(target.name, count, len(mutator.corpus), time.monotonic() - started, None)


def save_finding(finding: Finding, directory: Path) -> Path:
    """Write the input as `<target>-<sha1 prefix>.bin` and the trace beside it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{finding.target}-{finding.digest}.bin"
    path.write_bytes(finding.data)
    path.with_suffix(".txt").write_text(f"{finding.error}\n{finding.data.hex()}\n{finding.trace}")
    return path


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


@contextmanager
def _watchdog() -> Iterator[_Arm]:
    """SIGALRM raises InputTimeout in the input that overran; the previous handler and any
    timer (pytest-timeout's) are restored afterwards. Off the main thread: no watchdog."""
    if threading.current_thread() is not threading.main_thread():
        yield _disarmed
        return

    def overran(signum: int, frame: FrameType | None) -> None:
        raise InputTimeout("input outlived the per-input time budget")

    entered = time.monotonic()
    previous = signal.signal(signal.SIGALRM, overran)
    delay, interval = signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        yield _arm
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if delay:
            left = max(delay - (time.monotonic() - entered), 0.001)
            signal.setitimer(signal.ITIMER_REAL, left, interval)


class _Arm(Protocol):
    def __call__(self, seconds: float) -> None: ...


def _arm(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _disarmed(seconds: float) -> None:
    pass
