"""Real multi-node runs on one machine, on one cluster for the module: a Ray head and a second
node started with `ray start` (3 CPUs each, token auth).

- `make submit` of a failing job exits non-zero, and a shell without any token gets one line
  saying what to set.
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
    # make submit: follows the job and fails with it (here: a config file that is not there).
    made = _make_submit(
        cluster.env,
        "CONFIG=/nonexistent/search.yaml",
        f"RAY_ADDRESS={cluster.dashboard}",
        "RUNTIME_ENV=jobs/runtime_env.dev.yaml",
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stdout, stderr = made.communicate(timeout=400)
    assert made.returncode != 0
    assert "config file '/nonexistent/search.yaml' does not exist" in stdout
    assert ": FAILED" in stderr

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
    assert "_config/demo.yaml" in submitted and ": SUCCEEDED" in submitted
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
