"""Progress as people expect it: timed lines in logs, a live bar on a terminal, nothing when
quiet; and the learning-curve picture of a run."""

import io
import logging
import os

from output import own

from cg_ray.console import Progress, command_console, open_log, quiet_mode


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _run(progress: Progress, clock: Clock, steps: int, seconds_per_step: float) -> None:
    for i in range(1, steps + 1):
        clock.now += seconds_per_step
        progress.update(i * 10, loss=1.0 / i)
    progress.close(steps * 10)


def test_lines_at_the_configured_interval_in_logs():
    out, clock = io.StringIO(), Clock()
    progress = Progress("epoch 1/3", total=600, stream=out, every=30, passes_after=2, clock=clock)
    _run(progress, clock, steps=60, seconds_per_step=1.0)  # 60 s: lines at 30 s, 60 s, close
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue()
    assert lines[0] == (
        "epoch 1/3 [##########..........] 300/600 clips 10.0 clips/s loss 0.03333 ETA 0:30 (all 2:30)"
    )
    assert lines[-1].startswith("epoch 1/3 [####################] 600/600 clips 10.0 clips/s")
    assert "ETA 0:00" in lines[-1] and "(all" not in lines[-1]


def test_never_a_flood():
    out, clock = io.StringIO(), Clock()
    _run(
        Progress("pack", total=100000, stream=out, every=30, clock=clock),
        clock,
        steps=10000,
        seconds_per_step=0.01,
    )  # 100 s of tiny steps
    assert len(out.getvalue().splitlines()) == 4  # 30, 60, 90 s and the end


def test_quiet_prints_nothing_and_restores_the_environment():
    before = os.environ.get("CG_RAY_QUIET")
    with quiet_mode(True):
        out, clock = io.StringIO(), Clock()
        _run(Progress("evaluate val", total=50, stream=out, every=0, clock=clock), clock, 5, 1.0)
        assert out.getvalue() == ""
    assert os.environ.get("CG_RAY_QUIET") == before


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_live_bar_on_a_terminal():
    out, clock = Terminal(), Clock()
    _run(Progress("scenes", total=40, stream=out, clock=clock), clock, steps=4, seconds_per_step=1)
    text = out.getvalue()
    assert text.count("\r") == 5 and text.endswith("\n") and text.count("\n") == 1
    assert "\rscenes [####################] 40/40 clips" in text


def test_unknown_total_counts_up():
    out, clock = io.StringIO(), Clock()
    progress = Progress("batch predict", total=None, stream=out, every=0, clock=clock)
    clock.now = 2.0
    progress.update(8)
    assert out.getvalue() == "batch predict 8 clips 4.0 clips/s\n"


def test_a_count_past_its_estimated_total_counts_up():
    # Rank 0's share of the val split is an estimate (the split is taken unequally): a worker
    # that evaluates more than its share must not show "12/6 clips" or a negative ETA.
    out, clock = io.StringIO(), Clock()
    progress = Progress("evaluate epoch 1 (rank 0 of 2)", total=6, stream=out, every=0, clock=clock)
    clock.now += 1
    progress.update(4)
    clock.now += 1
    progress.update(12)
    progress.close(12)
    lines = out.getvalue().splitlines()
    assert lines[0] == "evaluate epoch 1 (rank 0 of 2) [#############.......] 4/6 clips 4.0 clips/s ETA 0:00"
    assert lines[1:] == ["evaluate epoch 1 (rank 0 of 2) 12 clips 6.0 clips/s"] * 2
    # ... and one that evaluates less than its share ends with its count, not a bar at 4/6.
    out, clock = io.StringIO(), Clock()
    progress = Progress("evaluate epoch 1 (rank 1 of 2)", total=6, stream=out, every=0, clock=clock)
    clock.now += 1
    progress.update(4)
    progress.close(4)
    assert out.getvalue().splitlines()[-1] == "evaluate epoch 1 (rank 1 of 2) 4 clips 4.0 clips/s"


def test_learning_curves_png_draws_every_logged_curve():
    import numpy as np
    from PIL import Image

    from cg_ray.report.curves import learning_curves_png

    history = {
        "train_loss": [(0, 9.0), (1, 6.0), (2, 4.5)],
        "train_city": [(0, 2.5), (1, 2.0)],
        "city_top1": [(0, 20.0), (1, 45.0), (2, 61.0)],
        "continent_top1": [(0, 50.0)],
    }
    png = learning_curves_png(history, "run")
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape == (450, 1200, 3)
    empty = np.asarray(Image.open(io.BytesIO(learning_curves_png({}, "run"))).convert("RGB"))
    assert (image != empty).any(axis=2).sum() > 2000  # the curves and legends are drawn


