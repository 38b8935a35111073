"""A tracking outage never kills training. A real `mlflow server` (sqlite store, local artifacts)
is stopped right after the first epoch of `cg-ray train` (4 epochs) and of `cg-ray tune` (3
trials), with MLflow's own client retries cut to seconds, as an outage longer than its default
budget: started again 45 s later on the same port and store, the run (or the search's parent and
child runs) ends complete there; never started again, the command still exits 0, says in one line
how to replay the records, and `cg-ray tracking sync` fills a fresh server with the whole run.

Each command runs as a user runs it: its own process, its own local Ray (its own RAY_TMPDIR)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import Server, kill_family, wait_for
from tmpdirs import short_tmpdir

from cg_ray.cli import main
from cg_ray.train.checkpoint import is_complete, read_checkpoint

pytestmark = pytest.mark.slow
DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
OUTAGE_S = 45
ARTIFACTS = {"config.yaml", "taxonomy.json", "learning_curves.png", "checkpoint"}


@pytest.fixture
def servers(tmp_path):
    made: list[Server] = []

    def make(name: str) -> Server:
        made.append(Server(tmp_path / name))
        made[-1].start()
        return made[-1]

    yield make
    for server in made:
        server.stop()


def command_env(wait_s: float) -> dict:
    """MLflow's client gives up on a request within seconds; ours retries every ~3 s; a worker
    hands its records over after 3 s, a command waits wait_s for the server at its end."""
    env = dict(
        os.environ,
        RAY_TMPDIR=short_tmpdir("cgr-to-"),
        CG_RAY_PROGRESS="0",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="2",
        MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
        MLFLOW_HTTP_REQUEST_TIMEOUT="10",
        CG_RAY_TRACKING_RETRY_S="0.5",
        CG_RAY_TRACKING_RETRY_MAX_S="3",
        CG_RAY_TRACKING_HANDOFF_S="3",
        CG_RAY_TRACKING_WAIT_S=str(wait_s),
    )
    env.pop("RAY_ADDRESS", None)
    return env


def run_with_outage(args, env, log: Path, server: Server, after: str, back_after: float | None) -> int:
    """`cg-ray ARGS`; the server stopped as soon as a line matching `after` is out, started
    again back_after seconds later (None: never); the command's exit status."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cg_ray", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: re.search(after, log.read_text()) or proc.poll() is not None, 400, after, 0.05)
        assert proc.poll() is None, f"the command ended before the outage:\n{log.read_text()[-3000:]}"
        server.stop()
        if back_after is not None:
            time.sleep(back_after)
            server.start()
        return proc.wait(timeout=600)
    finally:
        kill_family(proc)  # a failed test: the command and the Ray it started


def train_args(data: str, out: Path, name: str, uri: str) -> list[str]:
    values = {
        "data.path": data,
        "train.epochs": 4,
        "train.num_workers": 1,
        "train.batch_size": 4,
        "run.storage_path": f"{out}/runs",
        "run.name": name,
        "run.experiment": "outage",
        "run.tracking_uri": uri,
    }
    return ["train", "--config", DEMO, "--metrics-out", str(out / f"{name}.json"), "--register-as", name] + [
        arg for k, v in values.items() for arg in ("--set", f"{k}={v}")
    ]


def lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if text in line]


def assert_complete_run(uri: str, run, metrics: dict, epochs: int = 4) -> None:
    """Every epoch's metrics in order, the final ones as the command reported them, system
    metrics, the run's artifacts, FINISHED."""
    client = MlflowClient(uri)
    run_id = run.info.run_id
    assert run.info.status == "FINISHED"
    for key in ("city_top1", "train_loss", "country_top1"):
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert steps == list(range(epochs)), (key, steps)
    assert run.data.metrics["city_top1"] == pytest.approx(metrics["city_top1"])
    assert any(key.startswith("system/") for key in run.data.metrics), sorted(run.data.metrics)
    assert {a.path for a in client.list_artifacts(run_id)} >= ARTIFACTS
    assert client.list_artifacts(run_id, "checkpoint"), "the checkpoint's files"


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_train_goes_on_while_the_server_is_away_and_delivers_in_order_when_it_is_back(
    tiny_dataset, servers, tmp_path
):
    server = servers("server")
    log = tmp_path / "train.log"
    args = train_args(tiny_dataset, tmp_path, "back", server.uri)
    code = run_with_outage(args, command_env(wait_s=240), log, server, r"epoch 1/4: ", OUTAGE_S)
    assert code == 0, log.read_text()[-4000:]

    # One line when it went away (the worker's; its driver, who took its records over, knew),
    # one when it came back, with how many records had waited; nothing left for a sync.
    assert len(lines(log, f"MLflow tracking server {server.uri} is unreachable")) == 1, log.read_text()
    (back,) = lines(log, f"MLflow tracking server {server.uri} is back: ")
    assert int(re.search(r"delivering, in order, the (\d+) tracking records that waited", back).group(1)) > 0
    assert not lines(log, "tracking sync")
    (run,) = runs_of(server.uri, "outage")
    metrics = json.loads((tmp_path / "back.json").read_text())
    assert_complete_run(server.uri, run, metrics)
    assert metrics["registered_model"] == "models:/back/1"  # --register-as, once it was back
    assert MlflowClient(server.uri).get_model_version("back", "1").run_id == run.info.run_id
    kept = sorted(p for p in (tmp_path / "runs" / "back").glob("checkpoint_*") if is_complete(str(p)))
    assert read_checkpoint(str(kept[-1]))["epoch"] == 3


