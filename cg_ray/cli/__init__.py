"""`cg-ray`: one module per group of commands, each declaring its options next to the function
it calls; the options several commands share live in `common`. A command imports the package
only when it runs, so `cg-ray --help` stays fast."""

from __future__ import annotations

import argparse
import os
import sys

from cg_ray.cli import config, data, demo, evaluate, jobs, predict, serve, tracking, train, tune
from cg_ray.cli.common import HelpFormatter, verbose_option
from cg_ray.errors import UserError

# In the order `cg-ray --help` lists them: the data's way from a layout to a model and its use.
GROUPS = (data, train, tune, jobs, evaluate, predict, serve, config, tracking, demo)


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
    for command in leaf_parsers(parser):
        verbose_option(command)
    return parser


def leaf_parsers(parser: argparse.ArgumentParser):
    """The parsers of every command that runs something (`config show`, not `config`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                subs = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                yield from leaf_parsers(sub) if subs else [sub]


def main(argv: list[str] | None = None) -> int:
    from cg_ray.console import command_console
    from cg_ray.ray_env import quiet_environment

    quiet_environment()
    args = build_parser().parse_args(argv)
    try:
        with command_console(args.command, getattr(args, "quiet", False), getattr(args, "verbose", False)):
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


def run() -> None:
    """The `cg-ray` console script and `python -m cg_ray`: main(), then the process's end."""
    exit_now(main())


def exit_now(code: int) -> None:
    """End the process as Python would, less its teardown of the loaded libraries.

    A command holds torch, Ray, MLflow and matplotlib; once it has printed its result, Python's
    finalization of them (module teardown, C++ destructors) took 2 to 4 s on 2 cores, after the
    work and before the prompt, in every command and every test that runs one. What Python does
    before that teardown is done here in its order: wait for the threads that are not daemons
    (the tracking outbox delivering the last records), run the atexit handlers (Ray's shutdown,
    logging's flush, cg_ray's own), flush stdout and stderr; then os._exit."""
    import atexit
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more reaches it anyway
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
