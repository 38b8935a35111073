"""The CLI reads like its docs: every command has a description and examples, every option a
help text; --set takes several pairs; config show / check; --version."""

import argparse
import pathlib
import subprocess
import sys

import pytest
import yaml

from cg_ray import __version__
from cg_ray.cli import build_parser, main
from cg_ray.config import Config, describe, field_docs, load_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml"))


def _commands(parser, path=()):
    """(path, parser) of every command and sub-command."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield path + (name,), sub
                yield from _commands(sub, path + (name,))


def test_every_command_has_a_description_and_examples():
    for path, sub in _commands(build_parser()):
        assert sub.description and len(sub.description) > 20, path
        assert sub.epilog and "cg-ray " + path[0] in sub.epilog, path


def test_every_option_has_help_text():
    missing = [
        f"cg-ray {' '.join(path)} {action.dest}"
        for path, sub in _commands(build_parser())
        for action in sub._actions
        if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction))
        and not (action.help and action.help.strip())
    ]
    assert not missing, "options without help: " + ", ".join(missing)


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["pack", "--help"])
    out = capsys.readouterr().out
    assert "(default: 224)" in out and "examples:" in out and "cg-ray pack data/" in out


def test_set_takes_several_pairs_and_repeats(tmp_path):
    args = build_parser().parse_args(
        [
            "train",
            "--config",
            "c.yaml",
            "--set",
            "train.epochs=3",
            "model.sca.heads=3",
            "--set",
            "train.seed=7",
        ]
    )
    assert args.set == ["train.epochs=3", "model.sca.heads=3", "train.seed=7"]
    cfg = load_config("configs/demo.yaml", args.set)
    assert (cfg.train.epochs, cfg.model.sca.heads, cfg.train.seed) == (3, 3, 7)


def test_version():
    out = subprocess.run(
        [sys.executable, "-m", "cg_ray", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"cg-ray {__version__}"


def test_config_show_prints_docs_and_loads_back(capsys, tmp_path):
    assert (
        main(["config", "show", "--config", "configs/demo.yaml", "--set", "train.epochs=3", "optim.lr=0.01"])
        == 0
    )
    out = capsys.readouterr().out
    assert "epochs: 3  # Passes over the training split." in out
    shown = tmp_path / "shown.yaml"
    shown.write_text(out)
    assert load_config(str(shown)) == load_config("configs/demo.yaml", ["train.epochs=3", "optim.lr=0.01"])


def test_every_config_field_has_a_doc():
    def walk(cls, prefix=""):
        docs = field_docs(cls)
        for f in cls.__dataclass_fields__.values():
            yield prefix + f.name, docs.get(f.name)
            if isinstance(f.type, str) and f.type.endswith("Config"):
                import cg_ray.config as config

                yield from walk(getattr(config, f.type), prefix + f.name + ".")

    missing = [key for key, doc in walk(Config) if not doc]
    assert not missing, "config fields without a doc: " + ", ".join(missing)


def test_describe_is_yaml():
    assert yaml.safe_load(describe(Config()))["train"]["epochs"] == Config().train.epochs


@pytest.mark.parametrize("path", CONFIGS)
def test_config_check_accepts_every_shipped_config(path, capsys):
    assert main(["config", "check", path]) == 0
    assert capsys.readouterr().out.strip() == f"{path}: ok"


def test_config_check_names_the_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: three\n")
    assert main(["config", "check", "configs/demo.yaml", str(bad)]) == 2
    captured = capsys.readouterr()
    assert f"{bad}: " in captured.out and "train.epochs" in captured.out
    assert "1 of 2 config files are invalid" in captured.err
