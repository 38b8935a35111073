"""`--resume auto`: one command that continues when there is state and starts otherwise, for jobs
that restart themselves (the KubeRay RayJob's backoffLimit, `make submit RETRIES=N`).

- A 3-trial search run as `cg-ray tune ... --resume auto` in a process of its own (its own local
  Ray), SIGKILLed twice and run again with the same command each time: first right after it
  wrote its parent run and meta file, before Ray Tune saved any state (a half-written search
  folder), then once Tune has recorded a trial as ended. The third run exits 0 with 3 trials
  under the one parent run, and no trial that had ended trains again.
- `train --resume auto` on a run folder without a checkpoint starts a new run (ending the run of
  a driver that died before its first checkpoint); `--resume` alone refuses it before Ray starts.
- The search folder states that `--resume auto` tells apart, without Ray.
- `jobs/submit.py --retries`: which ends count as lost; a real job whose driver is killed is
  submitted again with `--resume auto`, one that fails on its own is not.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray_cluster import LocalCluster, free_port
from tmpdirs import short_tmpdir

from cg_ray.cli import main
from cg_ray.config import load_config
from cg_ray.errors import UserError
from cg_ray.train.checkpoint import is_complete
from cg_ray.train.driver import RUN_MARKER
from cg_ray.tune.trials import META, existing_search

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "jobs"))
import submit  # noqa: E402  jobs/submit.py

DEMO = str(ROOT / "configs" / "demo.yaml")
NAME = "auto"
GRID = {"loss.scene": {"grid": [0.0, 1.0, 2.0]}}


def _search_args(data: str, out: Path) -> list[str]:
    """The one command of every run of the search: 3 trials one after another, 2 epochs each."""
    values = {
        "data.path": data,
        "train.epochs": 2,
        "train.num_workers": 1,
        "train.batch_size": 8,
        "run.storage_path": f"{out}/runs",
        "run.name": NAME,
        "run.tracking_uri": f"sqlite:///{out}/mlflow.db",
        "tune.metric": "train_loss",
        "tune.mode": "min",
        "tune.scheduler": "fifo",  # every trial runs its 2 epochs: nothing depends on timing
        "tune.num_samples": 1,
        "tune.max_concurrent": 1,
        "tune.space": json.dumps(GRID),
    }
    sets = [word for k, v in values.items() for word in ("--set", f"{k}={v}")]
    return ["tune", "--config", DEMO, *sets, "--resume", "auto", "--metrics-out", f"{out}/summary.json"]


def _wait_for(predicate, timeout: float, what: str, every: float = 0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _launch(args: list[str], out: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`cg-ray ARGS` as a user runs it: a new process that starts its own local Ray, in a Ray
    temp dir of its own (so that it never joins a Ray that a killed run left behind)."""
    ray_tmpdir = short_tmpdir("cgra-")
    env = dict(os.environ, RAY_TMPDIR=ray_tmpdir, CG_RAY_PROGRESS="0")
    env.pop("RAY_ADDRESS", None)
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cg_ray", *args],
            env=env,
            cwd=out,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc, ray_tmpdir


def _stop(proc: subprocess.Popen, ray_tmpdir: str) -> None:
    """SIGKILL a driver and its local Ray, by pid: its process group, every descendant it had,
    and every process whose command line names its own Ray temp dir (raylet, GCS, dashboard and
    workers, wherever they went)."""
    family: list[psutil.Process] = []
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(ray_tmpdir in part for part in p.info["cmdline"] or []):
                family.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def _meta(search_dir: Path) -> dict | None:
    """The search's meta file once it is complete (the parent run exists then)."""
    try:
        return json.loads((search_dir / META).read_text())
    except (OSError, ValueError):
        return None


def _ended_trials(search_dir: Path) -> set[str]:
    """The trials that Tune's newest saved state records as ended (TERMINATED)."""
    states = sorted(search_dir.glob("experiment_state-*.json"))
    try:
        trial_data = json.loads(states[-1].read_text())["trial_data"] if states else []
    except (OSError, ValueError):  # being written
        return set()
    trials = [json.loads(state) for state, _ in trial_data]
    return {t["trial_id"] for t in trials if t.get("status") == "TERMINATED"}


