"""On a real local Ray: batch prediction over a folder with a corrupt video and over a CSV, and
`cg-ray evaluate --report` end to end (Ray Data evaluation -> report files -> MLflow run)."""

import csv
import json
import os

import pyarrow.parquet as pq
import pytest
from output import own
from predict_helpers import mp4_world, train_tiny_checkpoint

from cg_ray.cli import main
from cg_ray.predict.batch import OUTPUT_SCHEMA
from cg_ray.taxonomy import LEVELS

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_session):
    from cg_ray import tracking

    root = tmp_path_factory.mktemp("batch")
    world = root / "world"
    rows = mp4_world(str(world), clips_per_city=3)
    good = (world / "videos" / "Lyon" / "Lyon_0000.mp4").read_bytes()
    # A truncated mp4: the right name and magic, but PyAV cannot read it.
    (world / "videos" / "corrupt.mp4").write_bytes(good[: len(good) // 3])
    uri = f"sqlite:///{root}/mlflow.db"
    run_id = tracking.start_run(uri, "batch", "train", {})
    ckpt = str(root / "ckpt")
    train_tiny_checkpoint(
        ckpt, rows, steps=8, extra={"mlflow_run_id": run_id}, overrides=[f"run.tracking_uri={uri}"]
    )
    return {"root": root, "world": world, "rows": rows, "ckpt": ckpt, "uri": uri, "run_id": run_id}


def test_batch_prediction_over_a_folder_skips_the_corrupt_video(setup, capsys):
    out = setup["root"] / "out" / "preds.parquet"
    code = main(
        [
            "predict",
            "--checkpoint",
            setup["ckpt"],
            "--input-list",
            str(setup["world"]),
            "--out",
            str(out),
            "--top-k",
            "3",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    summary = json.loads(own(captured.out).splitlines()[-1])
    assert (summary["clips"], summary["predicted"], summary["bad"]) == (19, 18, 1)
    assert summary["actors"] >= 1 and summary["use_gpu"] is False
    assert "batch predict [####################] 19/19 clips" in captured.err and "bad 1" in captured.err
    assert "skipped" in captured.err and "corrupt.mp4" in captured.err
    table = pq.read_table(out)
    assert table.schema == OUTPUT_SCHEMA and table.num_rows == 18
    by_input = {r["input"]: r for r in table.to_pylist()}
    assert set(by_input) == {r["path"] for r in setup["rows"]}
    for row in setup["rows"]:
        got = by_input[row["path"]]
        assert [got[f"pred_{lvl}"] for lvl in LEVELS] == [row[lvl] for lvl in LEVELS]
        assert got["top_city"][0] == row["city"] and len(got["top_city"]) == 3
        assert got["prob_city"] == pytest.approx(got["top_city_prob"][0])
    with open(summary["errors_out"]) as f:
        errors = list(csv.DictReader(f))
    assert [e["input"] for e in errors] == [str(setup["world"] / "videos" / "corrupt.mp4")]
    assert "cannot" in errors[0]["error"]


def test_batch_prediction_from_a_csv_list(setup, capsys):
    out = setup["root"] / "csv.parquet"
    code = main(
        [
            "predict",
            "--checkpoint",
            setup["ckpt"],
            "--input-list",
            str(setup["world"] / "labels.csv"),
            "--out",
            str(out),
            "--actors",
            "1",
            "--mode",
            "flat",
        ]
    )
    assert code == 0
    table = pq.read_table(out)
    assert table.num_rows == 18 and not os.path.exists(setup["root"] / "csv.errors.csv")
    assert sorted(table.column("input").to_pylist()) == sorted(r["path"] for r in setup["rows"])


def test_evaluate_report_end_to_end(setup, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from cg_ray.data.layouts import prepare

    data = str(tmp_path / "data")
    prepare("videos", str(setup["world"] / "labels.csv"), data)
    report = tmp_path / "report"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            setup["ckpt"],
            "--data",
            data,
            "--split",
            "train",
            "--report",
            str(report),
            "--metrics-out",
            str(tmp_path / "m.json"),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert f"logged to MLflow run {setup['run_id']}" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    # The model was trained on these very clips: every one is right, so every error is 0 km.
    assert metrics["city_top1"] == 100.0 and metrics["geo_median_km"] == 0.0
    assert metrics["geo_within_25km"] == 100.0 and metrics["geo_missing"] == 0
    for name in [
        "index.html",
        "world_map.png",
        "per_city.csv",
        "per_country.csv",
        "confusion/Europe.png",
        "metrics.json",
    ]:
        assert (report / name).exists(), name
    listed = {
        a.path for a in MlflowClient(setup["uri"]).list_artifacts(setup["run_id"], "report_train_codependent")
    }
    assert "report_train_codependent/world_map.png" in listed
