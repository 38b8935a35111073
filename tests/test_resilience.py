"""Training you can trust: determinism, exact resume after the driver dies, and a real MLflow
server with the model registry. (Recovery when a worker or its node dies, with best-k
retention, is tests/test_jobs_cluster.py's lost-node job.)"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from cg_ray.cli import main
from cg_ray.config import load_config
from cg_ray.runs import train
from cg_ray.train.checkpoint import is_complete

pytestmark = pytest.mark.slow
DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
COMPARED = [
    "city_top1",
    "city_top5",
    "state_top1",
    "country_top1",
    "continent_top1",
    "train_loss",
    "train_city",
    "train_scene",
    "train_tla",
]


def overrides(data, out, name, **extra):
    values = {
        "data.path": data,
        "train.epochs": 2,
        "train.num_workers": 1,
        "train.batch_size": 4,
        "run.storage_path": f"{out}/runs",
        "run.name": name,
        "run.experiment": "resilience",
        "run.tracking_uri": f"sqlite:///{out}/mlflow.db",
        **extra,
    }
    return [f"{k}={v}" for k, v in values.items()]


def wait_for(predicate, timeout, what, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def checkpoints(run_dir):
    if not os.path.isdir(run_dir):
        return []
    # Complete ones: Ray Train copies a reported checkpoint into the run folder file by file.
    return sorted(p for p in Path(run_dir).glob("checkpoint_*") if is_complete(str(p)))


def history(uri, run_id, key="city_top1"):
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("resilience")


@pytest.fixture(scope="module")
def killed(tiny_dataset, ray_session, out):
    """The baseline's config run by `cg-ray train` joined to a running Ray (as a job's driver on
    a cluster is), killed with SIGKILL after its first checkpoint, then resumed by the same
    command: (checkpoints there at the kill, the resumed run's result, its arguments)."""
    import ray

    args = overrides(tiny_dataset, out, "killed")
    env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address, CG_RAY_PROGRESS="0")
    cmd = [sys.executable, "-m", "cg_ray", "train", "--config", DEMO]
    for item in args:
        cmd += ["--set", item]
    driver = subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    run_dir = f"{out}/runs/killed"
    try:
        wait_for(lambda: checkpoints(run_dir) or driver.poll() is not None, 240, "a checkpoint", every=0.02)
        assert driver.poll() is None, "the driver ended before it could be killed"
        family = [driver.pid] + [p.pid for p in psutil.Process(driver.pid).children(recursive=True)]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and any process it started
    driver.wait()
    # Anything of that driver that left its process group: stopped by pid, and waited for.
    leftovers = [psutil.Process(pid) for pid in family if psutil.pid_exists(pid)]
    for proc in leftovers:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(leftovers, timeout=30)
    # Killed after its first checkpoint; an epoch of the tiny world is under a second, so the
    # second may have landed too (a resume then trains nothing and reports the last epoch again).
    kept = len(checkpoints(run_dir))
    assert kept in (1, 2)
    return kept, train(load_config(DEMO, args)), args


def test_same_seed_same_metrics(baseline, killed, out):
    """The baseline's config trained again from scratch, in another process and tracked in
    another store (where a run is logged changes nothing of it): its first epoch, computed
    before the kill (and logged then, or from its checkpoint by the resume), has the baseline's
    metrics, bit for bit."""
    _, resumed, _ = killed
    again = MlflowClient(f"sqlite:///{out}/mlflow.db")
    first = MlflowClient(baseline["tracking"])
    for key in COMPARED:
        ours = [m.value for m in again.get_metric_history(resumed["run_id"], key) if m.step == 0]
        theirs = [m.value for m in first.get_metric_history(baseline["run_id"], key) if m.step == 0]
        assert len(ours) == len(theirs) == 1 and ours == theirs, key


def test_driver_killed_after_first_checkpoint_then_resumed(baseline, killed, out):
    """Ray ends the killed driver's actors with it; the same command resumes the run in the
    same MLflow run and ends where the uninterrupted baseline ends."""
    kept, resumed, args = killed
    uri = f"sqlite:///{out}/mlflow.db"
    runs = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name("resilience").experiment_id],
        filter_string="attributes.run_name = 'killed'",
    )
    assert len(runs) == 1 and runs[0].info.run_id == resumed["run_id"]
    assert runs[0].info.status == "FINISHED"
    assert [step for step, _ in history(uri, resumed["run_id"])] == [0, 1]
    assert resumed["epoch"] == 1
    assert [s for s, _ in history(uri, resumed["run_id"], "resumed_at_epoch")] == [kept]
    # Exact resume: the interrupted run ends where the uninterrupted one does.
    for key in COMPARED:
        assert resumed[key] == pytest.approx(baseline[key], rel=1e-6, abs=1e-6), key
    with pytest.raises(Exception, match="different config.*optim.lr"):
        train(load_config(DEMO, args + ["optim.lr=0.01", "train.epochs=3"]))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(out):
    tmp_path = out / "server"
    tmp_path.mkdir()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path}/server.db",
            "--default-artifact-root",
            f"{tmp_path}/artifacts",
            "--workers",
            "1",
        ],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import urllib.request

    def healthy():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 240, "mlflow server")
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its gunicorn/uvicorn workers
        try:
            server.wait(timeout=3)  # uvicorn waits ~15 s for the client's idle keep-alive
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


SECRET = "Zq8-super-secret-Xv2"


@pytest.fixture(scope="module")
def baseline(mlflow_server, tiny_dataset, ray_session, out):
    """The baseline: the tiny world's run, tracked on the MLflow server through a URI with a
    user and a password, with a secret in the environment, and registered as `geo`."""
    uri = mlflow_server.replace("http://", "http://alice:pa55-w0rd-99@")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
        cfg = load_config(
            DEMO,
            overrides(tiny_dataset, out, "baseline") + [f"run.tracking_uri={uri}", "run.register_as=geo"],
        )
        return {**train(cfg), "tracking": mlflow_server}


def test_mlflow_server_registry_and_no_secrets(mlflow_server, baseline, tiny_dataset, tmp_path, monkeypatch):
    result = baseline
    assert result["registered_model"] == "models:/geo/1"

    client = MlflowClient(mlflow_server)
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED"
    assert any(k.startswith("system/") for k in run.data.metrics), "no system metrics logged"
    recorded = json.dumps(run.data.params) + json.dumps(run.data.tags)
    local = Path(client.download_artifacts(result["run_id"], "", str(tmp_path / "dl")))
    blobs = [p.read_bytes() for p in local.rglob("*") if p.is_file()]
    for needle in (SECRET, "pa55-w0rd-99", "alice"):
        assert needle not in recorded
        assert not any(needle.encode() in blob for blob in blobs), needle
    assert run.data.params["run.tracking_uri"].startswith("http://***@")

    version = client.get_model_version("geo", "1")
    assert version.run_id == result["run_id"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    metrics_out = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                "models:/geo/1",
                "--data",
                tiny_dataset,
                "--metrics-out",
                str(metrics_out),
            ]
        )
        == 0
    )
    assert json.loads(metrics_out.read_text())["num_clips"] == 12
