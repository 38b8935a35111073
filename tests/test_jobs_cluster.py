"""Real multi-node runs on one machine, on one cluster for the module: a Ray head and a second
node started with `ray start` (3 CPUs each, token auth).

- `make submit` of a failing job exits non-zero with its last lines, `cg-ray jobs status` shows
  them, and a shell without any token gets one line saying what to set.
- docs/guides/clusters-and-jobs.md's walk-through, as written (the cluster's address for the
  guide's 127.0.0.1:8265, a shell without RAY_AUTH_MODE): `cg-ray submit train` with the demo
  config follows the job to SUCCEEDED; `--no-wait` returns an id that `cg-ray jobs status`,
  `logs` and `stop` take; `cg-ray jobs list` shows both jobs, the finished one with its MLflow
  run and last epoch line. Ctrl-C detaches from a followed job, which goes on.
- Last (it kills a node): the README's `make submit JOB=train CONFIG=configs/demo.yaml` of a
  training job, as written (the default runtime_env, the config staged beside jobs/ and the
  staged copy removed once uploaded, a shell without RAY_AUTH_MODE), following the job to
  SUCCEEDED. Its two workers (2 CPUs each) cannot share a 3-CPU node, so they run on both. Then
  the worker node is lost mid-epoch (a spot node reclaimed: its raylet killed by pid). Ray
  Train restarts the worker group (train.max_failures: 1) on the nodes that remain plus the one
  that replaces it (started here as the autoscaler would), from the latest checkpoint, in the
  same MLflow run, and every epoch is logged exactly once, keeping the best checkpoint and
  the latest (train.keep_best: 1); the head alone cannot host both workers again, so the run
  waits (saying so) for the new node. A worker killed alone takes the same path. The
  epoch time lost is printed (run with -s)."""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from ray_cluster import LocalCluster

from cg_ray.train.checkpoint import is_complete, read_checkpoint

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 5
CG_RAY = os.path.join(os.path.dirname(sys.executable), "cg-ray")
GUIDE = ROOT / "docs" / "guides" / "clusters-and-jobs.md"
GUIDE_ADDRESS = "http://127.0.0.1:8265"


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(head_cpus=3, worker_cpus=3) as two_nodes:
        yield two_nodes


def _train_worker_nodes(cluster) -> set[str]:
    out = cluster.ray(
        "list",
        "actors",
        "--address",
        cluster.dashboard,
        "--detail",
        "--format",
        "json",
        "--filter",
        "class_name=RayTrainWorker",
        "--filter",
        "state=ALIVE",
        "--limit",
        "1000",
    )
    assert out.returncode == 0, out.stderr
    return {actor["node_id"] for actor in json.loads(out.stdout)}


def _make_submit(env: dict, *variables: str, **popen) -> subprocess.Popen:
    """`make submit JOB=train VARIABLES...` from the checkout, as a user types it (-o: the venv
    counts as installed, so a test installs nothing)."""
    command = ["make", "-s", "-o", ".venv/.installed", "submit", "JOB=train", *variables]
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, **popen)