def test_ray_datas_own_bars_are_off_unless_asked_for(monkeypatch):
    """Every process of a run reads RAY_DATA_DISABLE_PROGRESS_BARS (cg_ray passes it on to
    Ray's workers): cg_ray sets it from CG_RAY_PROGRESS, and leaves a user's own value alone."""
    from cg_ray.ray_env import quiet_environment

    for progress, users, expected in [
        (None, None, "1"),
        ("1", None, "0"),
        ("0", None, "1"),
        (None, "0", "0"),
    ]:
        for name, value in (("CG_RAY_PROGRESS", progress), ("RAY_DATA_DISABLE_PROGRESS_BARS", users)):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        quiet_environment()
        assert os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == expected, (progress, users)
    with quiet_mode(True):  # --quiet turns them off too
        assert os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == "0"


def test_ray_and_mlflow_info_goes_to_the_log_file_and_their_warnings_to_the_terminal(tmp_path, capsys):
    """What a command's console does with Ray's and MLflow's loggers as they set themselves up
    (a console handler of their own, propagate=False): INFO to the file, WARNING to the terminal
    as well; and afterwards their loggers are as they were."""
    import mlflow  # noqa: F401
    import ray.data  # noqa: F401

    loggers = [logging.getLogger(name) for name in ("ray", "ray.data", "mlflow")]
    before = [(list(lg.handlers), lg.propagate) for lg in loggers]
    log = tmp_path / "runs" / "r" / "cg-ray.log"
    with command_console("train"):
        assert open_log(str(log)) == str(log)
        logging.getLogger("ray.data._internal.execution.streaming_executor").info(
            "Execution plan of Dataset d"
        )
        logging.getLogger("mlflow.store.db.utils").info("Creating initial MLflow database tables...")
        logging.getLogger("ray._private.authentication").warning("Token authentication is enabled")
    assert own(capsys.readouterr().err).splitlines() == [
        f"cg-ray: Ray and MLflow logs: {log}",
        "WARNING ray: Token authentication is enabled",
    ]
    held = log.read_text()
    assert "INFO ray.data._internal.execution.streaming_executor: Execution plan of Dataset d" in held
    assert "INFO mlflow.store.db.utils: Creating initial MLflow database tables..." in held
    assert "WARNING ray._private.authentication: Token authentication is enabled" in held
    assert [(list(lg.handlers), lg.propagate) for lg in loggers] == before


def test_verbose_shows_their_info_on_the_terminal_too(capsys):
    with command_console("tune"):
        assert os.environ["RAY_AIR_NEW_OUTPUT"] == "0"  # Tune's engine that is silent at verbose=0
    with command_console("tune", verbose=True):
        assert os.environ["CG_RAY_VERBOSE"] == "1"  # Ray's workers get it too (cg_ray.ray_env)
        assert "RAY_AIR_NEW_OUTPUT" not in os.environ
        logging.getLogger("ray.tune.tune").info("Trial status: 1 RUNNING")
    assert own(capsys.readouterr().err) == "INFO ray: Trial status: 1 RUNNING"
    assert "CG_RAY_VERBOSE" not in os.environ


def test_a_commands_first_log_gets_what_was_logged_before_it(tmp_path, capsys):
    assert open_log(str(tmp_path / "outside.log")) is None  # a library caller, a Tune trial
    assert not (tmp_path / "outside.log").exists()
    with command_console("demo", quiet=True):
        logging.getLogger("ray._private.worker").info("Started a local Ray instance")
        assert open_log(str(tmp_path / "demo" / "cg-ray.log"))
        assert open_log(str(tmp_path / "demo" / "runs" / "r" / "cg-ray.log")) is None  # the demo's run
    assert (
        "INFO ray._private.worker: Started a local Ray instance"
        in (tmp_path / "demo" / "cg-ray.log").read_text()
    )
    assert not (tmp_path / "demo" / "runs").exists()
    assert own(capsys.readouterr().err) == ""  # --quiet: not even the file's name


def test_every_command_takes_verbose():
    from cg_ray.cli import build_parser, leaf_parsers

    parser = build_parser()
    commands = list(leaf_parsers(parser))
    assert len(commands) > 15 and all("--verbose" in p._option_string_actions for p in commands)
    assert parser.parse_args(["demo", "--verbose"]).verbose and not parser.parse_args(["demo"]).verbose
