"""The tracking outbox without Ray: records reach the store in order and are journaled in the run
folder; a store that is away keeps them there; `cg-ray tracking sync` replays them into the
store, or creates the run in a fresh one, and adds nothing twice. (A real MLflow server stopped
and started again during training and a search: tests/test_tracking_outage.py.)"""

import json
import socket
import time
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.tracking import MlflowClient

from cg_ray import tracking
from cg_ray.cli import main
from cg_ray.tracking_journal import journal_files, read_journal
from cg_ray.tracking_outbox import Outbox, transient
from cg_ray.tracking_sync import sync


def history(uri, run_id, key):
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key)]


def only_run(uri, experiment):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def dead_uri() -> str:
    """An http:// store where nothing listens: connection refused, at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two sqlite stores for the module (creating one costs seconds): where runs are tracked,
    and another (a fresh store to the runs of each test: each test has its own experiment)."""
    folder = tmp_path_factory.mktemp("stores")
    return f"sqlite:///{folder}/main.db", f"sqlite:///{folder}/other.db"


@pytest.fixture
def fast_retries(monkeypatch):
    """MLflow's client gives up on the first refused connection; ours retries every ~0.1 s."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("CG_RAY_TRACKING_RETRY_S", "0.05")
    monkeypatch.setenv("CG_RAY_TRACKING_RETRY_MAX_S", "0.2")


def log_a_run(uri, run_dir, experiment, defer=False):
    run_id = tracking.start_run(
        uri, experiment, "r1", {"optim": {"lr": 0.1}}, tags={"t": "x"}, run_dir=str(run_dir), defer=defer
    )
    for step in range(3):
        tracking.log_epoch(uri, run_id, {"city_top1": 10.0 * step, "train_loss": 3.0 - step}, step)
    tracking.log_epoch(uri, run_id, {"city_top1": 99.0}, 1)  # epoch 1 reported again: not logged
    tracking.log_text(uri, run_id, "a: 1\n", "config.yaml")
    tracking.log_bytes(uri, run_id, b"\x89PNG", "plots/curve.png")
    tracking.set_tags(uri, run_id, {"cg_ray.note": "hello"})
    return run_id


def test_records_reach_the_store_in_order_and_the_journal_keeps_them(tmp_path, stores):
    uri = stores[0]
    run_id = log_a_run(uri, tmp_path / "run", "in-order")
    assert tracking.end_run(uri, run_id) == 0
    assert tracking.kept_warning(uri, str(tmp_path / "run")) is None

    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"optim.lr": "0.1"}
    assert run.data.tags["t"] == "x" and run.data.tags["cg_ray.note"] == "hello"
    assert history(uri, run_id, "city_top1") == [(0, 0.0), (1, 10.0), (2, 20.0)]
    files = {a.path for a in MlflowClient(uri).list_artifacts(run_id)}
    assert files == {"config.yaml", "plots"}

    (path,) = journal_files(str(tmp_path / "run"))
    records = read_journal(path).records
    kinds = [r["kind"] for r in records]
    assert kinds == ["create", "params"] + ["metrics"] * 4 + ["text", "bytes", "tags", "status"]
    assert all(r["to"] == [uri] for r in records)  # every one delivered to this store


def test_sync_into_a_fresh_store_creates_the_run_and_adds_nothing_twice(tmp_path, stores):
    uri, fresh = stores
    run_dir = tmp_path / "run"
    old_id = log_a_run(uri, run_dir, "fresh")
    tracking.end_run(uri, old_id)

    first = sync(str(run_dir), fresh)
    assert first["records"] == 10 and first["delivered"] == 10
    run = only_run(fresh, "fresh")
    assert first["run_ids"] == {old_id: run.info.run_id} and run.info.run_name == "r1"
    assert run.info.status == "FINISHED" and run.data.params == {"optim.lr": "0.1"}
    assert history(fresh, run.info.run_id, "city_top1") == [(0, 0.0), (1, 10.0), (2, 20.0)]
    assert json.loads((run_dir / "tracking" / "run_ids.json").read_text()) == {fresh: first["run_ids"]}

    again = sync(str(run_dir), fresh)  # its id there is known now: nothing left to add
    assert again["records"] == 0
    assert history(fresh, run.info.run_id, "train_loss") == [(0, 3.0), (1, 2.0), (2, 1.0)]
    assert sync(str(run_dir), uri)["records"] == 0  # the original store had everything


def test_a_store_away_keeps_the_records_in_the_run_folder_for_sync(tmp_path, stores, fast_retries, capsys):
    """A search's trial starts while the server is away: its run gets a pending id, and every
    record waits; at the end they are journaled, and sync creates the run and adds them."""
    uri, run_dir = dead_uri(), tmp_path / "run"
    run_id = log_a_run(uri, run_dir, "away", defer=True)
    assert run_id.startswith("pending-")
    waiting = tracking.end_run(uri, run_id, wait=1.0)
    assert waiting == 10
    line = tracking.kept_warning(uri, str(run_dir))
    assert line == (
        f"cg-ray: warning: MLflow at {uri} is unreachable: 10 tracking records are kept in "
        f"{run_dir}/tracking; replay them with: cg-ray tracking sync {run_dir}"
    )
    err = capsys.readouterr().err
    assert err.count(f"MLflow tracking server {uri} is unreachable (connection refused)") == 1

    store = stores[1]
    assert main(["tracking", "sync", str(run_dir), "--tracking-uri", store]) == 0
    summary = json.loads(capsys.readouterr().out)
    run = only_run(store, "away")
    assert summary["delivered"] == 10 and summary["run_ids"] == {run_id: run.info.run_id}
    assert history(store, run.info.run_id, "city_top1") == [(0, 0.0), (1, 10.0), (2, 20.0)]
    assert run.info.status == "FINISHED" and run.data.tags["cg_ray.note"] == "hello"


def test_a_worker_hands_its_records_to_the_driver(tmp_path, stores, fast_retries):
    """The rank-0 worker (another process: here another outbox) logs while the server is away,
    hands its journal over at its end; the driver adopts it and delivers it in order."""
    store, run_dir = stores[0], str(tmp_path / "run")
    run_id = tracking.start_run(store, "hand-off", "r", {}, run_dir=run_dir)
    worker, away = Outbox(), dead_uri()
    worker.bind(run_id, run_dir)
    for step in range(3):
        worker.put(away, run_id, "metrics", metrics={"city_top1": step}, step=step, ts=step, once=None)
    assert worker.flush(0.5) == 3
    worker.close()

    assert tracking.adopt(run_dir, store) == 3
    assert tracking.end_run(store, run_id) == 0
    assert history(store, run_id, "city_top1") == [(0, 0.0), (1, 1.0), (2, 2.0)]
    handed = [read_journal(p) for p in journal_files(run_dir)]
    assert sum(len(j.records) for j in handed) == 6  # create, params, status + the worker's 3
    assert all(store in r["to"] for j in handed for r in j.records)


def test_the_journal_of_a_run_on_s3(s3, stores, fast_retries, capsys):
    """A run folder in object storage keeps its records there, and sync reads them back."""
    run_dir = f"{s3()}/runs/r"
    run_id = log_a_run(dead_uri(), run_dir, "on-s3", defer=True)
    assert tracking.end_run(dead_uri(), run_id, wait=0.5) == 10
    assert [p.startswith(f"{run_dir}/tracking/records-") for p in journal_files(run_dir)] == [True]
    summary = sync(run_dir, stores[1])
    run = only_run(stores[1], "on-s3")
    assert summary["delivered"] == 10 and run.data.params == {"optim.lr": "0.1"}
    assert history(stores[1], run.info.run_id, "city_top1") == [(0, 0.0), (1, 10.0), (2, 20.0)]


def test_while_records_wait_their_journal_is_kept_current(tmp_path, fast_retries):
    """A worker killed while the server is away (its node lost) never closes its journal: the
    outbox writes it at each failed retry, so that its driver still finds the records."""
    outbox, uri, run_dir = Outbox(), dead_uri(), str(tmp_path / "run")
    outbox.bind("r", run_dir)
    outbox.put(uri, "r", "metrics", metrics={"city_top1": 1.0}, step=0, ts=0, once=None)
    for _ in range(100):
        found = [read_journal(p) for p in journal_files(run_dir)]
        if found and found[0].records:
            break
        time.sleep(0.1)
    (journal,) = found
    assert [(r["kind"], r["to"]) for r in journal.records] == [("metrics", [])]
    assert uri in journal.away  # its reader need not say again that the server went away


def test_a_search_settles_its_trials_from_their_folders_while_the_server_is_away(
    tmp_path, stores, fast_retries
):
    """A search ends while the server is away: each trial's run is found in its folder's
    marker, closed and tagged there (queued), and sync creates parent and children, each child
    under its parent's new id."""
    from cg_ray.train.driver import RUN_MARKER
    from cg_ray.tune.trials import settle_children

    uri, search_dir = dead_uri(), tmp_path / "s"
    parent = tracking.start_run(uri, "search-away", "s", {}, run_dir=str(search_dir), defer=True)
    trial_dir = search_dir / "trials" / "s-00000"
    tags = {"mlflow.parentRunId": parent, "cg_ray.trial_id": "fn_00000"}
    child = tracking.start_run(uri, "search-away", "s-00000", {}, tags, run_dir=str(trial_dir), defer=True)
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / RUN_MARKER).write_text(json.dumps({"mlflow_run_id": child}))
    rows = [{"trial_id": "fn_00000", "status": "completed", "error": None}]
    settle_children(uri, parent, rows, str(search_dir))
    assert rows[0]["run_id"] == child
    assert tracking.end_run(uri, parent, wait=0.5) == 7  # 2 creates, 2 params, status, tag, end

    store = stores[1]
    summary = sync(str(search_dir), store)
    runs = {r.info.run_name: r for r in MlflowClient(store).search_runs([only_experiment(store)])}
    assert summary["delivered"] == 7 and set(runs) == {"s", "s-00000"}
    assert runs["s-00000"].data.tags["mlflow.parentRunId"] == runs["s"].info.run_id
    assert runs["s-00000"].data.tags["cg_ray.trial_status"] == "completed"
    assert runs["s-00000"].info.status == "FINISHED" and runs["s"].info.status == "FINISHED"


def only_experiment(uri):
    return MlflowClient(uri).get_experiment_by_name("search-away").experiment_id


def test_sync_of_a_folder_without_records_says_so(tmp_path, capsys):
    assert main(["tracking", "sync", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"cg-ray tracking: error: no tracking records under {tmp_path} (it has no tracking/records-*.jsonl)"
    )


@pytest.mark.parametrize(
    "error, retried",
    [
        (MlflowException("API request to http://h/x failed with exception Connection refused"), True),
        (MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST), False),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (TimeoutError("read timed out"), True),
        (FileNotFoundError("checkpoint gone"), False),
        (ValueError("a bug"), False),
    ],
)
def test_what_is_retried(error, retried):
    assert transient(error) is retried


def test_the_journal_is_plain_json_lines(tmp_path, stores):
    uri = stores[0]
    run_id = tracking.start_run(uri, "journal", "r", {"a": 1}, run_dir=str(tmp_path / "run"))
    tracking.end_run(uri, run_id)
    (path,) = journal_files(str(tmp_path / "run"))
    header, *lines = Path(path).read_text().splitlines()
    assert json.loads(header)["cg_ray_tracking_journal"] == 1
    assert [json.loads(line)["kind"] for line in lines] == ["create", "params", "status"]
