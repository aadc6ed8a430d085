"""`python -m fuzz` (`make fuzz`): run each target for a bounded time; exit 1 on a find.

With atheris installed (`--engine auto`, the default) each target runs under libFuzzer in
a child process; else, or with `--engine mutator`, under our structured mutator in this
one. A find is saved under fuzz/crashes/ (gitignored): the input as .bin, and with the
mutator a .txt beside it with the error, the input in hex and the trace.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

from fuzz.runner import fuzz, save_finding
from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parent
CRASHES = ROOT / "crashes"
CORPUS = ROOT / "corpus"
DEFAULT_SECONDS = 60.0
LIBFUZZER_TIMEOUT_S = 5  # per input; libFuzzer reports a longer one as a timeout find
LIBFUZZER_RSS_MB = 2048
CHILD_GRACE_S = 60.0  # on top of the time limit, for start-up and the final report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    seconds = float(os.environ.get("FUZZ_SECONDS", DEFAULT_SECONDS))
    parser.add_argument("--seconds", type=float, default=seconds, help="per target")
    parser.add_argument("--runs", type=int, default=None, help="inputs per target (mutator)")
    parser.add_argument("--engine", choices=("auto", "atheris", "mutator"), default="auto")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    if unknown := set(args.targets) - set(TARGETS):
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if importlib.util.find_spec("atheris") else "mutator"
    print(f"fuzz: engine {engine}, {args.seconds:g} s per target, seed {args.seed}")
    failed = False
    for name in args.targets or TARGETS:
        if engine == "atheris":
            failed |= not _libfuzzer(name, args.seconds, args.seed)
        else:
            failed |= not _mutator(name, args.seconds, args.runs, args.seed)
    return 1 if failed else 0


def _mutator(name: str, seconds: float, runs: int | None, seed: int) -> bool:
    result = fuzz(TARGETS[name](), max_inputs=runs, seconds=seconds, seed=seed)
    rate = result.inputs / max(result.seconds, 1e-9)
    print(f"fuzz: {name}: {result.inputs:,} inputs in {result.seconds:.1f} s ({rate:,.0f}/s), "
          f"corpus {result.corpus}")  # fmt: skip
    if result.finding is None:
        return True
    path = save_finding(result.finding, CRASHES)
    print(f"fuzz: {name}: FOUND {result.finding.error}\n  input saved to {path}\n"
          f"  hex {result.finding.data.hex()}", file=sys.stderr)  # fmt: skip
    return False


def _libfuzzer(name: str, seconds: float, seed: int) -> bool:
    target = TARGETS[name]()
    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    for index, data in enumerate(target.seeds()):
        (corpus / f"seed-{index:04d}").write_bytes(data)
    CRASHES.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "fuzz.libfuzzer", name, str(corpus)]
    argv += [f"-max_total_time={max(1, round(seconds))}", f"-timeout={LIBFUZZER_TIMEOUT_S}"]
    argv += [
        f"-max_len={target.max_len}",
        f"-seed={seed % 2**31}",
        f"-rss_limit_mb={LIBFUZZER_RSS_MB}",
    ]
    argv += [f"-artifact_prefix={CRASHES}/{name}-", "-print_final_stats=1"]
    try:
        done = subprocess.run(argv, timeout=seconds + CHILD_GRACE_S, check=False)
    except subprocess.TimeoutExpired:
        print(f"fuzz: {name}: libFuzzer outlived its time limit", file=sys.stderr)
        return False
    if done.returncode != 0:
        print(f"fuzz: {name}: FOUND (libFuzzer exit {done.returncode}); see {CRASHES}",
              file=sys.stderr)  # fmt: skip
    return done.returncode == 0


if __name__ == "__main__":
    sys.exit(main())
