"""A search's report (cg_ray.tune.report): the trials' table best first, with the sampled values,
status and epochs of each; Optuna's importances naming every searched hyper-parameter; a
parallel-coordinates and a learning-curves PNG (decoded: real pictures) in the search folder and
in the MLflow parent run; `cg-ray tune --report` for a finished or interrupted search.

First on a search folder written here in Tune's own format (every status a trial can end in),
then (slow) on a real 3-trial search as docs/guides/searches.md runs it."""

import csv
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from output import own
from PIL import Image

from cg_ray.cli import main
from cg_ray.config import load_config
from cg_ray.tune.report import build

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")
SPACE = {
    "optim.lr": {"loguniform": [1.0e-4, 1.0e-2]},
    "model.sca.heads": {"choice": [1, 2, 3]},
    "model.sca.scene_widths": {"choice": [[64, 32], [128, 64, 32, 16]]},
}
# trial -> (params, city_top1 by epoch, how it ended): 3 epochs make a trial complete.
TRIALS = {
    "a_00000": (
        {"optim.lr": 0.001, "model.sca.heads": 2, "model.sca.scene_widths": "[64, 32]"},
        [50, 60, 70],
        "",
    ),
    "a_00001": (
        {"optim.lr": 0.0002, "model.sca.heads": 1, "model.sca.scene_widths": "[64, 32]"},
        [40, 45, 44],
        "",
    ),
    "a_00002": (
        {"optim.lr": 0.006, "model.sca.heads": 3, "model.sca.scene_widths": "[128, 64, 32, 16]"},
        [55, 65, 60],
        "",
    ),
    "a_00003": (
        {"optim.lr": 0.008, "model.sca.heads": 3, "model.sca.scene_widths": "[64, 32]"},
        [30],
        "stopped",
    ),
    "a_00004": (
        {"optim.lr": 0.0001, "model.sca.heads": 2, "model.sca.scene_widths": "[64, 32]"},
        [20],
        "error",
    ),
    "a_00005": (
        {"optim.lr": 0.003, "model.sca.heads": 1, "model.sca.scene_widths": "[64, 32]"},
        [35, 38],
        "",
    ),
}
EXPECTED = {
    "a_00000": ("completed", 3, 70.0),
    "a_00002": ("completed", 3, 65.0),
    "a_00001": ("completed", 3, 45.0),
    "a_00005": ("interrupted", 2, 38.0),
    "a_00003": ("stopped_early", 1, 30.0),
    "a_00004": ("failed", 1, 20.0),
}


def _picture(data: bytes) -> Image.Image:
    """A decoded PNG that shows something: more than a few colours, not one flat fill."""
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and image.width >= 600 and image.height >= 300
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20
    return image


@pytest.fixture
def written_search(tmp_path):
    """A search folder as Tune and cg-ray tune leave it (cg_ray_search.json, trial_<id>/
    params.json, result.json, error.txt, stopped_early.json), its parent run in a real store."""
    search_dir = tmp_path / "runs" / "s"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(
        DEMO,
        [
            f"run.storage_path={tmp_path}/runs",
            "run.name=s",
            "train.epochs=3",
            f"run.tracking_uri={uri}",
            "tune.space=" + json.dumps(SPACE),
        ],
    )
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("cg_ray-demo"), run_name="s").info.run_id
    client.set_terminated(parent)
    search_dir.mkdir(parents=True)
    meta = {"parent_run_id": parent, "tracking_uri": uri, "config": cfg.to_dict()}
    (search_dir / "cg_ray_search.json").write_text(json.dumps(meta))
    for trial_id, (params, curve, ended) in TRIALS.items():
        folder = search_dir / f"trial_{trial_id}"
        folder.mkdir()
        (folder / "params.json").write_text(json.dumps(params))
        results = [
            {"city_top1": value, "epoch": i, "epochs_done": i + 1, "trial_id": trial_id, "config": params}
            for i, value in enumerate(curve)
        ]
        (folder / "result.json").write_text("".join(json.dumps(r) + "\n" for r in results))
        if ended == "error":
            (folder / "error.txt").write_text(
                "Failure # 1 (occurred at 2026-12-07_10-00-00)\n"
                "ray.exceptions.RayTaskError(UserError): ray::run_trial()\n"
                "cg_ray.errors.UserError: the decode of a clip ran out of memory\n"
            )
    (search_dir / "stopped_early.json").write_text(json.dumps(["a_00003"]))
    return search_dir, client, parent


def test_the_table_sorts_the_trials_by_their_best_metric_with_every_status(written_search):
    search_dir, _, _ = written_search
    report = build(str(search_dir))
    rows = report.rows()
    assert [(r["trial"], r["status"], r["epochs"], r["best city_top1"]) for r in rows] == [
        (trial, *values) for trial, values in EXPECTED.items()
    ]
    for row in rows:
        assert {k: row[k] for k in SPACE} == TRIALS[row["trial"]][0]  # the sampled values
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"] == "UserError: the decode of a clip ran out of memory"
    text = report.text().splitlines()
    assert text[0] == "search s: 6 trials, best city_top1 (max) first"
    assert text[1].split()[:4] == ["trial", "status", "epochs", "best"]
    assert text[2].split()[:6] == ["a_00000", "completed", "3", "70", "0.001", "2"]
    # Importances over the 3 completed trials, every searched key named.
    assert set(report.importances) == set(SPACE) and report.how.endswith("over 3 completed trials")
    assert abs(sum(report.importances.values()) - 1) < 1e-6
    assert text[-1].startswith("importances (PED-ANOVA") and all(k in text[-1] for k in SPACE)


