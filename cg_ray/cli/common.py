"""What every command module shares: how a command reads in --help, and the options that several
commands take (declared here once)."""

from __future__ import annotations

import argparse
import json
import textwrap

MODES = ["flat", "independent", "codependent", "official"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's help ends with its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and action.option_strings
            and default not in (None, False, [])
            and default is not argparse.SUPPRESS
        ):
            text += f" (default: {default})"
        return text


def command(sub, name: str, summary: str, description: str, examples: str, func=None):
    """A subcommand whose help reads like its docs: what it does, then examples."""
    p = sub.add_parser(
        name,
        help=summary,
        description=description.strip(),
        epilog="examples:\n" + textwrap.indent(examples.strip(), "  "),
        formatter_class=HelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def verbose_option(p) -> None:
    """Every command's last option (cg_ray.cli.build_parser adds it): where Ray's and MLflow's
    INFO lines go (cg_ray.console)."""
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also print Ray's and MLflow's INFO lines on the terminal (they always go to "
        "the command's log file, named when it starts Ray)",
    )


def config_options(p) -> None:
    p.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="YAML config (configs/demo.yaml, configs/paper/table3_tla_all.yaml, ...); "
        "`cg-ray config show --config FILE` lists every key with its doc",
    )
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=3 model.sca.heads=4; "
        "one or several pairs, and the flag may repeat",
    )


def resume_option(p, what: str) -> None:
    """--resume [must|auto] of train and tune: bare --resume means must."""
    p.add_argument("--resume", nargs="?", const="must", choices=["must", "auto"], help=what)


def progress_option(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")


def tracking_option(
    p, default: str = "$MLFLOW_TRACKING_URI, else ./mlflow.db", what: str = "MLflow store"
) -> None:
    p.add_argument("--tracking-uri", help=f"{what} (default: {default})")


def metrics_out_option(p, what: str = "also write the figures as JSON here") -> None:
    p.add_argument("--metrics-out", metavar="PATH", help=what)


def write_json(path: str | None, data: dict) -> None:
    if path:
        from cg_ray import storage

        storage.write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")