def _trial_folder(search_dir: Path, trial_id: str) -> Path:
    """Where a trial's training run lives (cg_ray.tune.search.trial_config)."""
    return search_dir / "trials" / f"{NAME}-{trial_id.rsplit('_', 1)[-1]}"


def _mid_trial(search_dir: Path) -> tuple[set[str], str] | None:
    """(the trials Tune's saved state has as ended, the folder name of a trial not among them
    that has a complete checkpoint), once there are both."""
    ended = _ended_trials(search_dir)
    done = {_trial_folder(search_dir, t).name for t in ended}
    for folder in sorted((search_dir / "trials").glob(f"{NAME}-*")) if ended else []:
        if folder.name not in done and any(is_complete(str(c)) for c in folder.glob("checkpoint_*")):
            return ended, folder.name
    return None


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def restarted(tiny_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("resume_auto")
    args, search_dir = _search_args(tiny_dataset, out), out / "runs" / NAME
    logs = [out / f"run{i}.log" for i in (1, 2, 3)]
    started = time.perf_counter()

    # 1. Killed once its parent run and meta file exist, before Tune saved any state.
    proc, ray_tmpdir = _launch(args, out, logs[0])
    try:
        meta = _wait_for(lambda: _meta(search_dir) or proc.poll() is not None, 300, "the meta file", 0.02)
        assert proc.poll() is None, logs[0].read_text()
        states_at_first_kill = sorted(p.name for p in search_dir.glob("experiment_state-*.json"))
    finally:
        _stop(proc, ray_tmpdir)

    # 2. The same command: a search with no Tune state starts its trials, under the same parent
    # run; killed once Tune has saved a state in which a trial has ended, while another trial is
    # training and has checkpointed (a moment of the trials, not of Tune's saving).
    proc, ray_tmpdir = _launch(args, out, logs[1])
    try:
        found = _wait_for(
            lambda: _mid_trial(search_dir) or proc.poll() is not None, 900, "a trial mid-way", 0.05
        )
        assert proc.poll() is None, logs[1].read_text()
        ended, unfinished = found
        before = {t: _files(_trial_folder(search_dir, t)) for t in ended}
    finally:
        _stop(proc, ray_tmpdir)

    # 3. The same command again, to the end.
    proc, ray_tmpdir = _launch(args, out, logs[2])
    try:
        code = proc.wait(timeout=600)
    finally:
        _stop(proc, ray_tmpdir)
    summary = json.loads((out / "summary.json").read_text()) if code == 0 else None
    print(f"3 runs of the search: {time.perf_counter() - started:.0f} s; ended at the kill: {sorted(ended)}")
    return {
        "code": code,
        "logs": [log.read_text() for log in logs],
        "summary": summary,
        "meta": meta,
        "states_at_first_kill": states_at_first_kill,
        "ended": ended,
        "unfinished": unfinished,
        "before": before,
        "search_dir": search_dir,
        "client": MlflowClient(f"sqlite:///{out}/mlflow.db"),
    }


def _runs(client: MlflowClient, filter_string: str) -> list:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiments, filter_string)


@pytest.mark.slow
def test_a_killed_search_run_again_ends_with_three_trials_under_one_parent(restarted):
    assert restarted["code"] == 0, restarted["logs"][2][-3000:]
    summary, client = restarted["summary"], restarted["client"]
    assert summary["resumed"] and (summary["trials"], summary["completed"], summary["failed"]) == (3, 3, 0)
    (parent,) = _runs(client, "tags.`cg_ray.kind` = 'search'")  # one parent run, over three runs
    assert parent.info.run_id == restarted["meta"]["parent_run_id"] == summary["parent_run_id"]
    assert parent.info.status == "FINISHED"
    children = _runs(client, f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    # A trial killed before its first checkpoint started again in a new run; its first run was
    # ended as an orphan (KILLED, tagged why) and is no trial's run.
    trials = [r for r in children if "cg_ray.ended_because" not in r.data.tags]
    assert all(r.info.status == "KILLED" for r in children if r not in trials)
    assert len({r.data.tags["cg_ray.trial_id"] for r in trials}) == len(trials) == 3
    assert {r.data.params["loss.scene"] for r in trials} == {"0.0", "1.0", "2.0"}
    for run in trials:
        assert run.info.status == "FINISHED" and run.data.tags["cg_ray.trial_status"] == "completed"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "city_top1")]
        assert sorted(steps) == [0, 1], run.data.params  # each epoch logged exactly once