def test_make_submit_fails_with_its_job_and_asks_for_a_missing_token(cluster, tmp_path):
    # make submit: follows the job and fails with it (here: a dataset that is not there), its
    # last lines the last printed; `cg-ray jobs status` shows them too.
    made = _make_submit(
        cluster.env,
        "CONFIG=configs/demo.yaml",
        f"RAY_ADDRESS={cluster.dashboard}",
        "RUNTIME_ENV=jobs/runtime_env.dev.yaml",
        "ARGS=--set data.path=/nonexistent/data",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = made.communicate(timeout=400)
    assert made.returncode != 0, stdout[-2000:] + stderr[-2000:]  # make: 2 for a failed recipe
    said = "'/nonexistent/data' is not a prepared dataset"
    assert said in stdout.strip().splitlines()[-1]
    assert ": FAILED" in stderr
    job_id = re.search(r"submitted (\S+):", stderr).group(1)
    status = _cg_ray(cluster.env, "jobs", "status", job_id, "--address", cluster.dashboard)
    assert status.returncode == 0 and f"job {job_id}: FAILED" in status.stdout
    assert "last lines of its log:" in status.stdout and said in status.stdout

    # No token anywhere (no RAY_AUTH_*, an empty home): one line saying what to set.
    bare = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    bare["HOME"] = str(tmp_path)
    refused = subprocess.run(
        [
            sys.executable,
            "jobs/submit.py",
            "train",
            "--address",
            cluster.dashboard,
            "--",
            "--config",
            "configs/demo.yaml",
        ],
        cwd=ROOT,
        env=bare,
        text=True,
        capture_output=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "wants a Ray auth token" in refused.stderr and "RAY_AUTH_TOKEN=" in refused.stderr


def _cg_ray(env: dict, *args: str, cwd=ROOT, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CG_RAY, *args], cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout)


def _guide_block(first: str) -> list[str]:
    """The lines of the guide's ```bash block that has a line starting with `first`."""
    for block in re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), flags=re.S):
        lines = block.replace("\\\n", " ").strip().splitlines()
        if any(line.startswith(first) for line in lines):
            return lines
    raise AssertionError(f"{GUIDE.name} has no bash block with a line starting {first!r}")


def _sections(output: str) -> dict[str, str]:
    """What each command of a script run by _walk printed, by the command's line."""
    parts = re.split(r"^>>> (.*)$", output, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _walk(lines: list[str], cluster, cwd, env: dict) -> tuple[int, dict[str, str]]:
    """Run the guide's lines as one bash script (the cluster's address for the guide's)."""
    script = ["set -e", "exec 2>&1"]
    for line in lines:
        script += [f"echo {shlex.quote('>>> ' + line)}", line.replace(GUIDE_ADDRESS, cluster.dashboard)]
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)], cwd=cwd, env=env, text=True, capture_output=True, timeout=900
    )
    return done.returncode, _sections(done.stdout)


def test_a_job_from_start_to_end_as_the_guide_shows(cluster, tiny_dataset, tmp_path):
    # The guide's folder: its config and the demo's prepared data; a user's shell (the token
    # found as Ray's CLI finds it, no RAY_AUTH_MODE).
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "demo.yaml", tmp_path / "configs")
    (tmp_path / "demo_out").mkdir()
    os.symlink(tiny_dataset, tmp_path / "demo_out" / "data")
    shell = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "MLFLOW_TRACKING_URI")}
    first = _guide_block("export RAY_ADDRESS")
    assert first[0].startswith("ray start --head")  # the cluster this test started stands in
    code, out = _walk(first[1:] + _guide_block("JOB=$(cg-ray submit"), cluster, tmp_path, shell)
    assert code == 0, "\n".join(f">>> {k}\n{v[-3000:]}" for k, v in out.items())
    _, submitted, _, listed, status, _, stopped = out.values()
    assert "_files/demo.yaml" in submitted and "epoch 2/2: " in submitted
    first_id = re.search(r"job (\S+): SUCCEEDED", submitted).group(1)
    long_id = re.search(r"submitted (\S+):", out[next(k for k in out if k.startswith("JOB="))]).group(1)
    # Both jobs listed, newest first; the finished one with its MLflow run and last epoch line.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cg_ray-demo")
    run = next(r for r in client.search_runs([experiment.experiment_id]) if r.info.run_name == "demo")
    assert listed.index(long_id) < listed.index(first_id)
    assert re.search(rf"{first_id}\s+SUCCEEDED .*cg-ray train --config configs/demo.yaml", listed)
    assert f"MLflow run {run.info.run_id}  epoch 2/2: train_loss=" in listed
    assert re.search(rf"job {long_id}: (PENDING|RUNNING)", status)
    assert f"job {long_id}: STOPPED" in stopped
    # logs --follow: the job's log to its end, its outcome as exit status.
    followed = _cg_ray(shell, "jobs", "logs", first_id, "--follow", "--address", cluster.dashboard)
    assert followed.returncode == 0 and "epoch 2/2: " in followed.stdout
    assert f"job {first_id}: SUCCEEDED" in followed.stderr
    followed = _cg_ray(shell, "jobs", "logs", long_id, "--follow", "--address", cluster.dashboard)
    assert followed.returncode == 1 and f"job {long_id}: STOPPED" in followed.stderr
    unknown = _cg_ray(shell, "jobs", "status", "raysubmit_nope", "--address", cluster.dashboard)
    assert unknown.returncode == 2 and "no job raysubmit_nope on the cluster" in unknown.stderr


