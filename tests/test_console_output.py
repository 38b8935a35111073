"""What a newcomer's terminal shows: cg_ray's lines, and the warnings of Ray and MLflow; their
INFO lines go to the log file the command names at its start, and come back with --verbose.

Each command runs as users run it (the `cg-ray` console script, a fresh local Ray of its own),
and every line it prints is classified: ours, a warning or error, or not ours."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tmpdirs import short_tmpdir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
CG_RAY = str(Path(sys.executable).parent / "cg-ray")

ANSI = re.compile(r"\x1b\[[0-9;]*m")
# "(RayTrainWorker pid=123)", "(run_trial pid=4, ip=10.0.0.2)": a line Ray forwards from a process
FORWARDED = re.compile(r"^\((?P<who>[^)]*pid=[^)]*)\) ?")
OURS = [
    re.compile(pattern)
    for pattern in (
        r"$",
        r"cg-ray: Ray and MLflow logs: /\S+$",
        r"\[demo\] ",
        # progress: a worker's epoch and evaluation, the driver's evaluation
        r"(epoch \d+/\d+|evaluate epoch \d+|evaluate val) .*\d+ clips [\d.]+ clips/s",
        r"epoch \d+/\d+: train_loss=[\d.]+ city_top1=",  # the epoch's summary
        r"train\.use_gpu=(auto: |false|true)",  # what a run decided, and why
        r"data\.decode=(auto: |cpu|gpu)",
        # the demo's table and last line
        r" +city @1 +@5 +state @1",
        r"(flat|independent|codependent|official) +[\d.]+ +[\d.]+",
        r"city top-1 chance level: ",
        # cg-ray train's and tune's result, tune's report of its trials
        r"\{\"",
        r"search \S+: \d+ trials?, best ",
        r"trial +status +epochs",
        r"[0-9a-f]{5}_\d{5} +(completed|stopped|failed)",
        r"importances: ",
        r"report: /\S+/report/",
        r"trial [0-9a-f]{5}_\d{5} (completed|stopped|failed) ",
    )
]
# At WARNING or above, from any library: these stay on the terminal.
WARNING = re.compile(
    r"^(WARNING|ERROR|CRITICAL) \S+: "  # a logger's record, as cg_ray's console writes it
    r"|^[\d/-]+ [\d:,]+\s+(WARNING|ERROR|CRITICAL) "  # as Ray's or MLflow's own handlers write it
    r"|^\S+\.py:\d+: \w*(Warning|Error): "  # warnings.warn
    r"|^\[[^\]]* [WEF] \d+ \d+\] "  # Ray's C++ processes: [time W pid tid] file.cc:line: ...
    r"|^\((raylet|autoscaler)[^)]*\) .*(Warning|Error|WARNING|ERROR|Tip: use `ray status`)"
)


def classify(text: str) -> dict[str, list[str]]:
    """Every line of a command's stdout and stderr as ours, a warning (or what belongs to one: a
    warnings.warn's source line, a traceback) or not ours."""
    kinds: dict[str, list[str]] = {"ours": [], "warning": [], "not ours": []}
    in_warning = False
    for raw in text.splitlines():
        line = FORWARDED.sub("", ANSI.sub("", raw))
        if WARNING.search(line):
            kind, in_warning = "warning", True
        elif in_warning and line.startswith((" ", "\t", "Traceback")):
            kind = "warning"
        elif any(p.match(line) for p in OURS):
            kind, in_warning = "ours", False
        else:
            kind, in_warning = "not ours", False
        kinds[kind].append(raw)
    return kinds


