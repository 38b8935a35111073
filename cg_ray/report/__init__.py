"""Evaluation reports people can look at: `cg-ray evaluate ... --report DIR`.

DIR/
  index.html            everything below on one page
  metrics.json          accuracy per level + geodesic error (median km, % within 25/200/750/2500 km)
  per_city.csv          per-city accuracy, median km, city centre
  per_country.csv       per-country accuracy
  clips.csv             per clip: true and predicted city, km between their centres
  world_map.png         per-city accuracy on a world map (offline)
  confusion/<continent>.png|.csv   city confusion matrix of each continent

Then, when the checkpoint came from a tracked training run, DIR is logged to that MLflow run.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import tempfile

import numpy as np

from cg_ray import storage
from cg_ray.geo import CityCoordinates
from cg_ray.report import page, plots
from cg_ray.report.tables import (
    ClipLabels,
    clip_distances,
    continent_confusions,
    geodesic_summary,
    per_city,
    per_country,
)
from cg_ray.taxonomy import LEVELS


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_-]+", "_", name).strip("_") or "continent"


def clip_labels(result, loaded, mode: str) -> ClipLabels:
    """Top-1 ids per level of a DatasetProbs under `mode`, beside its true ids."""
    import torch

    from cg_ray.evaluation import top1

    top = top1({lvl: torch.from_numpy(p) for lvl, p in result.probs.items()}, loaded.taxonomy, mode)
    return ClipLabels(
        list(result.clip_ids),
        {lvl: np.asarray(result.labels[lvl]) for lvl in LEVELS},
        {lvl: top[lvl].numpy() for lvl in LEVELS},
    )


def write_report(
    folder: str, taxonomy, clips: ClipLabels, metrics: dict, info: dict, coords: CityCoordinates
) -> dict:
    """Write every report file into the local `folder`; returns metrics + geodesic metrics."""
    os.makedirs(os.path.join(folder, "confusion"), exist_ok=True)
    km, missing = clip_distances(taxonomy, clips, coords)
    metrics = {**metrics, **geodesic_summary(km), "cities_without_coordinates": missing}
    cities, countries = per_city(taxonomy, clips, km, coords), per_country(taxonomy, clips, km)
    files = {
        "metrics.json": json.dumps({**info, **metrics}, indent=1, sort_keys=True) + "\n",
        "per_city.csv": _csv(cities, list(cities[0]) if cities else ["city"]),
        "per_country.csv": _csv(countries, list(countries[0]) if countries else ["country"]),
        "clips.csv": _clips_csv(taxonomy, clips, km),
    }
    shown = []
    for confusion in continent_confusions(taxonomy, clips):
        name = f"confusion/{_slug(confusion.continent)}"
        files[f"{name}.csv"] = _csv(
            [
                {"true_city": r, **dict(zip(confusion.cols, map(int, row)))}
                for r, row in zip(confusion.rows, confusion.counts)
            ],
            ["true_city", *confusion.cols],
        )
        plots.confusion_png(confusion, os.path.join(folder, f"{name}.png"))
        shown.append((confusion.continent, f"{name}.png"))
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
    title = (
        f"city top-1 per city ({info.get('split')}, {info.get('mode')}): "
        f"{metrics.get('city_top1', float('nan')):.1f}% overall, median error "
        f"{metrics.get('geo_median_km', float('nan')):.0f} km"
    )
    plots.world_map(cities, os.path.join(folder, "world_map.png"), title)
    with open(os.path.join(folder, "index.html"), "w", encoding="utf-8") as f:
        f.write(page.render(info, metrics, cities, countries, shown, missing))
    return metrics


def _clips_csv(taxonomy, clips: ClipLabels, km: np.ndarray) -> str:
    names = taxonomy.labels["city"]
    rows = [
        {"clip_id": c, "true_city": names[t], "pred_city": names[p], "km": "" if np.isnan(d) else f"{d:.1f}"}
        for c, t, p, d in zip(clips.clip_ids, clips.true["city"], clips.pred["city"], km)
    ]
    return _csv(rows, ["clip_id", "true_city", "pred_city", "km"])


def publish(folder: str, dest: str) -> None:
    """Copy the local report folder to `dest` (a local folder or an s3:// URI)."""
    if not storage.is_uri(dest):
        if os.path.abspath(dest) != os.path.abspath(folder):
            shutil.copytree(folder, dest, dirs_exist_ok=True)
        return
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                storage.write_bytes(storage.join(dest, os.path.relpath(path, folder)), f.read())


def evaluate_with_report(
    checkpoint: str,
    data_path: str,
    report_dir: str,
    split: str = "val",
    mode: str = "codependent",
    coordinates: str | None = None,
    predictions_out: str | None = None,
    batch_size: int = 32,
    tracking_uri: str | None = None,
    views: int | None = None,
) -> tuple[dict, str]:
    """Evaluate a checkpoint on a split and write the report; returns (metrics, MLflow note).
    `views`: temporal clips per video (default: the checkpoint's eval.views)."""
    from cg_ray.predict.evaluate import metrics_for, predict_split, write_predictions
    from cg_ray.predict.predictor import open_checkpoint
    from cg_ray.report.tracked import log_to_mlflow
    from cg_ray.train.checkpoint import read_checkpoint

    coords = CityCoordinates.load(coordinates)  # a bad CSV fails before any work
    loaded, path = open_checkpoint(checkpoint, tracking_uri)
    result = predict_split(loaded, data_path, split, batch_size, views=views)
    if predictions_out:
        write_predictions(predictions_out, result, loaded, mode)
    metrics = metrics_for(result, loaded, mode)
    info = {
        "checkpoint": checkpoint,
        "data": data_path,
        "split": split,
        "mode": mode,
        "clips": len(result.clip_ids),
    }
    clips = clip_labels(result, loaded, mode)
    local = report_dir if not storage.is_uri(report_dir) else tempfile.mkdtemp(prefix="cg_ray-report-")
    metrics = write_report(local, loaded.taxonomy, clips, metrics, info, coords)
    publish(local, report_dir)
    note = log_to_mlflow(
        local, read_checkpoint(path), loaded.config, tracking_uri, artifact_path=f"report_{split}_{mode}"
    )
    return metrics, note
