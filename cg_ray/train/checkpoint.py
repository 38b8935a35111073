"""Checkpoints: one folder holding `checkpoint.pt` (model, optimizer, epoch, metrics, config,
taxonomy) plus `config.yaml` and `taxonomy.json` for people and other tools."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from cg_ray import storage
from cg_ray.config import Config, config_from_dict
from cg_ray.errors import UserError
from cg_ray.model.net import CityGuessrNet, build_model
from cg_ray.secrets import redact_tree
from cg_ray.taxonomy import Taxonomy

FILENAME = "checkpoint.pt"
# Written last: the size of every other file. Ray Train copies a reported checkpoint into the
# run's storage file by file, so a driver killed mid-copy leaves a folder whose checkpoint.pt is
# cut short; a folder is complete only when every file it lists has its listed size.
FILES = "files.json"


def save_checkpoint(
    folder: str,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    epoch: int,
    metrics: dict,
    config: Config,
    taxonomy: Taxonomy,
    text_dim: int,
    extra: dict | None = None,
) -> str:
    os.makedirs(folder, exist_ok=True)
    state = {
        "format": "cg_ray/1",
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "epoch": epoch,
        "metrics": metrics,
        # Secrets never reach a checkpoint: it is logged to MLflow and shared with people.
        "config": redact_tree(config.to_dict()),
        "taxonomy": taxonomy.to_dict(),
        "text_dim": text_dim,
        "backbone_arch": model.backbone.arch(),
        **(extra or {}),
    }
    torch.save(state, os.path.join(folder, FILENAME))
    with open(os.path.join(folder, "config.yaml"), "w") as f:
        f.write(yaml.safe_dump(state["config"], sort_keys=False))
    with open(os.path.join(folder, "taxonomy.json"), "w") as f:
        f.write(taxonomy.to_json())
    sizes = {
        name: os.path.getsize(os.path.join(folder, name))
        for name in sorted(os.listdir(folder))
        if name != FILES
    }
    with open(os.path.join(folder, FILES), "w") as f:
        json.dump(sizes, f)
    return folder


def read_checkpoint(path: str) -> dict[str, Any]:
    """The saved dict from a checkpoint folder or its checkpoint.pt; a clear error otherwise.
    A URI (s3://bucket/runs/name/checkpoint_...) is downloaded to a temporary folder first."""
    from cg_ray import storage

    if storage.is_uri(path) and not path.startswith("file://"):
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cg_ray-ckpt-") as local:
            try:
                return read_checkpoint(storage.download(path, local))
            except UserError as exc:  # name the URI, not the temporary copy
                raise UserError(str(exc).replace(local, path.rstrip("/").rsplit("/", 1)[0])) from None
    file = os.path.join(path, FILENAME) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise UserError(f"checkpoint '{path}' does not exist (expected a folder with {FILENAME})")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        raise UserError(f"'{path}' is not a cg_ray checkpoint ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != "cg_ray/1":
        raise UserError(f"'{path}' is not a cg_ray checkpoint (no 'format: cg_ray/1' key)")
    return state


@dataclass
class LoadedModel:
    model: CityGuessrNet
    config: Config
    taxonomy: Taxonomy
    epoch: int


def restore_training(
    saved: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, ema=None
) -> tuple[int, int]:
    """Load a training checkpoint's state into a fresh model, optimizer (its parameter groups
    with their lrs), schedule and EMA; returns (first epoch to run, optimizer step). A checkpoint
    written without EMA starts the average from the restored weights."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    if ema is not None:
        if saved.get("ema"):
            ema.load_state_dict(saved["ema"])
        else:
            ema.module.load_state_dict(model.state_dict())
    return int(saved["epoch"]) + 1, int(saved["step"])


def load_model(path: str) -> LoadedModel:
    """Rebuild the network of a checkpoint from its own config and taxonomy, weights loaded:
    the EMA weights when the run kept an EMA (train.ema), else the live ones."""
    state = read_checkpoint(path)
    config = config_from_dict(state["config"])
    taxonomy = Taxonomy.from_dict(state["taxonomy"])
    # The saved architecture rebuilds the backbone without fetching its pretrained weights again.
    model = build_model(
        config, taxonomy.sizes, state["text_dim"], state["backbone_arch"], parents=taxonomy.parents
    )
    model.load_state_dict(state["ema"]["model"] if state.get("ema") else state["model"])
    model.eval()
    return LoadedModel(model, config, taxonomy, int(state["epoch"]))


def config_yaml(state: dict) -> str:
    return yaml.safe_dump(state["config"], sort_keys=False)


def is_complete(folder: str) -> bool:
    """Every file the checkpoint folder (local or s3://) lists in files.json, at its full size."""
    path = storage.join(folder, FILES)
    if not storage.exists(path):
        return False
    try:
        sizes = json.loads(storage.read_text(path))
    except ValueError:  # files.json itself cut short
        return False
    fs, inner = storage.filesystem(folder)
    infos = fs.get_file_info([f"{inner.rstrip('/')}/{name}" for name in sizes])
    return all(info.size == size for info, size in zip(infos, sizes.values()))


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest complete checkpoint folder of a run (Ray names them by time), or None."""
    entries = [
        e
        for e in storage.list_dir(run_dir)
        if e.base_name.startswith("checkpoint_") and e.type.name == "Directory"
    ]
    for entry in sorted(entries, key=lambda e: e.base_name, reverse=True):
        folder = storage.uri_of(run_dir, entry.path)
        if is_complete(folder):
            return folder
    return None
