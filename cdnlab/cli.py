"""`cdnlab` command line: run the whole CDN on loopback (origin, one edge per node, router).

The same demo as `georouter demo`. Every expected failure (bad config, busy port, a child that
does not start, the `demo` extra missing for --load) ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdn.errors import EXIT_INTERRUPTED, CDNError
from georouter.config import DEFAULT_CONFIG


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """The demo's flags, shared by `cdnlab` and `georouter demo`."""
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="topology TOML")
    parser.add_argument("--geoip", type=Path, help="MaxMind-format City or Country database")
    parser.add_argument("--load", action="store_true", help="add a bounded synthetic workload")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cdnlab", description=__doc__.splitlines()[0])
    add_demo_arguments(parser)
    args = parser.parse_args(argv)
    from cdnlab.runner import run_demo  # aiohttp and the rest only once the flags are good

    try:
        return run_demo(args.config, args.geoip, load=args.load)
    except CDNError as exc:
        print(f"cdnlab: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
