"""`cg-ray demo`: the whole system on a laptop, everything kept under one folder.

synthetic world -> prepare -> text features -> train (2 DDP workers, Ray Data input, MLflow)
-> evaluate in the three modes -> a printed table and DIR/metrics.json.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from cg_ray import console, storage
from cg_ray.config import load_config
from cg_ray.errors import UserError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
WORLD = dict(cities=12, clips_per_city=30, frames=16, size=(64, 48))


class _RandomWeightsAsked(logging.Filter):
    """open_clip's warning that a model without pretrained weights has random ones."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")


def synthetic_dataset(out: str, log=lambda line: None, **world) -> str:
    """OUT/world (a synthetic world) prepared as OUT/data with text features of its label names
    (open_clip ViT-B-32, random weights: no hub); what exists already is kept. Returns OUT/data."""
    from cg_ray.data.layouts import prepare
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.synthetic import make_world
    from cg_ray.labels.text import FILENAME, encode_label_names, save_text_features

    data = os.path.join(out, "data")
    if not storage.exists(os.path.join(data, "manifest.parquet")):
        log(f"[demo] synthetic world -> {out}/world")
        make_world(os.path.join(out, "world"), **world)
        prepare("cityguessr", os.path.join(out, "world"), data)
    if not storage.exists(os.path.join(data, FILENAME)):
        log("[demo] text features of the label names (open_clip ViT-B-32, random weights)")
        taxonomy = PreparedDataset(data).taxonomy
        asked = _RandomWeightsAsked()  # open_clip warns of what the line above says
        logging.getLogger().addFilter(asked)
        try:
            features = encode_label_names(taxonomy, "ViT-B-32", None)
        finally:
            logging.getLogger().removeFilter(asked)
        save_text_features(data, features, taxonomy)
    return data


def run_demo(out: str, workers: int = 2, epochs: int | None = None) -> dict:
    from cg_ray.console import format_table
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.predict.evaluate import evaluate
    from cg_ray.runs import train

    if not DEMO_CONFIG.exists():
        raise UserError(f"demo config {DEMO_CONFIG} not found: run the demo from a cg_ray checkout")
    out = os.path.abspath(out)
    console.open_log(os.path.join(out, console.LOG_NAME))
    start = time.perf_counter()
    data = synthetic_dataset(out, log=lambda line: print(line, flush=True), **WORLD)
    taxonomy = PreparedDataset(data).taxonomy

    overrides = [
        f"data.path={data}",
        f"train.num_workers={workers}",
        f"run.storage_path={out}/runs",
        f"run.name=demo-{time.strftime('%Y%m%d-%H%M%S')}",
        f"run.tracking_uri=sqlite:///{out}/mlflow.db",
    ]
    if epochs is not None:
        overrides.append(f"train.epochs={epochs}")
    cfg = load_config(str(DEMO_CONFIG), overrides)
    print(f"[demo] training: {workers} workers x {cfg.train.epochs} epochs", flush=True)
    result = train(cfg)
    print(f"[demo] evaluating {result['checkpoint']}", flush=True)
    metrics = evaluate(result["checkpoint"], data, "val")
    chance = 100.0 / len(taxonomy.labels["city"])
    print()
    print(format_table(metrics))
    print(
        f"\ncity top-1 chance level: {chance:.1f}%   MLflow: sqlite:///{out}/mlflow.db "
        f"(run {result['run_id']})   wall time {time.perf_counter() - start:.0f}s"
    )
    summary = {
        **metrics["codependent"],
        "mode": "codependent",
        "checkpoint": result["checkpoint"],
        "run_id": result["run_id"],
        "wall_s": time.perf_counter() - start,
    }
    storage.write_text(os.path.join(out, "metrics.json"), json.dumps(summary, indent=1) + "\n")
    return summary
