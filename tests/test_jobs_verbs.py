"""`cg-ray jobs` and the guides' examples without a cluster: every `cg-ray ...` line of
docs/guides/clusters-and-jobs.md and searches.md is accepted by the CLI as written (the ones that
run on tiny data are run by tests/test_jobs_cluster.py and tests/test_search_report.py), the
latest progress line is found in a job's log as Ray forwards it, and the hint after Ctrl-C names
the commands to use. Against a real cluster: tests/test_jobs_cluster.py."""

import re
import shlex
from pathlib import Path

import pytest

from cg_ray.cli import build_parser
from cg_ray.jobs.cluster import follow_hint
from cg_ray.jobs.listing import progress

ROOT = Path(__file__).resolve().parents[1]
GUIDES = ("docs/guides/clusters-and-jobs.md", "docs/guides/searches.md")


def _examples(path: Path) -> list[str]:
    """`cg-ray` command lines of the page's ```bash blocks (also inside `$(...)`), continuation
    lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            found = re.search(r"(?:^|\$\()(cg-ray [^)]*)", line)
            if found:
                commands.append(found.group(1).strip())
    return commands


EXAMPLES = [(name, cmd) for name in GUIDES for cmd in _examples(ROOT / name)]


def test_the_guides_have_examples_of_every_verb():
    verbs = {
        " ".join(cmd.split()[1:3]) if cmd.split()[1] == "jobs" else cmd.split()[1] for _, cmd in EXAMPLES
    }
    assert {"submit", "jobs list", "jobs status", "jobs logs", "jobs stop", "tune", "train"} <= verbs
    assert any("--report" in cmd for _, cmd in EXAMPLES)


@pytest.mark.parametrize("source, command", EXAMPLES, ids=[f"{s[12:]}:{c[:60]}" for s, c in EXAMPLES])
def test_example_parses(source, command, capsys):
    try:
        build_parser().parse_args(shlex.split(command)[1:])
    except SystemExit as exc:
        pytest.fail(
            f"{source}: `{command}` is refused by the CLI: {capsys.readouterr().err.strip()} ({exc.code})"
        )


def test_the_guides_pictures_are_there():
    for name in GUIDES:
        for picture in re.findall(r"\]\((\.\./images/[^)]+)\)", (ROOT / name).read_text()):
            assert (ROOT / "docs" / "guides" / picture).resolve().is_file(), picture


def test_the_latest_progress_line_of_a_log_as_ray_forwards_it():
    log = (
        "Running entrypoint for job raysubmit_x: python train.py --config _files/demo.yaml\n"
        "train.use_gpu=auto: CPUs only\n"
        "\x1b[36m(RayTrainWorker pid=11783)\x1b[0m epoch 1/2 (rank 0 of 2) [####] 24/24 clips 8.1 clips/s\n"
        "\x1b[36m(RayTrainWorker pid=11783)\x1b[0m epoch 1/2: train_loss=7.52 city_top1=66.67\n"
        "\x1b[36m(RayTrainWorker pid=11783)\x1b[0m evaluate epoch 1 (rank 0 of 2) 12 clips\n"
        "(SplitCoordinator pid=23575) Starting execution of Dataset dataset_1\n"
    )
    assert progress(log) == "epoch 1/2: train_loss=7.52 city_top1=66.67"
    search = log + "Trial status: 1 TERMINATED | 1 RUNNING\n" + "Current time: 2026-12-07 10:23:38.\n"
    assert progress(search) == "Trial status: 1 TERMINATED | 1 RUNNING"
    assert progress("Runtime env is setting up.\n") is None


def test_the_hint_after_ctrl_c_names_the_address_only_when_it_is_not_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert follow_hint("raysubmit_x", "http://head:8265") == (
        "follow it with `cg-ray jobs logs raysubmit_x --follow`, stop it with `cg-ray jobs stop raysubmit_x`"
    )
    assert "`cg-ray jobs stop raysubmit_x --address http://other:8265`" in follow_hint(
        "raysubmit_x", "http://other:8265"
    )
