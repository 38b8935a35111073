"""A tiny trained checkpoint for the predict and report tests: trained in-process (no Ray) on
real mp4 clips of the synthetic world, so predictions mean something and tests stay fast."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cg_ray.config import load_config
from cg_ray.data.decode import decode_clip
from cg_ray.data.synthetic import make_world
from cg_ray.model.net import build_model
from cg_ray.taxonomy import LEVELS, Taxonomy
from cg_ray.train.checkpoint import save_checkpoint

DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
CITIES = 6  # one per continent in the synthetic world: Abu_Dhabi, Lyon, Chicago, ...


def mp4_world(root: str, clips_per_city: int = 3) -> list[dict]:
    """Write mp4 clips; returns their labels.csv rows with absolute paths."""
    make_world(root, cities=CITIES, clips_per_city=clips_per_city, frames=8, size=(32, 32), fmt="mp4", seed=3)
    with open(os.path.join(root, "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["path"] = os.path.join(root, row["path"])
    return rows


def train_tiny_checkpoint(
    folder: str, rows: list[dict], steps: int = 40, extra: dict | None = None, overrides: list[str] = ()
) -> Taxonomy:
    """Fit a 2-layer VideoMAE (4 frames, 32x32) on the clips of `rows` and save it to `folder`."""
    torch.manual_seed(0)
    taxonomy = Taxonomy.from_rows(rows)
    cfg = load_config(
        DEMO, ["data.num_frames=4", "data.image_size=32", "model.tla.enabled=false", *overrides]
    )
    model = build_model(cfg, taxonomy.sizes, text_dim=8)
    video = torch.from_numpy(np.stack([decode_clip(r["path"], 4, 32) for r in rows]))
    labels = {lvl: torch.tensor([taxonomy.index(lvl)[r[lvl]] for r in rows]) for lvl in LEVELS}
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        out = model(video)
        loss = sum(F.cross_entropy(out.logits[lvl], labels[lvl]) for lvl in LEVELS)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(
        folder,
        model=model.eval(),
        optimizer=optimizer,
        epoch=0,
        metrics={},
        config=cfg,
        taxonomy=taxonomy,
        text_dim=8,
        extra=extra,
    )
    return taxonomy