def test_statuses_the_search_judged_win_and_too_few_completed_trials_are_said(written_search):
    search_dir, _, _ = written_search
    judged = {trial: "stopped_early" for trial in TRIALS}
    report = build(str(search_dir), judged)
    assert {r["status"] for r in report.rows()} == {"stopped_early"}
    assert report.importances == {}
    assert report.how == "not computed: they need 2 completed trials, the search has 0"
    assert report.text().splitlines()[-1] == f"importances: {report.how}"
    # Completed trials that all reached the same best metric tell no key apart.
    judged = {trial: "interrupted" for trial in TRIALS} | {"a_00003": "completed", "a_00004": "completed"}
    assert build(str(search_dir), judged).importances  # two values: computed
    (search_dir / "trial_a_00004" / "result.json").write_text(json.dumps({"city_top1": 30, "epochs_done": 1}))
    report = build(str(search_dir), judged)
    assert report.how == "not computed: the 2 completed trials have the same best metric"


def test_cg_ray_tune_report_writes_the_report_and_logs_it_to_the_parent_run(written_search, capsys):
    search_dir, client, parent = written_search
    assert main(["tune", "--report", str(search_dir)]) == 0
    out = own(capsys.readouterr().out)
    assert f"report: {search_dir}/report/" in out
    assert f"logged to MLflow run {parent} (sqlite:///" in out
    assert all(
        re.search(rf"^{trial}\s+{status}\s", out, flags=re.M) for trial, (status, _, _) in EXPECTED.items()
    )
    folder = search_dir / "report"
    with open(folder / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial"] for r in rows] == list(EXPECTED) and rows[0]["optim.lr"] == "0.001"
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["importances"]) == set(SPACE)
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert logged == {f"report/{n}" for n in ("trials.csv", "summary.json", *PICTURES)}
    for name in PICTURES:
        _picture((folder / name).read_bytes())
        copy = client.download_artifacts(parent, f"report/{name}")
        assert Path(copy).read_bytes() == (folder / name).read_bytes()


PICTURES = ("parallel_coordinates.png", "learning_curves.png")


def test_report_of_the_search_a_config_names(written_search, capsys):
    search_dir, _, _ = written_search
    storage_path = search_dir.parent
    args = ["tune", "--config", DEMO, "--set", f"run.storage_path={storage_path}", "run.name=s", "--report"]
    assert main(args) == 0
    assert f"report: {search_dir}/report/" in capsys.readouterr().out


def test_a_folder_that_is_not_a_search_is_one_line(tmp_path, capsys):
    assert main(["tune", "--report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"cg-ray tune: error: {tmp_path} is not a search folder (no cg_ray_search.json in it): give the "
        f"folder of a `cg-ray tune` search, run.storage_path/run.name (e.g. runs/demo)"
    )
    assert main(["tune", "--report"]) == 2
    assert "--report needs SEARCH_DIR" in capsys.readouterr().err


# -- a real search, as the guide shows it ---------------------------------------------------------

GUIDE = ROOT / "docs" / "guides" / "searches.md"
SEARCH = "cg-ray tune --config configs/demo.yaml --set data.path=demo_out/data train.epochs=2 --num-samples 3"
REPORT = "cg-ray tune --report runs/demo"


@pytest.mark.slow
def test_a_three_trial_search_ends_with_its_report(tiny_dataset, ray_session, tmp_path, monkeypatch, capsys):
    guide = GUIDE.read_text()
    assert SEARCH in guide and REPORT in guide
    # The guide's folder: its config, the demo's data, MLflow's default store (./mlflow.db).
    (tmp_path / "configs").mkdir()
    shutil.copy(DEMO, tmp_path / "configs")
    (tmp_path / "demo_out").mkdir()
    os.symlink(tiny_dataset, tmp_path / "demo_out" / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(SEARCH.split()[1:]) == 0
    out = own(capsys.readouterr().out)
    search_dir = tmp_path / "runs" / "demo"
    meta = json.loads((search_dir / "cg_ray_search.json").read_text())
    space = meta["config"]["tune"]["space"]
    # The table printed at the end: 3 rows, each with the values Tune sampled for its trial.
    table = out[out.index("search demo: 3 trials") :].splitlines()
    header, rows = table[1].split(), table[2:5]
    assert header[:5] == ["trial", "status", "epochs", "best", "city_top1"] and header[5:] == list(space)
    for line in rows:
        trial_id = line.split()[0]
        sampled = json.loads((search_dir / f"trial_{trial_id}" / "params.json").read_text())
        assert line.split()[1:3] == ["completed", "2"]
        for key, value in sampled.items():
            assert (f"{value:.4g}" if isinstance(value, float) else str(value)) in line, (key, line)
    assert table[5].startswith("importances (PED-ANOVA") and all(key in table[5] for key in space)
    summary = json.loads((search_dir / "report" / "summary.json").read_text())
    assert set(summary["importances"]) == set(space) and len(summary["trials"]) == 3
    # The pictures, in the search folder and in the parent run.
    client = MlflowClient(meta["tracking_uri"])
    for name in PICTURES:
        _picture((search_dir / "report" / name).read_bytes())
        _picture(Path(client.download_artifacts(meta["parent_run_id"], f"report/{name}")).read_bytes())
    # On demand, the same table again.
    assert main(REPORT.split()[1:]) == 0
    again = own(capsys.readouterr().out)
    assert again.splitlines()[:6] == table[:6]
