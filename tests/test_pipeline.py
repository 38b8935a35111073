"""End to end on a real local Ray: Ray Data -> 2-worker TorchTrainer (DDP, gloo) -> checkpoint
and MLflow run -> evaluate. Slow: each fit() costs about 20 s of Ray start-up."""

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cg_ray.cli import main
from cg_ray.config import load_config
from cg_ray.taxonomy import LEVELS
from cg_ray.train.checkpoint import read_checkpoint

pytestmark = pytest.mark.slow
DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")


@pytest.fixture(scope="module")
def trained(tiny_dataset, ray_session, tmp_path_factory):
    from cg_ray.runs import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(
        DEMO,
        [
            f"data.path={tiny_dataset}",
            "train.epochs=2",
            "train.num_workers=2",
            "train.batch_size=4",
            f"run.storage_path={out}/runs",
            "run.name=t",
            f"run.tracking_uri=sqlite:///{out}/mlflow.db",
        ],
    )
    return train(cfg), cfg, out


def test_training_reports_metrics_and_checkpoint(trained):
    result, cfg, _ = trained
    for level in LEVELS:
        assert 0.0 <= result[f"{level}_top1"] <= result[f"{level}_top5"] <= 100.0
    assert result["epoch"] == 1 and result["train_clips"] == 48 and result["val_clips"] == 12
    state = read_checkpoint(result["checkpoint"])
    assert state["epoch"] == 1 and state["config"] == cfg.to_dict()
    assert set(state["taxonomy"]["labels"]) == set(LEVELS)
    assert "state" in state["optimizer"] and state["model"]
    for name in ("config.yaml", "taxonomy.json"):
        assert os.path.exists(os.path.join(result["checkpoint"], name))


def test_a_run_on_a_local_ray_starts_no_preemption_watcher(trained):
    """Ray Train's per-run actor that watches for drained nodes is off on a local Ray (nothing
    drains its one node): a process less per run. The run's controller is listed, so the
    listing itself works. Only this session's job counts: a driver that joins the session's Ray
    from another test (test_resilience's, as a cluster job's driver) is a job of its own, and
    keeps the watcher as on a cluster."""
    import ray
    from ray.util.state import list_actors

    context = ray.get_runtime_context()

    def count(name):
        actors = list_actors(
            address=context.gcs_address,
            filters=[("class_name", "=", name), ("job_id", "=", context.get_job_id())],
            limit=10000,
        )
        return len(actors)

    assert count("TrainController") >= 1 and count("PreemptionWatcher") == 0


def test_training_is_tracked_in_mlflow(trained):
    from mlflow.tracking import MlflowClient

    result, cfg, out = trained
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "t"
    assert run.data.params["train.epochs"] == "2" and run.data.params["optim.lr"] == "0.001"
    waits = client.get_metric_history(result["run_id"], "data_wait_fraction")
    assert [m.step for m in waits] == [0, 1] and all(0 < m.value < 1 for m in waits)
    assert 0 < result["train_clips_per_s_warm"] and result["first_batch_s"] > 0
    history = client.get_metric_history(result["run_id"], "city_top1")
    assert [m.step for m in history] == [0, 1]
    assert history[-1].value == pytest.approx(result["city_top1"])
    artifacts = {a.path for a in client.list_artifacts(result["run_id"])}
    assert {"config.yaml", "taxonomy.json", "checkpoint", "learning_curves.png"} <= artifacts
    assert result["learning_curves"] == f"{out}/runs/t/learning_curves.png"
    assert Path(result["learning_curves"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    inner = {a.path for a in client.list_artifacts(result["run_id"], "checkpoint")}
    assert "checkpoint/checkpoint.pt" in inner


def test_evaluate_cli_on_the_checkpoint(trained, tiny_dataset, tmp_path, capsys):
    result, _, _ = trained
    metrics_out, preds_out = tmp_path / "m.json", tmp_path / "p.parquet"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            result["checkpoint"],
            "--data",
            tiny_dataset,
            "--mode",
            "codependent",
            "--metrics-out",
            str(metrics_out),
            "--predictions-out",
            str(preds_out),
        ]
    )
    assert code == 0
    metrics = json.loads(metrics_out.read_text())
    # The training run evaluated the same split in the same mode with the same weights.
    assert metrics["city_top1"] == pytest.approx(result["city_top1"])
    assert metrics["num_clips"] == 12
    table = pq.read_table(preds_out)
    assert table.num_rows == 12
    expected = (
        ["clip_id"]
        + [f"true_{lvl}" for lvl in LEVELS]
        + [f"pred_{lvl}" for lvl in LEVELS]
        + [f"prob_{lvl}" for lvl in LEVELS]
    )
    assert table.schema.names == expected
    row = table.slice(0, 1).to_pylist()[0]
    assert len(row["prob_city"]) == 6 and sum(row["prob_city"]) == pytest.approx(1, abs=1e-4)
    correct = sum(r["true_city"] == r["pred_city"] for r in table.to_pylist())
    assert 100.0 * correct / 12 == pytest.approx(metrics["city_top1"])


def test_resuming_a_finished_run_reports_its_last_epoch_again(trained):
    """A run resumed after its last epoch was checkpointed (killed before it closed, or a search
    trial stopped there) trains nothing and reports that epoch again, with a checkpoint, to the
    trainer's callbacks (a search's trial would otherwise end without a result); the same MLflow
    run, each epoch logged once."""
    import ray.train
    from mlflow.tracking import MlflowClient

    from cg_ray.runs import train

    result, cfg, out = trained
    reports = str(out / "reports.jsonl")

    class ReportLog(ray.train.UserCallback):  # runs in the Ray Train controller: a file
        def after_report(self, run_context, metrics, checkpoint):
            with open(reports, "a") as f:
                f.write(
                    json.dumps({"epoch": metrics[0]["epoch"], "checkpoint": checkpoint is not None}) + "\n"
                )

    again = train(cfg, resume=True, callbacks=[ReportLog()])
    assert [json.loads(line) for line in Path(reports).read_text().splitlines()] == [
        {"epoch": 1, "checkpoint": True}
    ]
    assert again["run_id"] == result["run_id"] and again["epoch"] == 1
    assert again["city_top1"] == pytest.approx(result["city_top1"])
    assert read_checkpoint(again["checkpoint"])["epoch"] == 1
    client = MlflowClient(f"sqlite:///{out}/mlflow.db")
    assert client.get_run(result["run_id"]).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result["run_id"], "city_top1")] == [0, 1]
    assert [m.value for m in client.get_metric_history(result["run_id"], "resumed_at_epoch")] == [2]


def test_demo_learns_far_above_chance(ray_session, tmp_path):
    from cg_ray.demo import run_demo

    summary = run_demo(str(tmp_path / "demo"), workers=2, epochs=4)
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["checkpoint"] == summary["checkpoint"] and os.path.isdir(saved["checkpoint"])
    chance = 100.0 / 12
    assert saved["city_top1"] > 4 * chance
    assert (tmp_path / "demo" / "mlflow.db").exists()
    assert (tmp_path / "demo" / "data" / "manifest.parquet").exists()
    # The checkpoint is usable with --checkpoint and the data with --data.
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                saved["checkpoint"],
                "--data",
                str(tmp_path / "demo" / "data"),
                "--split",
                "val",
            ]
        )
        == 0
    )
