"""`cg-ray submit` without a cluster: what travels with a job (the config and other local files an
option names, this shell's settings, never a credential), what is refused before anything is
submitted (a missing file, a config that does not validate, a secret, no address), how submit's
own options are told from the command's, and which ended jobs count as lost. The jobs on a real
cluster: tests/test_jobs_cluster.py."""

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cg_ray.cli import build_parser
from cg_ray.errors import UserError
from cg_ray.jobs import JOBS, files
from cg_ray.jobs.submit import entrypoint, lost_because, metadata, with_resume_auto

ROOT = Path(__file__).resolve().parents[1]
CG_RAY = os.path.join(os.path.dirname(sys.executable), "cg-ray")


def _closed_port() -> str:
    """An address where nothing listens: a command that reached for it would say so."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _cg_ray(*args: str, cwd=ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CG_RAY, *args], cwd=cwd, env=env or dict(os.environ), text=True, capture_output=True, timeout=120
    )


def test_a_file_that_is_not_here_is_refused_before_anything_is_submitted():
    done = _cg_ray("submit", "train", "--config", "configs/nope.yaml", "--address", _closed_port())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "cg-ray submit: error: --config configs/nope.yaml: no such file here; give a file that exists "
        "(it travels with the job) or a URI the nodes can read (s3://...)"
    ]  # one line, and no attempt to reach the (closed) address


def test_a_config_that_does_not_validate_is_refused_before_anything_is_submitted():
    done = _cg_ray(
        "submit",
        "train",
        "--config",
        "configs/demo.yaml",
        "--set",
        "train.epocs=3",
        "--address",
        _closed_port(),
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "unknown config key 'train.epocs'" in done.stderr and "cannot reach" not in done.stderr


def test_nobody_at_the_address_and_no_address_are_one_line_each():
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    address = _closed_port()
    for args, said in (
        (
            ("submit", "train", "--config", "configs/demo.yaml", "--address", address),
            "cannot reach the job server",
        ),
        (("jobs", "status", "raysubmit_x", "--address", address), "cannot reach the job server"),
        (("jobs", "list"), "no cluster: give --address http://HEAD:8265 or set RAY_ADDRESS"),
    ):
        done = _cg_ray(*args, env=env)
        assert done.returncode == 2 and said in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_retries_need_the_job_followed():
    done = _cg_ray(
        "submit",
        "train",
        "--config",
        "configs/demo.yaml",
        "--no-wait",
        "--retries",
        "2",
        "--address",
        _closed_port(),
    )
    assert done.returncode == 2 and "needs the job followed" in done.stderr


def test_a_credential_never_travels(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    env = files.runtime_env(str(ROOT / "jobs" / "runtime_env.yaml"), [])
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert env["env_vars"]["AWS_REGION"] == "eu-west-3" and env["env_vars"]["CG_RAY_PROGRESS"] == "0"
    assert env["working_dir"] == str(ROOT / "jobs")
    with pytest.raises(UserError, match="refusing to send AWS_SECRET_ACCESS_KEY"):
        files.runtime_env(str(ROOT / "jobs" / "runtime_env.yaml"), ["AWS_SECRET_ACCESS_KEY"])
    with pytest.raises(UserError, match="runtime_env file nope.yaml does not exist"):
        files.runtime_env("nope.yaml", [])


def test_local_files_travel_in_a_copy_of_the_working_dir(tmp_path):
    """A config outside the working_dir, and a second file of the same name, go into a staged
    copy of it (as _files/...); a file inside it is named relative to it; a URI stays."""
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "train.py").write_text("print('job')\n")
    (work / "sub" / "inside.csv").write_text("city,lat,lon\n")
    (work / "big.db").write_text("not uploaded")
    mine, other = tmp_path / "mine", tmp_path / "other"
    mine.mkdir()
    other.mkdir()
    (mine / "c.yaml").write_text("train: {epochs: 1}\n")
    (other / "c.yaml").write_text("train: {epochs: 2}\n")
    env = {"working_dir": str(work), "excludes": ["*.db"]}
    args = [
        "--config",
        str(mine / "c.yaml"),
        f"--categories={other / 'c.yaml'}",
        "--coordinates",
        str(work / "sub" / "inside.csv"),
        "--hierarchy",
        "s3://bucket/h.csv",
        "--set",
        "data.path=/data",
    ]
    staged_env, staged_args, copy = files.stage(env, args)
    try:
        assert staged_env["working_dir"] == copy and copy != str(work)
        assert staged_args == [
            "--config",
            "_files/c.yaml",
            "--categories=_files/2/c.yaml",
            "--coordinates",
            "sub/inside.csv",
            "--hierarchy",
            "s3://bucket/h.csv",
            "--set",
            "data.path=/data",
        ]
        assert (Path(copy) / "_files" / "c.yaml").read_text() == "train: {epochs: 1}\n"
        assert (Path(copy) / "_files" / "2" / "c.yaml").read_text() == "train: {epochs: 2}\n"
        assert (Path(copy) / "train.py").exists() and not (Path(copy) / "big.db").exists()
    finally:
        import shutil

        shutil.rmtree(copy)
    # Nothing outside the working_dir: no copy.
    assert files.stage(env, ["--coordinates", str(work / "sub" / "inside.csv")])[2] is None
    # A remote working_dir cannot take a local file.
    with pytest.raises(UserError, match="remote working_dir"):
        files.stage({"working_dir": "s3://bucket/pkg.zip"}, ["--config", str(mine / "c.yaml")])


def test_the_entrypoint_runs_the_jobs_script_or_the_installed_command():
    dev = files.runtime_env(str(ROOT / "jobs" / "runtime_env.dev.yaml"), [])
    assert entrypoint("train", dev, ["--config", "a b.yaml"]) == "python jobs/train.py --config 'a b.yaml'"
    assert entrypoint("tune", {"working_dir": str(ROOT / "jobs")}, []) == "python tune.py"
    assert entrypoint("pack", {}, ["s3://b/data"]) == "cg-ray pack s3://b/data"


def test_metadata_names_the_run_that_cg_ray_jobs_looks_up(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:secret-password@mlflow.example")
    meta = metadata("tune", ["--config", "configs/demo.yaml", "--set", "run.name=s7", "train.epochs=2"])
    assert meta["cg_ray.job"] == "tune" and meta["cg_ray.run_name"] == "s7"
    assert meta["cg_ray.experiment"] == "cg_ray-demo"
    assert meta["cg_ray.tracking_uri"] == "https://***@mlflow.example"  # never the password
    assert meta["cg_ray.command"] == "cg-ray tune --config configs/demo.yaml --set run.name=s7 train.epochs=2"
    assert set(metadata("pack", ["s3://b/data"])) == {"cg_ray.job", "cg_ray.command"}


def _split(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    from cg_ray.cli.jobs import split_submit_args as split

    args = build_parser().parse_args(argv)
    return args, split(args)


def test_submits_own_options_go_before_or_after_the_job_and_the_rest_to_the_command():
    args, command = _split(
        [
            "submit",
            "--address",
            "http://a:8265",
            "train",
            "--config",
            "c.yaml",
            "--no-wait",
            "--set",
            "x=1",
            "y=2",
        ]
    )
    assert args.job == "train" and args.address == "http://a:8265" and args.no_wait
    assert command == ["--config", "c.yaml", "--set", "x=1", "y=2"]
    # make submit's form: submit's options after JOB, the command's after `--`, untouched.
    args, command = _split(
        [
            "submit",
            "tune",
            "--address",
            "http://b:8265",
            "--retries",
            "2",
            "--",
            "--config",
            "c.yaml",
            "--resume",
        ]
    )
    assert (args.address, args.retries, args.no_wait) == ("http://b:8265", 2, False)
    assert command == ["--config", "c.yaml", "--resume"]


def test_no_job_command_has_an_option_named_like_one_of_submits():
    """submit's own options are found after JOB too: no job command may take one of them."""
    from cg_ray.cli.jobs import _submit_options

    own_parser = argparse.ArgumentParser(add_help=False)
    _submit_options(own_parser)
    own = {o for a in own_parser._actions for o in a.option_strings}
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    for job in JOBS:
        theirs = {o for a in commands[job]._actions for o in a.option_strings}
        assert not own & theirs, f"cg-ray {job} and cg-ray submit both take {sorted(own & theirs)}"


