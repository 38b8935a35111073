"""Every `cg-ray ...` example in the README and cluster/README.md is a command the CLI accepts
as written (the usage synopsis, with its [optional] parts, is checked against --help instead).
The examples that run on tiny data are run by the end-to-end tests."""

import re
import shlex
from pathlib import Path

import pytest

from cg_ray.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def _examples(path: Path) -> list[str]:
    """`cg-ray` command lines inside ``` blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", path.read_text(), flags=re.S):
        if "[--" in block:
            continue  # the usage synopsis: checked against --help, not parsed
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split(" #")[0].strip()
            for part in re.split(r"\s*(?:&&|;)\s*", line):
                if part.startswith("cg-ray "):
                    commands.append(part)
    return commands


EXAMPLES = [(name, cmd) for name in ("README.md", "cluster/README.md") for cmd in _examples(ROOT / name)]


def test_the_readmes_have_examples():
    assert len(EXAMPLES) >= 10


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


def _synopsis() -> list[str]:
    """The usage lines of the README's command list, continuation lines joined."""
    text = (ROOT / "README.md").read_text()
    block = next(b for b in re.findall(r"```\n(.*?)```", text, flags=re.S) if "[--" in b)
    return re.sub(r"\n\s+(?=\[|--)", " ", block).strip().splitlines()


@pytest.mark.parametrize("line", _synopsis(), ids=lambda line: line[:40])
def test_synopsis_options_exist(line):
    words = line.split()
    assert words[0] == "cg-ray"
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[words[1]]
    if words[1] == "bench":
        sub = next(a for a in sub._actions if a.dest == "target").choices[words[2]]
    known = {opt for action in sub._actions for opt in action.option_strings}
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line))
    assert named <= known, f"{line}: unknown options {sorted(named - known)}"