@pytest.mark.slow
def test_trials_that_had_ended_are_not_trained_again(restarted):
    """Their training run folders are untouched since the kill (no new checkpoint, curve or
    marker), and their MLflow runs record no restart."""
    ended, search_dir, client = restarted["ended"], restarted["search_dir"], restarted["client"]
    assert ended and len(ended) < 3  # killed mid-search
    runs = {r.data.tags.get("cg_ray.trial_id"): r for r in _runs(client, "tags.`cg_ray.trial_id` != ''")}
    for trial_id in ended:
        assert _files(_trial_folder(search_dir, trial_id)) == restarted["before"][trial_id], trial_id
        assert not client.get_metric_history(runs[trial_id].info.run_id, "resumed_at_epoch")
        assert f"resuming {NAME}-{trial_id.rsplit('_', 1)[-1]} " not in restarted["logs"][2]


@pytest.mark.slow
def test_a_trial_killed_mid_way_continues_from_its_checkpoint(restarted):
    client, index = restarted["client"], restarted["unfinished"].rsplit("-", 1)[-1]
    (run,) = [
        r
        for r in _runs(client, "tags.`cg_ray.trial_id` != ''")
        if r.data.tags["cg_ray.trial_id"].endswith(f"_{index}") and "cg_ray.ended_because" not in r.data.tags
    ]
    # After epoch 0's checkpoint, or epoch 1's where it landed before the kill.
    resumed_at = [m.value for m in client.get_metric_history(run.info.run_id, "resumed_at_epoch")]
    assert resumed_at in ([1], [2])
    assert f"resuming {restarted['unfinished']} after epoch" in restarted["logs"][2]


@pytest.mark.slow
def test_a_search_killed_before_tune_saved_state_starts_cleanly(restarted):
    """The first kill left the meta file and the parent run but no Tune state: the second run
    took the same parent run and started the trials, without a failed restore."""
    assert restarted["states_at_first_kill"] == []
    second = restarted["logs"][1]
    assert f"resuming search {NAME} (MLflow parent run {restarted['meta']['parent_run_id']})" in second
    assert "no Tune state in" in second and "starting its trials under the same parent run" in second
    assert "Failed to restore the run state" not in second
    assert "resuming search" in restarted["logs"][2]


# -- train ---------------------------------------------------------------------------------------


def _train_args(data: str, out: Path, *extra: str) -> list[str]:
    values = {
        "data.path": data,
        "train.epochs": 1,
        "train.num_workers": 1,
        "train.batch_size": 8,
        "run.storage_path": f"{out}/runs",
        "run.name": "fresh",
        "run.experiment": "resume-auto",
        "run.tracking_uri": f"sqlite:///{out}/mlflow.db",
    }
    return ["train", "--config", DEMO, *[w for k, v in values.items() for w in ("--set", f"{k}={v}")], *extra]


def test_train_resume_refuses_a_run_folder_without_checkpoint_before_ray_starts(
    tiny_dataset, tmp_path, capsys
):
    import ray

    from cg_ray.cli import build_parser

    was_running = ray.is_initialized()
    assert main(_train_args(tiny_dataset, tmp_path, "--resume")) == 2
    assert "nothing to resume: no checkpoint under" in capsys.readouterr().err
    assert ray.is_initialized() == was_running
    for command in ("train", "tune"):
        parse = build_parser().parse_args
        assert parse([command, "--config", DEMO, "--resume"]).resume == "must"
        assert parse([command, "--config", DEMO, "--resume", "auto"]).resume == "auto"
        assert parse([command, "--config", DEMO]).resume is None
        with pytest.raises(SystemExit):
            parse([command, "--config", DEMO, "--resume", "sometimes"])


