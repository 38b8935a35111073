"""`cg-ray`: one module per group of commands, each declaring its options next to the function
it calls; the options several commands share live in `common`. A command imports the package
only when it runs, so `cg-ray --help` stays fast."""

from __future__ import annotations

import argparse
import logging
import sys

from cg_ray.cli import config, data, demo, evaluate, predict, serve, tracking, train, tune
from cg_ray.cli.common import HelpFormatter
from cg_ray.errors import UserError

# In the order `cg-ray --help` lists them: the data's way from a layout to a model and its use.
GROUPS = (data, train, tune, evaluate, predict, serve, config, tracking, demo)


def build_parser() -> argparse.ArgumentParser:
    from cg_ray import __version__

    parser = argparse.ArgumentParser(
        prog="cg-ray",
        formatter_class=HelpFormatter,
        description="Train, search, evaluate and use video geolocalization models (CityGuessr) "
        "on Ray: a street-level video -> its city, state, country and continent.",
        epilog="the whole system on a laptop:\n  make demo\n"
        "a command's own help, with examples:\n  cg-ray train --help",
    )
    parser.add_argument("--version", action="version", version=f"cg-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cg_ray.console import quiet_mode
    from cg_ray.ray_env import quiet_environment

    quiet_environment()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        with quiet_mode(getattr(args, "quiet", False)):
            args.func(args)
    except UserError as exc:
        print(f"cg-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cg-ray {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A storage fault, however deep Ray wrapped it: one line, not a traceback. Permanent
        # (fix something, exit 2) or transient and out of retries (try later, exit 1).
        from cg_ray.storage import max_attempts
        from cg_ray.storage_errors import from_failure

        found = from_failure(exc, max_attempts())
        if found is None:
            raise
        print(f"cg-ray {args.command}: error: {found}", file=sys.stderr)
        return 2 if isinstance(found, UserError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
