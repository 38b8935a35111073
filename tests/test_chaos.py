"""One training through everything that goes wrong at once, on a real two-node Ray cluster: the
object store behind tests/fault_proxy.py answers 10% of requests with S3's errors (the data and
the checkpoints live there), the MLflow tracking server is killed after epoch 1 and started again
later on the same port and store, and the worker node is lost mid-epoch (its raylet killed by
pid, a replacement node started as the autoscaler would). Nothing is lost: the command exits 0,
the run has every epoch's metrics once and in order, no clip was counted bad, and the last
checkpoint in the store is complete."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from fault_proxy import FaultProxy
from mlflow.tracking import MlflowClient
from mlflow_server import Server, kill_family, wait_for
from ray_cluster import LocalCluster
from test_jobs_cluster import _raylet_pid

from cg_ray import storage
from cg_ray.train.checkpoint import is_complete, read_checkpoint

pytestmark = pytest.mark.slow
DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
EPOCHS = 5


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(head_cpus=3, worker_cpus=3) as two_nodes:
        yield two_nodes


def test_a_faulty_store_a_lost_node_and_a_tracking_restart_in_one_run(cluster, s3, tiny_dataset, tmp_path):
    bucket = s3("chaos")
    data = f"{bucket}/data"
    fs, inner = storage.filesystem(data)
    pafs.copy_files(tiny_dataset, inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    server = Server(tmp_path / "mlflow")
    server.start()
    log = tmp_path / "train.log"
    sets = {
        "data.path": data,
        "train.num_workers": 2,
        "train.cpus_per_worker": 2,
        "train.epochs": EPOCHS,
        "train.batch_size": 4,
        "train.max_failures": 2,
        "train.keep_best": 1,
        "run.name": "chaos",
        "run.experiment": "chaos",
        "run.storage_path": f"{bucket}/runs",
        "run.tracking_uri": server.uri,
    }
    args = ["train", "--config", DEMO, "--metrics-out", str(tmp_path / "metrics.json")]
    args += [arg for key, value in sets.items() for arg in ("--set", f"{key}={value}")]
    with FaultProxy(os.environ["AWS_ENDPOINT_URL"], seed=11, rate=0.10) as proxy:
        env = dict(
            cluster.env,
            RAY_ADDRESS=cluster.gcs,
            AWS_ENDPOINT_URL=proxy.url,
            CG_RAY_PROGRESS="0",
            MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
            MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
            MLFLOW_HTTP_REQUEST_TIMEOUT="10",
            CG_RAY_TRACKING_RETRY_S="0.5",
            CG_RAY_TRACKING_RETRY_MAX_S="3",
            CG_RAY_TRACKING_WAIT_S="240",
        )
        with open(log, "wb") as out:
            driver = subprocess.Popen(
                [sys.executable, "-m", "cg_ray", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            text = lambda: log.read_text()  # noqa: E731
            wait_for(lambda: re.search(r"epoch 1/\d+: ", text()) or driver.poll() is not None, 600, "epoch 1")
            assert driver.poll() is None, text()[-3000:]
            server.stop()
            wait_for(lambda: re.search(r"epoch 2/\d+: ", text()) or driver.poll() is not None, 600, "epoch 2")
            time.sleep(0.2)  # into the next epoch
            os.kill(_raylet_pid(os.path.join(cluster.root, "worker")), signal.SIGKILL)
            assert driver.poll() is None, "the run ended before its node was lost"
            cluster._start(
                [f"--address={cluster.gcs}", "--num-cpus=3"],
                "replacement",
                os.path.join(cluster.root, "replacement"),
            )
            time.sleep(10)
            server.start()
            code = driver.wait(timeout=900)
            faults = proxy.stats()
        finally:
            kill_family(driver)
            server.stop()
    output = log.read_text()
    assert code == 0, output[-5000:]
    assert sum(v for k, v in faults.items() if k != "forwarded") >= 10, faults
    assert "tracking sync" not in output  # everything reached the server once it was back

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["bad_clips"] == 0 and metrics["train_clips"] == 48 and metrics["epoch"] == EPOCHS - 1
    assert (
        is_complete(metrics["checkpoint"]) and read_checkpoint(metrics["checkpoint"])["epoch"] == EPOCHS - 1
    )
    server.start()
    try:
        client = MlflowClient(server.uri)
        (run,) = client.search_runs([client.get_experiment_by_name("chaos").experiment_id])
        assert run.info.status == "FINISHED"
        for key in ("city_top1", "train_loss", "bad_clips"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == list(range(EPOCHS)), (key, steps)  # once each, in order
        assert all(m.value == 0 for m in client.get_metric_history(run.info.run_id, "bad_clips"))
        assert client.get_metric_history(run.info.run_id, "resumed_at_epoch"), "no restart was recorded"
    finally:
        server.stop()
