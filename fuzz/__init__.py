"""Fuzzing: the DNS query path and the edge's request-head path, under atheris or our mutator.

`python -m fuzz` (`make fuzz`) runs each target for a bounded time; tests/test_fuzz_smoke.py
runs a short bounded version under `make test`. docs/testing.md says what each target checks.
"""

from fuzz.mutator import Mutator
from fuzz.runner import Finding, FuzzFailure, FuzzResult, Target, fuzz, save_finding

__all__ = ["Finding", "FuzzFailure", "FuzzResult", "Mutator", "Target", "fuzz", "save_finding"]
