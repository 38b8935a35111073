"""A real multi-node run on one machine: a Ray head and a second node started with `ray start`
(3 CPUs each, token auth), the training job submitted with `ray job submit` to the head's job
server and followed with `ray job status`/`ray job logs`; its two workers (2 CPUs each) cannot
share a node, so they must run on both. Then `make submit` of a failing job exits non-zero, the
README's `make submit JOB=train CONFIG=configs/demo.yaml` succeeds from a shell without
RAY_AUTH_MODE, and a shell without any token gets one line saying what to set."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from ray_cluster import LocalCluster

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


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
        "--limit",
        "1000",
    )
    assert out.returncode == 0, out.stderr
    return {actor["node_id"] for actor in json.loads(out.stdout)}


def test_training_job_runs_on_both_nodes(tiny_dataset, tmp_path):
    with LocalCluster(head_cpus=3, worker_cpus=3) as cluster:
        node_ids = {node["node_id"] for node in cluster.alive_nodes()}
        assert len(node_ids) == 2
        job_id = "cg-ray-train-two-nodes"
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
            "train.epochs=1",
            "--set",
            "train.batch_size=8",
            "--set",
            f"run.storage_path={tmp_path}/runs",
            "--set",
            "run.name=two-nodes",
            "--set",
            f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            "--metrics-out",
            f"{tmp_path}/metrics.json",
        ]
        submitted = cluster.ray(
            "job",
            "submit",
            "--address",
            cluster.dashboard,
            "--no-wait",
            "--submission-id",
            job_id,
            "--runtime-env",
            "jobs/runtime_env.dev.yaml",
            "--",
            "python",
            "jobs/train.py",
            *args,
            cwd=str(ROOT),
        )
        assert submitted.returncode == 0, submitted.stderr
        status = cluster.wait_job(job_id)
        logs = cluster.job_logs(job_id)
        assert status == "SUCCEEDED", logs[-3000:]
        assert "epoch 0: " in logs and "city_top1=" in logs
        metrics = json.loads((tmp_path / "metrics.json").read_text())
        assert metrics["epoch"] == 0 and Path(metrics["checkpoint"]).is_dir()
        assert _train_worker_nodes(cluster) == node_ids

        # make submit: follows the job and fails with it (here: a config file that is not there).
        made = subprocess.run(
            [
                "make",
                "-s",
                "-o",
                ".venv/.installed",
                "submit",
                "JOB=train",
                "CONFIG=/nonexistent/search.yaml",
                f"RAY_ADDRESS={cluster.dashboard}",
                "RUNTIME_ENV=jobs/runtime_env.dev.yaml",
            ],
            cwd=ROOT,
            env=cluster.env,
            text=True,
            capture_output=True,
            timeout=300,
        )
        assert made.returncode != 0
        assert "config file '/nonexistent/search.yaml' does not exist" in made.stdout
        assert ": FAILED" in made.stderr

        # The README's example as written: the default runtime_env (only jobs/ travels), from a
        # shell without RAY_AUTH_MODE (the token found as Ray's CLI finds it), CONFIG travels.
        shell = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
        readme = subprocess.run(
            [
                "make",
                "-s",
                "-o",
                ".venv/.installed",
                "submit",
                "JOB=train",
                "CONFIG=configs/demo.yaml",
                f"RAY_ADDRESS={cluster.dashboard}",
                f"ARGS=--set data.path={tiny_dataset} --set train.epochs=1 --set train.num_workers=1 "
                f"--set run.storage_path={tmp_path}/runs2 --set run.name=readme "
                f"--set run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            ],
            cwd=ROOT,
            env=shell,
            text=True,
            capture_output=True,
            timeout=400,
        )
        assert readme.returncode == 0, readme.stdout[-3000:] + readme.stderr[-2000:]
        assert "_config/demo.yaml" in readme.stderr and ": SUCCEEDED" in readme.stderr

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
