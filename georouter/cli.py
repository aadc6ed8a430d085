"""`georouter` command line: serve, check, locate, purge, prewarm, demo.

Every expected failure (bad config, bad GeoIP file) ends as one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdn.errors import EXIT_INTERRUPTED, CDNError
from georouter.config import DEFAULT_CONFIG


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="georouter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="topology TOML")
        p.add_argument("--geoip", type=Path, help="MaxMind-format City or Country database")

    serve = sub.add_parser("serve", help="run the authoritative DNS server and control API")
    with_config(serve)
    serve.add_argument(
        "--dns", help="override router.dns_listen (HOST:PORT, several separated by commas)"
    )
    serve.add_argument("--control", help="override router.control_listen (HOST:PORT)")

    check = sub.add_parser("check", help="validate a config (and GeoIP database) and exit")
    with_config(check)

    locate = sub.add_parser("locate", help="show where addresses are and which region serves them")
    with_config(locate)
    locate.add_argument("addresses", nargs="+", metavar="IP")

    purge = sub.add_parser("purge", help="purge objects on every edge through the router")
    purge.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="topology TOML")
    purge.add_argument("--control", help="the router's control address (HOST:PORT)")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--url", help="every variant of this absolute URL")
    which.add_argument("--prefix", help="every URL of its host under this absolute URL")
    which.add_argument("--key", help="every response tagged with this Surrogate-Key")
    purge.add_argument("--site", help="only objects of this host (for --key)")

    prewarm = sub.add_parser("prewarm", help="pre-warm URLs on a region's edges through the router")
    prewarm.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="topology TOML")
    prewarm.add_argument("--control", help="the router's control address (HOST:PORT)")
    prewarm.add_argument("--region", required=True, help="the region whose edges fetch them")
    prewarm.add_argument("--site", help="the host every URL must have")
    prewarm.add_argument("--wait", type=float, default=0.0, metavar="S",
                         help="poll the task's progress for up to S seconds")  # fmt: skip
    prewarm.add_argument("urls", nargs="+", metavar="URL", help="absolute http(s) URLs")

    demo = sub.add_parser("demo", help="run a whole CDN on loopback: origin, six edges, router")
    with_config(demo)
    demo.add_argument("--load", action="store_true", help="add a bounded synthetic workload")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            from georouter.server import serve

            return serve(args.config, args.geoip, dns=args.dns, control=args.control)
        if args.command == "check":
            from georouter.commands import check

            return check(args.config, args.geoip)
        if args.command == "locate":
            from georouter.commands import locate_command

            return locate_command(args.config, args.geoip, args.addresses)
        if args.command == "purge":
            from georouter.purge_command import purge_command

            kind = next(k for k in ("url", "prefix", "key") if getattr(args, k) is not None)
            selector = {kind: getattr(args, kind)}
            if args.site is not None:
                selector["site"] = args.site
            return purge_command(args.config, selector, args.control)
        if args.command == "prewarm":
            from georouter.prewarm_command import prewarm_command

            body = {"region": args.region, "urls": args.urls}
            if args.site is not None:
                body["site"] = args.site
            return prewarm_command(args.config, body, args.control, args.wait)
        # The demo lives in cdnlab, above the router: imported only for this command (the
        # one import-linter exception, declared in pyproject.toml).
        from cdnlab.runner import run_demo

        return run_demo(args.config, args.geoip, load=args.load)
    except CDNError as exc:
        print(f"georouter: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