def test_ctrl_c_detaches_and_the_job_goes_on(cluster, tiny_dataset, tmp_path):
    follow = subprocess.Popen(
        [CG_RAY, "submit", "train", "--config", "configs/demo.yaml", "--address", cluster.dashboard]
        + ["--set", f"data.path={tiny_dataset}", f"run.storage_path={tmp_path}/runs", "train.epochs=30"],
        cwd=ROOT,
        env=cluster.env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # As at a terminal: a shell's background job (pytest under `nohup ... &`, say) passes on
        # SIGINT ignored, and Python then leaves Ctrl-C ignored too.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        job_id = next(m.group(1) for line in follow.stderr if (m := re.search(r"submitted (\S+):", line)))
        follow.send_signal(signal.SIGINT)
        try:
            rest = follow.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            follow.kill()
            raise AssertionError(
                f"cg-ray submit went on 60 s after Ctrl-C:\n{follow.communicate()[1]}"
            ) from None
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 130
    where = f"--address {cluster.dashboard}"
    assert (
        f"submit: detached; job {job_id} goes on: follow it with `cg-ray jobs logs {job_id} --follow "
        f"{where}`, stop it with `cg-ray jobs stop {job_id} {where}`"
    ) in rest
    assert cluster.job_status(job_id) in ("PENDING", "RUNNING")
    stopped = _cg_ray(cluster.env, "jobs", "stop", job_id, "--address", cluster.dashboard)
    assert stopped.returncode == 0 and f"job {job_id}: STOPPED" in stopped.stdout


def _raylet_pid(node_dir: str) -> int:
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("raylet") and any(node_dir in part for part in cmd):
            return proc.info["pid"]
    raise LookupError(f"no raylet of {node_dir}")


def _logged_epochs(client) -> tuple[str | None, int]:
    """The run's id and how many epochs it has logged so far (None, 0 before it starts)."""
    experiment = client.get_experiment_by_name("cg_ray-demo")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    if not runs:
        return None, 0
    return runs[0].info.run_id, len(client.get_metric_history(runs[0].info.run_id, "city_top1"))


def _wait_for_epochs(client, count: int, tmp_path, timeout: float = 400) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        run_id, logged = _logged_epochs(client)
        if logged >= count:
            return run_id
        time.sleep(0.2)
    raise AssertionError(
        f"epoch {count} was not logged in {timeout:.0f} s:\n"
        + (tmp_path / "out.log").read_text()[-3000:]
        + (tmp_path / "err.log").read_text()
    )


def _lose_a_node_mid_run(cluster, client, made, tmp_path, node_ids) -> tuple[str, float]:
    """See a worker on each node once epoch 1 is logged, kill the worker node as soon as epoch 2
    is (the slow `ray list actors` done before, so on a loaded machine the kill still lands with
    epochs to go), start its replacement (as the autoscaler would) and wait for the job: (the
    run's id, when the node was killed)."""
    _wait_for_epochs(client, 1, tmp_path)
    assert _train_worker_nodes(cluster) == node_ids  # one worker on each node
    run_id = _wait_for_epochs(client, 2, tmp_path)
    time.sleep(0.2)  # into the next epoch (an epoch here takes about 3 s)
    os.kill(_raylet_pid(os.path.join(cluster.root, "worker")), signal.SIGKILL)
    killed_at = time.time()
    logged = _logged_epochs(client)[1]
    assert logged < EPOCHS, f"the run had logged all {EPOCHS} epochs before its node was lost"
    cluster._start(
        [f"--address={cluster.gcs}", "--num-cpus=3"],
        "replacement",
        os.path.join(cluster.root, "replacement"),
    )
    made.wait(timeout=600)
    return run_id, killed_at


def test_a_training_job_runs_on_both_nodes_and_a_lost_node_costs_at_most_its_epoch(
    cluster, tiny_dataset, tmp_path
):
    node_ids = {node["node_id"] for node in cluster.alive_nodes()}
    assert len(node_ids) == 2
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    sets = {
        "data.path": tiny_dataset,
        "train.num_workers": 2,
        "train.cpus_per_worker": 2,
        "train.epochs": EPOCHS,
        "train.batch_size": 4,
        "train.max_failures": 1,
        "train.keep_best": 1,
        "run.name": "lost-node",
        "run.storage_path": f"{tmp_path}/runs",
        "run.tracking_uri": uri,
    }
    # The README's `make submit` as written: the default runtime_env (only jobs/ travels, with
    # CONFIG staged beside it), from a shell without RAY_AUTH_MODE (the token found as Ray's CLI
    # finds it); it follows the job to its end.
    shell = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    shell["TMPDIR"] = str(tmp_path / "tmp")  # where submit stages the copy it uploads
    (tmp_path / "tmp").mkdir()
    args = " ".join(f"--set {key}={value}" for key, value in sets.items())
    with open(tmp_path / "out.log", "w") as out, open(tmp_path / "err.log", "w") as err:
        made = _make_submit(
            shell,
            "CONFIG=configs/demo.yaml",
            f"RAY_ADDRESS={cluster.dashboard}",
            f"ARGS={args} --metrics-out {tmp_path}/metrics.json",
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        run_id, killed_at = _lose_a_node_mid_run(cluster, client, made, tmp_path, node_ids)
    finally:
        if made.poll() is None:
            os.killpg(made.pid, signal.SIGKILL)
    logs, submitted = (tmp_path / "out.log").read_text(), (tmp_path / "err.log").read_text()
    assert made.returncode == 0, logs[-4000:] + submitted[-2000:]
    assert "_files/demo.yaml" in submitted and ": SUCCEEDED" in submitted
    assert not list((tmp_path / "tmp").glob("cg-ray-job-*"))  # the staged copy went once uploaded
    experiment = client.get_experiment_by_name("cg_ray-demo")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    history = client.get_metric_history(run_id, "city_top1")
    assert sorted(m.step for m in history) == list(range(EPOCHS))  # none repeated, none missing
    assert f"epoch {EPOCHS}/{EPOCHS}: " in logs and "city_top1=" in logs
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epoch"] == EPOCHS - 1 and Path(metrics["checkpoint"]).is_dir()
    assert client.get_metric_history(run_id, "resumed_at_epoch"), "no restart was recorded"
    # Best-k retention across the restart (keep_best 1): the best checkpoint by city_top1 and the
    # latest, nothing else.
    folders = [str(p) for p in (tmp_path / "runs" / "lost-node").glob("checkpoint_*") if is_complete(str(p))]
    kept = {read_checkpoint(folder)["epoch"] for folder in folders}
    per_epoch = {m.step: m.value for m in history}
    assert EPOCHS - 1 in kept and len(kept) == len(folders) <= 2, folders
    assert max(per_epoch[e] for e in kept) == max(per_epoch.values())
    stamps = [m.timestamp / 1000 for m in sorted(history, key=lambda m: m.step)]
    # The epochs logged after the kill carry its cost (the one it hit, or the next when the hit
    # one was already being logged); those logged before it set the pace.
    first_after = next(e for e in range(EPOCHS) if stamps[e] > killed_at)
    pace = (stamps[first_after - 1] - stamps[0]) / (first_after - 1)
    after = stamps[-1] - stamps[first_after - 1]
    print(
        f"\nFIGURE worker node killed {killed_at - stamps[first_after - 1]:.1f} s after epoch "
        f"{first_after - 1} was logged: epochs {first_after}-{EPOCHS - 1} took {after:.1f} s against "
        f"{pace:.1f} s each before: {after - (EPOCHS - first_after) * pace:.1f} s lost (the "
        f"epoch's work so far, the restart, waiting for the replacement node)"
    )