@pytest.mark.slow
def test_train_resume_auto_starts_a_new_run_where_there_is_no_checkpoint(tiny_dataset, ray_session, tmp_path):
    """What a driver that died before its first checkpoint leaves: a run folder with the marker
    of its MLflow run, still RUNNING. `--resume auto` ends that run as KILLED and trains a new
    one from epoch 0."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("resume-auto", artifact_location=str(tmp_path / "artifacts"))
    orphan = client.create_run(experiment).info.run_id
    run_dir = tmp_path / "runs" / "fresh"
    run_dir.mkdir(parents=True)
    (run_dir / RUN_MARKER).write_text(json.dumps({"mlflow_run_id": orphan}))
    metrics = tmp_path / "m.json"
    assert main(_train_args(tiny_dataset, tmp_path, "--resume", "auto", "--metrics-out", str(metrics))) == 0
    result = json.loads(metrics.read_text())
    assert result["run_id"] != orphan and result["epoch"] == 0
    assert client.get_run(orphan).info.status == "KILLED"
    assert "cg_ray.ended_because" in client.get_run(orphan).data.tags
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert not client.get_metric_history(result["run_id"], "resumed_at_epoch")
    assert json.loads((run_dir / RUN_MARKER).read_text()) == {"mlflow_run_id": result["run_id"]}


# -- the search folder, without Ray --------------------------------------------------------------


def test_the_search_folder_states_that_resume_auto_tells_apart(tiny_dataset, tmp_path, capsys):
    def cfg(name="s", *extra):
        return load_config(
            DEMO, [f"data.path={tiny_dataset}", f"run.storage_path={tmp_path}", f"run.name={name}", *extra]
        )

    search_dir = tmp_path / "s"
    assert existing_search(cfg(), str(search_dir), "auto") is None  # nothing: a new search
    with pytest.raises(UserError, match="nothing to resume: no search under"):
        existing_search(cfg(), str(search_dir), "must")
    # A meta file cut short (its driver died writing it): auto starts anew, --resume says so.
    search_dir.mkdir()
    (search_dir / META).write_text('{"parent_run_id": "0a1')
    assert existing_search(cfg(), str(search_dir), "auto") is None
    assert "is incomplete" in capsys.readouterr().out
    with pytest.raises(UserError, match="is incomplete .* --resume auto"):
        existing_search(cfg(), str(search_dir), True)
    # A complete one: continued by --resume and --resume auto, refused without, and only for
    # the same search.
    meta = {"parent_run_id": "0a1b", "tracking_uri": "sqlite:///x.db", "config": cfg().to_dict()}
    (search_dir / META).write_text(json.dumps(meta))
    assert existing_search(cfg(), str(search_dir), "auto") == meta
    assert existing_search(cfg(), str(search_dir), True) == meta
    with pytest.raises(UserError, match=r"add --resume \(or --resume auto\) to continue it"):
        existing_search(cfg(), str(search_dir), None)
    with pytest.raises(UserError, match="different config .*optim.lr"):
        existing_search(cfg("s", "optim.lr=0.5"), str(search_dir), "auto")
    # A training run's folder is never taken for a search.
    (tmp_path / "t" / "checkpoint_000000").mkdir(parents=True)
    with pytest.raises(UserError, match="already holds other files"):
        existing_search(cfg("t"), str(tmp_path / "t"), "auto")


def test_tune_state_is_restorable_only_with_an_experiment_state(tmp_path):
    """Tune's Tuner.can_restore looks for tuner.pkl alone, written when the Tuner is made; a
    driver killed before the Tuner's first step leaves no experiment state beside it."""
    from cg_ray.tune.search import restorable

    assert not restorable(str(tmp_path))
    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert not restorable(str(tmp_path))
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text("{}")
    assert restorable(str(tmp_path))


