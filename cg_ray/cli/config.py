"""`cg-ray config show | check`: the resolved config with its docs, and validation."""

from __future__ import annotations

from cg_ray.cli.common import command, config_options
from cg_ray.errors import UserError


def register(sub) -> None:
    p = command(
        sub,
        "config",
        "show or check a config file",
        """
show: the resolved config (file plus --set overrides) as YAML, every field with its one-line
doc. check: validate config files; one line per file, exit status 2 if any is invalid.""",
        """
cg-ray config show --config configs/demo.yaml --set train.epochs=3
cg-ray config check configs/*.yaml configs/paper/*.yaml""",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = command(
        actions,
        "show",
        "print the resolved config with each field's doc",
        """
Print the resolved config (defaults, the file, then --set overrides) as YAML that loads back,
each field followed by its one-line doc.""",
        """
cg-ray config show --config configs/demo.yaml
cg-ray config show --config configs/demo.yaml --set train.epochs=3 model.sca.heads=4""",
        show,
    )
    config_options(c)
    c = command(
        actions,
        "check",
        "validate config files",
        """
Load and validate each file as `cg-ray train` would; print one line per file.""",
        """
cg-ray config check configs/demo.yaml
cg-ray config check configs/*.yaml configs/paper/*.yaml""",
        check,
    )
    c.add_argument("files", nargs="+", metavar="FILE", help="YAML config files")


def show(args) -> None:
    from cg_ray.config import describe, load_config

    print(describe(load_config(args.config, args.set)))


def check(args) -> None:
    from cg_ray.config import load_config

    bad = 0
    for path in args.files:
        try:
            load_config(path)
            print(f"{path}: ok")
        except UserError as exc:
            bad += 1
            print(f"{path}: {exc}")
    if bad:
        raise UserError(f"{bad} of {len(args.files)} config files are invalid")