def test_a_retry_resumes_train_and_tune_only():
    assert with_resume_auto("train", ["--config", "c", "--resume", "must", "--set", "a=1"]) == [
        "--config",
        "c",
        "--set",
        "a=1",
        "--resume",
        "auto",
    ]
    assert with_resume_auto("tune", ["--resume=must"]) == ["--resume", "auto"]
    assert with_resume_auto("pack", ["s3://b/d"]) == ["s3://b/d"]


def Info(status, error_type=None, code=None, message=None):
    """Ray's own JobDetails, as the job server answers."""
    from ray.job_submission import JobDetails, JobType

    return JobDetails(
        type=JobType.SUBMISSION,
        status=status,
        entrypoint="python train.py",
        error_type=error_type,
        driver_exit_code=code,
        message=message,
    )


def test_a_job_is_lost_only_when_it_did_not_end_by_its_own_decision():
    assert lost_because(None)  # the head no longer knows it
    assert lost_because(Info("FAILED", "JOB_SUPERVISOR_ACTOR_DIED", message="node died\nmore"))
    assert "exit code -9" in lost_because(Info("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", -9))
    assert "exit code 137" in lost_because(Info("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 137))
    assert lost_because(Info("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 2)) is None  # bad input
    assert lost_because(Info("FAILED", "JOB_ENTRYPOINT_COMMAND_ERROR", 1)) is None
    assert lost_because(Info("STOPPED")) is None and lost_because(Info("SUCCEEDED")) is None
