"""`edge` command line: serve a caching reverse proxy in front of one origin.

Every expected failure (bad config file, bad flag value) ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cdn.errors import EXIT_INTERRUPTED, CDNError
from edge.config import EdgeConfig, config_from_flags, load_config
from edge.errors import ConfigError
from edge.eviction import POLICIES

# flag destination -> config key (section.key) it overrides
_FLAG_KEYS = {
    "name": "edge.name",
    "listen": "edge.listen",
    "control": "edge.control",
    "origin": "edge.origin",
    "router": "edge.routers",
    "parent": "edge.parents",
    "token": "edge.token",
    "capacity_rps": "edge.capacity_rps",
    "drain_s": "edge.drain_s",
    "cache_size": "cache.size",
    "eviction": "cache.eviction",
    "tls_listen": "tls.listen",
    "tls_cert": "tls.cert",
    "tls_key": "tls.key",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the caching proxy, its control port and reporter")
    serve.add_argument("--config", type=Path, help="edge TOML (flags override its keys)")
    serve.add_argument("--name", help="node name, as in the router's topology")
    serve.add_argument("--listen", metavar="HOST:PORT", help="content (proxy) address")
    serve.add_argument("--control", metavar="HOST:PORT", help="/healthz, /metrics, /purge")
    serve.add_argument("--origin", metavar="URL", help="origin base URL (http://host:port)")
    serve.add_argument(
        "--router", action="append", metavar="URL", help="router control URL (repeatable)"
    )
    serve.add_argument(
        "--parent", action="append", metavar="URL",
        help="a parent (shield) content URL, http://host:port (repeatable)",
    )  # fmt: skip
    serve.add_argument("--token", help="bearer token for load reports and purges")
    serve.add_argument("--cache-size", metavar="SIZE", help="cache store size, e.g. 256M")
    serve.add_argument("--capacity-rps", type=float, metavar="RPS", help="requests/s at 100%%")
    serve.add_argument("--drain-s", type=float, metavar="S", help="seconds to serve on SIGTERM")
    serve.add_argument("--eviction", choices=POLICIES, help="cache eviction policy")
    serve.add_argument("--tls-listen", metavar="HOST:PORT", help="HTTPS (content) address")
    serve.add_argument("--tls-cert", type=_absolute, metavar="FILE", help="certificate (PEM)")
    serve.add_argument("--tls-key", type=_absolute, metavar="FILE", help="its private key (PEM)")
    return parser


def _absolute(name: str) -> str:
    # A file named on the command line is relative to where the command runs, not the config.
    return str(Path(name).absolute())


def config_from_args(args: argparse.Namespace) -> EdgeConfig:
    """The config a `serve` invocation describes: --config, then each flag on top."""
    overrides: dict[str, Any] = {key: getattr(args, dest) for dest, key in _FLAG_KEYS.items()}
    if args.config is not None:
        return load_config(args.config, overrides)
    for required in ("name", "origin"):  # [[sites]] need a config file
        if overrides[f"edge.{required}"] is None:
            raise ConfigError("command line", f"--{required}", "required without --config")
    return config_from_flags(overrides)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        from edge.server import serve

        return serve(cfg)
    except CDNError as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
