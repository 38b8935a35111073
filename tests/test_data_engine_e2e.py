"""The data engine end to end on a real local Ray: prepare -> pack -> train -> evaluate through a
real S3-compatible server (moto on 127.0.0.1), checkpoints included; and a run that loses too
many clips stopping with one line. Slow: one Ray Train fit() each."""

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cg_ray import storage
from cg_ray.cli import main
from cg_ray.data.synthetic import make_world

pytestmark = pytest.mark.slow
DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
TINY = [
    "data.num_frames=4",
    "data.image_size=32",
    "train.batch_size=4",
    "train.epochs=1",
    "model.tla.enabled=false",
]


def test_s3_prepare_pack_train_evaluate(ray_session, s3, tmp_path, capsys):
    bucket = s3()
    world, data = f"{bucket}/world", f"{bucket}/data"
    make_world(world, cities=4, clips_per_city=5, frames=8, size=(32, 32), fmt="mp4", seed=3)
    labels = storage.read_text(f"{world}/labels.csv").splitlines()
    train = [line.split(",")[0] for line in labels[1:] if line.endswith(",train")]
    storage.write_bytes(f"{world}/{train[0]}", b"not a video")  # broken before prepare
    assert main(["prepare", world, "--layout", "videos", "--out", data]) == 0
    prepared = json.loads(storage.read_text(f"{data}/prepare_report.json"))
    assert prepared["clips"] == 19 and prepared["splits"] == {"train": 15, "val": 4}
    assert [s["source"] for s in prepared["skipped"]] == [f"{world}/{train[0]}"]

    # Broken after prepare: a truncated mp4 and an emptied one. (An object that is gone is
    # the store's fault, not bad data: tests/test_storage_faults.py.)
    video = storage.read_bytes(f"{world}/{train[1]}")
    storage.write_bytes(f"{world}/{train[1]}", video[:300])
    storage.write_bytes(f"{world}/{train[2]}", b"")
    fs, _ = storage.filesystem(f"{world}/{train[2]}")
    capsys.readouterr()
    assert main(["pack", data, "--frames", "4", "--size", "32", "--clips-per-shard", "4"]) == 0
    assert "pack [####################] 19/19 clips" in capsys.readouterr().out  # progress
    report = json.loads(storage.read_text(f"{data}/shards/frames4_size32/pack_report.json"))
    assert report["packed_now"] == 17  # the two skipped clips are not counted as packed
    reasons = {s["source"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {f"{world}/{train[1]}", f"{world}/{train[2]}"}
    assert reasons[f"{world}/{train[2]}"].startswith(f"cannot decode video '{world}/{train[2]}'")
    assert "cannot" in reasons[f"{world}/{train[1]}"]
    assert report["shards"]["train"] == [f"train/part-0000{i}.parquet" for i in range(4)]

    # Training and evaluation must now read the shards: the raw videos are all gone.
    fs.delete_dir_contents(storage.filesystem(f"{world}/videos")[1])
    metrics_out = tmp_path / "train.json"
    assert (
        main(
            [
                "train",
                "--config",
                DEMO,
                "--metrics-out",
                str(metrics_out),
                "--set",
                f"data.path={data}",
                "--set",
                f"run.storage_path={bucket}/runs",
                "--set",
                "run.name=s3run",
                "--set",
                f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
                "--set",
                "train.num_workers=1",
                "--set",
                "data.max_bad_fraction=0.2",
                *[arg for kv in TINY for arg in ("--set", kv)],
            ]
        )
        == 0
    )
    result = json.loads(metrics_out.read_text())
    assert result["bad_clips"] == 2 and result["train_clips"] == 13 and result["val_clips"] == 4
    checkpoint = result["checkpoint"]
    assert checkpoint.startswith(f"{bucket}/runs/s3run/checkpoint_")
    assert storage.exists(f"{checkpoint}/checkpoint.pt")

    eval_out = tmp_path / "eval.json"
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", checkpoint, "--data", data, "--metrics-out", str(eval_out)]) == 0
    assert "evaluate val [####################] 4/4 clips" in capsys.readouterr().err
    evaluated = json.loads(eval_out.read_text())
    assert evaluated["num_clips"] == 4 and evaluated["bad_clips"] == 0
    assert evaluated["city_top1"] == pytest.approx(result["city_top1"])


def test_too_many_bad_clips_stop_the_run_with_one_line(ray_session, tiny_dataset, tmp_path, capsys):
    """2 of the 48 training clips are empty before pack: 4% > the default 1%. Trains from the
    shards (pack -> train), counts the two as bad_clips and stops after the first epoch."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("taxonomy.json", "text_features.parquet"):
        shutil.copy(Path(tiny_dataset) / name, data / name)
    table = pq.read_table(Path(tiny_dataset) / "manifest.parquet")
    rows = table.to_pylist()
    gone = [i for i, row in enumerate(rows) if row["split"] == "train"][:2]
    for i in gone:
        rows[i]["source"] = str(tmp_path / "emptied" / rows[i]["clip_id"])
        (tmp_path / "emptied" / rows[i]["clip_id"]).mkdir(parents=True)
    pq.write_table(table.from_pylist(rows, schema=table.schema), data / "manifest.parquet")
    capsys.readouterr()
    assert main(["pack", str(data), "--frames", "8", "--size", "32", "--quiet"]) == 0
    assert "pack [" not in capsys.readouterr().out  # --quiet: no progress
    report = json.loads((data / "shards" / "frames8_size32" / "pack_report.json").read_text())
    assert sorted(s["clip_id"] for s in report["skipped"]) == sorted(rows[i]["clip_id"] for i in gone)

    capsys.readouterr()
    code = main(
        [
            "train",
            "--config",
            DEMO,
            "--set",
            f"data.path={data}",
            "--set",
            "train.epochs=2",
            "--set",
            "train.batch_size=8",
            "--set",
            f"run.storage_path={tmp_path}/runs",
            "--set",
            f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        ]
    )
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "cg-ray train" in line]
    assert errors == [
        "cg-ray train: error: 2 of 48 training clips could not be decoded (more than "
        "data.max_bad_fraction=0.01); see the worker log for which"
    ]