def test_train_keeps_its_records_when_the_server_never_returns_and_sync_replays_them(
    tiny_dataset, servers, tmp_path, capsys
):
    server = servers("gone")
    log, run_dir = tmp_path / "train.log", tmp_path / "runs" / "never"
    args = train_args(tiny_dataset, tmp_path, "never", server.uri)
    code = run_with_outage(args, command_env(wait_s=5), log, server, r"epoch 1/4: ", None)
    assert code == 0, log.read_text()[-4000:]
    (warning,) = lines(log, "tracking sync")
    assert re.fullmatch(
        rf"cg-ray: warning: MLflow at {server.uri} is unreachable: \d+ tracking records are kept in "
        rf"{run_dir}/tracking; replay them with: cg-ray tracking sync {run_dir}",
        warning,
    ), warning
    metrics = json.loads((tmp_path / "never.json").read_text())
    assert read_checkpoint(metrics["checkpoint"])["epoch"] == 3 and is_complete(metrics["checkpoint"])

    fresh = servers("fresh")  # the old store lost: a new server, which never saw the run
    assert main(["tracking", "sync", str(run_dir), "--tracking-uri", fresh.uri]) == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])  # after MLflow's "View run" lines
    (run,) = runs_of(fresh.uri, "outage")
    assert run.info.run_name == "never" and run.data.params["train.epochs"] == "4"
    assert run.data.tags["cg_ray.data"] == tiny_dataset
    assert summary["run_ids"] == {metrics["run_id"]: run.info.run_id}
    assert_complete_run(fresh.uri, run, metrics)
    assert metrics["registration_deferred"] == "never"  # --register-as: replayed by the sync
    assert MlflowClient(fresh.uri).get_model_version("never", "1").run_id == run.info.run_id
    assert main(["tracking", "sync", str(run_dir), "--tracking-uri", fresh.uri]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["records"] == 0  # nothing twice


def test_a_search_goes_on_while_the_server_is_away(tiny_dataset, servers, tmp_path):
    """Three trials one after another (2 epochs each): the server goes after the first trial's
    first epoch and is back 45 s later, so later trials start while it is away (their runs are
    created when it is back)."""
    server = servers("server")
    log = tmp_path / "tune.log"
    values = {
        "data.path": tiny_dataset,
        "train.epochs": 2,
        "train.num_workers": 1,
        "train.batch_size": 8,
        "run.storage_path": f"{tmp_path}/runs",
        "run.name": "s",
        "run.experiment": "outage-search",
        "run.tracking_uri": server.uri,
        "tune.metric": "train_loss",
        "tune.mode": "min",
        "tune.scheduler": "fifo",
        "tune.num_samples": 1,
        "tune.max_concurrent": 1,
        "tune.space": json.dumps({"loss.scene": {"grid": [0.0, 3.0, 4.0]}}),
    }
    args = ["tune", "--config", DEMO, "--metrics-out", str(tmp_path / "search.json")]
    args += [arg for k, v in values.items() for arg in ("--set", f"{k}={v}")]
    code = run_with_outage(args, command_env(wait_s=240), log, server, r"epoch 1/2: ", OUTAGE_S)
    assert code == 0, log.read_text()[-4000:]
    assert not lines(log, "tracking sync")

    summary = json.loads((tmp_path / "search.json").read_text())
    client = MlflowClient(server.uri)
    runs = runs_of(server.uri, "outage-search")
    (parent,) = [r for r in runs if r.data.tags.get("cg_ray.kind") == "search"]
    assert parent.info.run_id == summary["parent_run_id"] and parent.info.status == "FINISHED"
    assert "best_train_loss" in parent.data.metrics and parent.data.tags["cg_ray.best_trial"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"config.yaml", "best_config.yaml"}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.data.params["loss.scene"] for r in children) == ["0.0", "3.0", "4.0"]
    assert len(runs) == 4  # no run twice
    for child in children:
        assert child.data.tags["cg_ray.trial_status"] == "completed"
        assert_complete_run(server.uri, child, {"city_top1": child.data.metrics["city_top1"]}, epochs=2)
    assert parent.data.tags["cg_ray.best_run_id"] in {r.info.run_id for r in children}