def run(args: list[str], cwd: Path) -> str:
    """A `cg-ray` command as a user runs it, on a local Ray of its own; its stdout and stderr."""
    env = dict(os.environ, RAY_TMPDIR=short_tmpdir("cgr-"), PYTHONUNBUFFERED="1")
    for name in ("RAY_ADDRESS", "CG_RAY_VERBOSE", "CG_RAY_QUIET", "MLFLOW_CONFIGURE_LOGGING"):
        env.pop(name, None)
    done = subprocess.run(
        [CG_RAY, *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-5000:]
    return done.stdout


def named_log(text: str) -> Path:
    """The log file a command named at its start (its first line)."""
    first, named = text.splitlines()[0], "cg-ray: Ray and MLflow logs: "
    assert first.startswith(named), text[:2000]
    return Path(first.removeprefix(named))


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`cg-ray demo` at its smallest: (what it printed, its folder)."""
    out = tmp_path_factory.mktemp("demo")
    text = run(["demo", "--out", str(out), "--workers", "1", "--epochs", "1"], cwd=out)
    return text, out


def test_the_demo_prints_only_our_lines_and_warnings(demo):
    text, out = demo
    kinds = classify(text)
    assert not kinds["not ours"], "lines that are not cg_ray's:\n" + "\n".join(kinds["not ours"])
    ours = "\n".join(kinds["ours"])
    # our lines, the workers' forwarded ones among them, are all there
    for expected in (
        "[demo] training: 1 workers x 1 epochs",
        "epoch 1/1 (rank 0 of 1) [",
        "epoch 1/1: train_loss=",
        "evaluate val [",
        "codependent ",
        "city top-1 chance level",
    ):
        assert expected in ours, expected
    # none of Ray's bookkeeping, at any level
    for theirs in (
        "TrainingReport(",
        "worker group",
        "Execution plan",
        "Progress bars disabled",
        "RayDeprecationWarning",
        "system metrics",
        "No pretrained weights",
    ):
        assert theirs not in text, theirs


def test_the_log_file_named_at_start_holds_ray_and_mlflow_lines(demo):
    text, out = demo
    log = named_log(text)
    assert log == out / "cg-ray.log"
    held = log.read_text()
    for line in (
        "INFO ray._private.worker: Started a local Ray instance",
        "INFO mlflow.store.db.utils: Creating initial MLflow database tables",
        "INFO ray.data._internal.execution.streaming_executor: Execution plan of Dataset",
    ):
        assert line in held, line
        assert line.split(": ", 1)[1] not in text  # not on the terminal


def test_verbose_brings_ray_lines_back_to_cg_ray_train(demo, tmp_path):
    _, out = demo
    text = run(
        [
            "train",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--verbose",
            "--set",
            f"data.path={out}/data",
            "train.epochs=1",
            "train.num_workers=1",
            f"run.storage_path={tmp_path}/runs",
            "run.name=v",
            f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        ],
        cwd=tmp_path,
    )
    assert named_log(text) == tmp_path / "runs" / "v" / "cg-ray.log"
    not_ours = "\n".join(classify(text)["not ours"])
    # the driver's Ray, MLflow and Ray Data lines; Ray Train's from its controller and workers
    for line in (
        "INFO ray: Started a local Ray instance",
        "INFO mlflow: Creating initial MLflow database tables",
        "Started training worker group of size 1",
        "Reporting training result 1: TrainingReport(",
        "Execution plan of Dataset",
        "Started monitoring system metrics",
    ):
        assert line in not_ours, line
    # Ray's forwarded lines may come after the result (its log monitor is asynchronous); cg_ray's
    # own lines still end with it
    ours = [line for line in classify(text)["ours"] if line.strip()]
    assert "epoch 1/1: train_loss=" in text and ours[-1].startswith('{"'), ours[-3:]


def test_tune_prints_like_train(demo, tmp_path):
    _, out = demo
    text = run(
        [
            "tune",
            "--config",
            str(ROOT / "configs" / "demo.yaml"),
            "--num-samples",
            "1",
            "--set",
            f"data.path={out}/data",
            "train.epochs=1",
            "train.num_workers=1",
            f"run.storage_path={tmp_path}/s",
            "run.name=s",
            f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        ],
        cwd=tmp_path,
    )
    kinds = classify(text)
    assert not kinds["not ours"], "lines that are not cg_ray's:\n" + "\n".join(kinds["not ours"])
    assert "Trial status" not in text and "╭" not in text  # Ray Tune's own tables
    assert "epoch 1/1: train_loss=" in text and "search s: 1 trial" in text
    assert named_log(text) == tmp_path / "s" / "s" / "cg-ray.log"
    assert "INFO ray._private.worker: Started a local Ray instance" in named_log(text).read_text()
