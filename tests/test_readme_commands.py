"""Every `cg-ray ...` example in README.md, cluster/README.md and every page of docs/ is a command
the CLI accepts as written; every option a usage synopsis names (a block with `[--`) exists.
The examples that run on tiny data are run by the end-to-end tests (tests/test_readme_search.py:
the README's search)."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from cg_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
# docs/index.md is README.md copied (docs/gen_reference.py): its examples are README's.
PAGES = ["README.md", "cluster/README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md") if p != ROOT / "docs" / "index.md"
)


def _blocks(path: Path) -> list[str]:
    """The ``` blocks of a page, continuation lines joined."""
    return [b.replace("\\\n", " ") for b in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S)]


def _examples(path: Path) -> list[str]:
    """`cg-ray` command lines inside ``` blocks that are not a usage synopsis."""
    commands = []
    for block in _blocks(path):
        if "[--" in block:
            continue  # a usage synopsis: its options are checked against the parser instead
        for line in block.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                # `cg-ray submit: error: ...` is a command's output shown in a block, not a command
                if part.startswith("cg-ray ") and not re.match(r"cg-ray [\w-]+:", part):
                    commands.append(part)
    return commands


def _synopses(path: Path) -> list[str]:
    """The `cg-ray` lines of a page's usage synopses, their indented continuation lines joined."""
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
        if "[--" in block:
            joined = re.sub(r"\n\s+(?=\[|--)", " ", block.replace("\\\n", " "))
            lines += [line.strip() for line in joined.splitlines() if line.strip().startswith("cg-ray ")]
    return lines


EXAMPLES = [(name, cmd) for name in PAGES for cmd in _examples(ROOT / name)]
SYNOPSES = [(name, line) for name in PAGES for line in _synopses(ROOT / name)]


def test_the_pages_have_examples():
    by_page = {name: sum(1 for n, _ in EXAMPLES if n == name) for name in PAGES}
    assert by_page["README.md"] >= 8, by_page
    # The task guides show their commands in context, not only in the reference.
    for guide in ("data", "training", "evaluate", "serving", "recipes", "config"):
        assert by_page[f"docs/guides/{guide}.md"] >= 1, f"docs/guides/{guide}.md has no cg-ray example"
    assert len(SYNOPSES) >= 15  # the command list of docs/guides/commands.md, and the guides' own


@pytest.mark.parametrize("source, command", EXAMPLES, ids=[f"{s}:{c[:60]}" for s, c in EXAMPLES])
def test_example_parses(source, command, capsys):
    words = shlex.split(re.sub(r"\$\([^)]*\)", "VALUE", command))[1:]
    try:
        build_parser().parse_args(words)
    except SystemExit as exc:
        pytest.fail(
            f"{source}: `{command}` is refused by the CLI: "
            f"{capsys.readouterr().err.strip().splitlines()[-1]} (exit {exc.code})"
        )


def _command_parser(words: list[str]) -> argparse.ArgumentParser:
    """The parser of `cg-ray WORDS...`: sub-commands followed as far as the words name them."""
    parser = build_parser()
    for word in words[1:]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or word not in subs[0].choices:
            break
        parser = subs[0].choices[word]
    return parser


@pytest.mark.parametrize("source, line", SYNOPSES, ids=[f"{s}:{line[:40]}" for s, line in SYNOPSES])
def test_synopsis_options_exist(source, line):
    words = line.split()
    parser = _command_parser(words)
    assert parser.prog != "cg-ray", f"{source}: `{line}` names no cg-ray command"
    known = {opt for action in parser._actions for opt in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    assert named <= known, f"{source}: {line}: unknown options {sorted(named - known)}"


def _help_epilogs() -> str:
    """Every command's --help examples."""
    texts = []
    stack = [build_parser()]
    while stack:
        parser = stack.pop()
        texts.append(parser.epilog or "")
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                stack.extend(action.choices.values())
            elif action.help:
                texts.append(action.help)
    return "\n".join(texts)


def test_the_shipped_configs_examples_name_exist():
    """A `configs/....yaml` named by an example (pages, --help) is a file of the checkout."""
    text = _help_epilogs() + "\n".join(command for _, command in EXAMPLES)
    named = set(re.findall(r"\bconfigs/[\w/.-]+\.yaml\b", text))
    assert named, "no example names a shipped config"
    missing = sorted(name for name in named if not (ROOT / name).exists() and "*" not in name)
    assert not missing, f"examples name configs that do not exist: {missing}"
