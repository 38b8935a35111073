"""A worker node lost mid-epoch (a spot node reclaimed: its raylet killed by pid) on a real
two-node cluster: Ray Train restarts the worker group (train.max_failures: 1) on the nodes that
remain plus the one that replaces it (started here as the autoscaler would), from the latest
checkpoint, in the same MLflow run, and every epoch is logged exactly once.

2 workers of 2 CPUs on two 3-CPU nodes: one worker on each, so the kill always hits training;
the head alone cannot host both again, so the run waits (saying so) for the new node.
The epoch time lost is printed (run with -s)."""

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from ray_cluster import LocalCluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
EPOCHS = 4


def _raylet_pid(node_dir: str) -> int:
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if cmd and cmd[0].endswith("raylet") and any(node_dir in part for part in cmd):
            return proc.info["pid"]
    raise LookupError(f"no raylet of {node_dir}")


def test_a_lost_worker_node_costs_at_most_the_epoch_in_progress(tiny_dataset, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    with LocalCluster(head_cpus=3, worker_cpus=3) as cluster:
        args = [
            "--config",
            "configs/demo.yaml",
            "--set",
            f"data.path={tiny_dataset}",
            "--set",
            "train.num_workers=2",
            "--set",
            "train.cpus_per_worker=2",
            "--set",
            f"train.epochs={EPOCHS}",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.max_failures=1",
            "--set",
            f"run.storage_path={tmp_path}/runs",
            "--set",
            "run.name=lost-node",
            "--set",
            f"run.tracking_uri={uri}",
            "--metrics-out",
            f"{tmp_path}/metrics.json",
        ]
        out = cluster.ray(
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--no-wait",
            "--submission-id",
            "lost-node",
            "--runtime-env",
            "jobs/runtime_env.dev.yaml",
            "--",
            "python",
            "jobs/train.py",
            *args,
            cwd=str(ROOT),
        )
        assert out.returncode == 0, out.stderr
        # Wait for epoch 1 to be logged, then kill the worker node while epoch 2 runs.
        run_id, deadline = None, time.time() + 400
        while time.time() < deadline:
            experiment = client.get_experiment_by_name("cg_ray-demo")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
            if runs and len(client.get_metric_history(runs[0].info.run_id, "city_top1")) >= 2:
                run_id = runs[0].info.run_id
                break
            time.sleep(0.5)
        assert run_id, cluster.job_logs("lost-node")[-3000:]
        time.sleep(0.2)  # into the next epoch (an epoch of the tiny world is about a second)
        os.kill(_raylet_pid(os.path.join(cluster.root, "worker")), signal.SIGKILL)
        killed_at = time.time()
        cluster._start(
            [f"--address={cluster.gcs}", "--num-cpus=3"],
            "replacement",
            os.path.join(cluster.root, "replacement"),
        )
        status = cluster.wait_job("lost-node", timeout=600)
        logs = cluster.job_logs("lost-node")
    assert status == "SUCCEEDED", logs[-4000:]
    experiment = client.get_experiment_by_name("cg_ray-demo")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    history = client.get_metric_history(run_id, "city_top1")
    assert sorted(m.step for m in history) == list(range(EPOCHS))  # none repeated, none missing
    assert json.loads((tmp_path / "metrics.json").read_text())["epoch"] == EPOCHS - 1
    stamps = {m.step: m.timestamp / 1000 for m in history}
    normal = [
        stamps[e + 1] - stamps[e] for e in range(EPOCHS - 1) if not stamps[e] <= killed_at <= stamps[e + 1]
    ]
    (hit,) = [e for e in range(EPOCHS - 1) if stamps[e] <= killed_at <= stamps[e + 1]]
    lost = stamps[hit + 1] - stamps[hit] - (sum(normal) / len(normal) if normal else 0)
    print(
        f"\nFIGURE worker node killed {killed_at - stamps[hit]:.1f} s into epoch {hit + 1}: "
        f"that epoch took {stamps[hit + 1] - stamps[hit]:.1f} s against "
        f"{sum(normal) / max(len(normal), 1):.1f} s for the others: {lost:.1f} s lost "
        f"(the epoch's work so far, the restart, waiting for the replacement node)"
    )