def _grid_generator(tmp_path):
    """The search's generator over a 3-value grid, one trial at a time, as a new search has it."""
    from ray.tune import Experiment, grid_search

    from cg_ray.tune.scheduling import ReplayedVariantGenerator

    generator = ReplayedVariantGenerator(random_state=0, max_concurrent=1)
    generator.add_configurations(
        Experiment("g", lambda config: None, config={"w": grid_search([0, 1, 2])}, storage_path=str(tmp_path))
    )
    return generator


def _restored(tmp_path, generator, saved: list[tuple[str, str]]):
    """A generator restored as Tune restores it (an empty one: the Tuner's), from the
    generator's saved state and an experiment state holding the trials `saved`."""
    from cg_ray.tune.scheduling import ReplayedVariantGenerator

    tmp_path.mkdir(parents=True, exist_ok=True)
    generator.save_to_dir(str(tmp_path), "2026-01-01_00-00-00")
    state = [[json.dumps({"trial_id": t, "status": status}), "{}"] for t, status in saved]
    (tmp_path / "experiment_state-2026-01-01_00-00-00.json").write_text(json.dumps({"trial_data": state}))
    restored = ReplayedVariantGenerator(random_state=0, max_concurrent=1)
    restored.restore_from_dir(str(tmp_path))
    return restored


def test_a_restored_search_makes_the_trials_tune_had_not_saved(tmp_path):
    """The two files of Tune's state copied in part when the driver died: the generator saved
    behind the trials (it had made trial 0; Tune saved trial 0 ended and trial 1 made) and
    ahead of them (it had made trial 2; Tune saved trials 0 and 1 only)."""
    behind = _grid_generator(tmp_path / "behind")
    first = behind.next_trial()
    second_id = first.trial_id.replace("_00000", "_00001")
    restored = _restored(
        tmp_path / "behind", behind, [(first.trial_id, "TERMINATED"), (second_id, "PENDING")]
    )
    assert restored.next_trial() is None  # trial 1 holds the one slot until it ends
    restored.on_trial_complete(second_id)
    third = restored.next_trial()
    assert (third.trial_id, third.config) == (first.trial_id.replace("_00000", "_00002"), {"w": 2})
    restored.on_trial_complete(third.trial_id)
    assert restored.next_trial() is None and restored.is_finished()

    ahead = _grid_generator(tmp_path / "ahead")
    made = []
    for _ in range(3):
        made.append(ahead.next_trial())
        ahead.on_trial_complete(made[-1].trial_id)
    restored = _restored(tmp_path / "ahead", ahead, [(t.trial_id, "TERMINATED") for t in made[:2]])
    again = restored.next_trial()
    assert (again.trial_id, again.config) == (made[2].trial_id, {"w": 2})


# -- jobs/submit.py --retries ----------------------------------------------------------------


def test_submit_counts_as_lost_only_what_did_not_end_by_its_own_command():
    from ray.dashboard.modules.job.common import JobErrorType, JobInfo
    from ray.job_submission import JobStatus

    def info(status, error_type=None, code=None):
        return JobInfo(
            status=status, entrypoint="x", message="m", error_type=error_type, driver_exit_code=code
        )

    failed, command = JobStatus.FAILED, JobErrorType.JOB_ENTRYPOINT_COMMAND_ERROR
    lost = [
        None,  # the head answers but does not know the job: a replaced head
        info(failed, JobErrorType.JOB_SUPERVISOR_ACTOR_DIED),
        info(failed, JobErrorType.JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE),
        info(failed, command, -9),  # SIGKILL
        info(failed, command, 137),  # SIGKILL, through a shell
        info(failed, command, 143),  # SIGTERM: a drained node
    ]
    for ended in lost:
        assert submit.lost_because(ended), ended
    not_lost = [
        info(JobStatus.SUCCEEDED, code=0),
        info(JobStatus.STOPPED),
        info(failed, command, 2),  # bad input, a permanent storage error
        info(failed, command, 1),
        info(failed, JobErrorType.RUNTIME_ENV_SETUP_FAILURE),
        info(failed, JobErrorType.JOB_SUPERVISOR_ACTOR_UNSCHEDULABLE),
    ]
    for ended in not_lost:
        assert submit.lost_because(ended) is None, ended


def test_submit_retries_with_resume_auto_in_place_of_any_resume():
    auto = ["--resume", "auto"]
    assert submit.with_resume_auto("tune", ["--config", "c.yaml"]) == ["--config", "c.yaml", *auto]
    assert submit.with_resume_auto("tune", ["--resume", "--set", "a=b"]) == ["--set", "a=b", *auto]
    assert submit.with_resume_auto("train", ["--resume", "must", "--set", "a=b"]) == ["--set", "a=b", *auto]
    assert submit.with_resume_auto("train", ["--resume=auto", "--x"]) == ["--x", *auto]
    assert submit.with_resume_auto("pack", ["DEST", "--frames", "16"]) == ["DEST", "--frames", "16"]
    ns, args = submit.parse(["tune", "--address", "http://h:8265", "--retries", "2", "--", "--resume"])
    assert (ns.retries, ns.head_wait, args) == (2, 600, ["--resume"])
    made = subprocess.run(
        [
            "make",
            "-n",
            "-o",
            ".venv/.installed",
            "submit",
            "JOB=tune",
            "RAY_ADDRESS=http://h:8265",
            "RETRIES=2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert (
        "jobs/submit.py tune --address http://h:8265 --runtime-env jobs/runtime_env.yaml --retries 2 --"
        in (made.stdout)
    )


class HeadOnly(LocalCluster):
    """A one-node cluster (`ray start --head`, token auth): the drivers of jobs run on it."""

    def __enter__(self) -> "HeadOnly":
        self._start(
            [
                "--head",
                f"--port={self.gcs.rsplit(':', 1)[1]}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard.rsplit(':', 1)[1]}",
                f"--ray-client-server-port={free_port()}",
                f"--num-cpus={self.head_cpus}",
            ],
            "head",
            os.path.join(self.root, "head"),
        )
        self.wait_nodes(1)
        return self


# The job's command, standing in for `cg-ray train`: "kill" SIGKILLs its own driver unless it
# runs with --resume auto (then it succeeds); "fail" exits 2 as a command refusing its input does.
FAKE_JOB = (
    "import os, signal, sys; args = sys.argv[1:]; auto = args[-2:] == ['--resume', 'auto']; "
    "print('ran with --resume auto' if auto else 'first run', flush=True); "
    "sys.exit(0) if auto else sys.exit(2) if args[0] == 'fail' else os.kill(os.getpid(), signal.SIGKILL)"
)
SUBMIT_WITH_FAKE_JOB = (
    "import shlex, sys, submit, cg_ray.jobs.submit as code; fake = sys.argv.pop(1); "
    "code.entrypoint = lambda job, env, args: shlex.join([sys.executable, '-c', fake, *args]); "
    "sys.exit(submit.main(sys.argv[1:]))"
)


@pytest.mark.slow
def test_submit_runs_a_job_again_when_its_driver_is_killed_not_when_it_fails(tmp_path):
    """In processes of their own (Ray reads the auth mode once per process)."""
    runtime_env = tmp_path / "runtime_env.yaml"
    runtime_env.write_text(yaml.safe_dump({"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}}))

    def make_submit(head, mode: str) -> subprocess.CompletedProcess:
        own = ["train", "--address", head.dashboard, "--runtime-env", str(runtime_env), "--retries", "2"]
        return subprocess.run(
            [sys.executable, "-c", SUBMIT_WITH_FAKE_JOB, FAKE_JOB, *own, "--", mode],
            cwd=ROOT / "jobs",
            env=head.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    with HeadOnly(head_cpus=1, worker_cpus=0) as head:
        killed = make_submit(head, "kill")
        failed = make_submit(head, "fail")
    assert killed.returncode == 0, killed.stderr
    assert "the job was lost (its driver was killed (exit code" in killed.stderr
    assert "submitting it again with --resume auto (retry 1 of 2)" in killed.stderr
    assert "retry 2 of 2" not in killed.stderr
    assert "first run" in killed.stdout and "ran with --resume auto" in killed.stdout
    assert failed.returncode == 1 and ": FAILED" in failed.stderr
    assert "submitting it again" not in failed.stderr
