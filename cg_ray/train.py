"""Training: the per-worker loop (DDP via Ray Train) and the TorchTrainer around it.

    train()                 driver: checks inputs, starts MLflow, builds datasets, fits
      train_loop()          one Ray Train worker: model, optimizer, epochs, checkpoints
        train_epoch()       steps over this worker's shard of the training split
          train_step()      forward, losses, backward, optimizer step
        evaluate_epoch()    this worker's shard of the val split -> accuracy counts
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from ray.train import DataConfig

from cg_ray import storage, tracking
from cg_ray.checkpoint import save_checkpoint
from cg_ray.config import Config, config_from_dict
from cg_ray.errors import UserError
from cg_ray.evaluation import Accuracy
from cg_ray.model.losses import compute_losses, text_targets
from cg_ray.model.net import build_model
from cg_ray.taxonomy import LEVELS, Taxonomy

log = logging.getLogger(__name__)


# -- the worker side --------------------------------------------------------------------------


@dataclass
class StepState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    cfg: Config
    device: torch.device
    text_tables: dict[str, torch.Tensor] | None


def _all_reduce(values: np.ndarray) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.as_tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.numpy()


def train_step(state: StepState, batch: dict[str, torch.Tensor]) -> dict[str, float]:
    """One optimizer step on a batch; clips that failed to decode are left out of the loss."""
    valid = batch["valid"]
    out = state.model(batch["video"])
    if not bool(valid.all()):
        out.logits = {k: v[valid] for k, v in out.logits.items()}
        out.scene_logits = out.scene_logits[valid] if out.scene_logits is not None else None
        out.text_embedding = out.text_embedding[valid] if out.text_embedding is not None else None
    labels = {level: batch[level][valid] for level in LEVELS}
    target = (text_targets(state.text_tables, labels, state.cfg.model.tla.levels)
              if state.text_tables is not None else None)
    losses = compute_losses(out, labels, state.cfg.loss, batch["scene"][valid], target)
    loss = losses["loss"] if bool(valid.any()) else sum(p.sum() for p in out.logits.values()) * 0.0
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    state.optimizer.step()
    return {k: float(v.detach()) for k, v in losses.items()} if bool(valid.any()) else {}


def train_epoch(state: StepState, shard, epoch: int, rank: int) -> dict[str, float]:
    state.model.train()
    sums: dict[str, float] = {}
    steps, clips, bad, start = 0, 0, 0, time.perf_counter()
    for batch in shard.iter_torch_batches(batch_size=state.cfg.train.batch_size, device=state.device):
        losses = train_step(state, batch)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value
        steps += 1
        clips += int(batch["valid"].sum())
        bad += int((~batch["valid"]).sum())
        if rank == 0 and steps % state.cfg.train.log_every == 0:
            print(f"epoch {epoch} step {steps} loss {losses.get('loss', float('nan')):.4f}", flush=True)
    elapsed = time.perf_counter() - start
    keys = sorted(sums)
    totals = _all_reduce(np.array([sums[k] for k in keys] + [steps, clips, bad, elapsed]))
    world_steps = max(totals[len(keys)], 1)
    metrics = {f"train_{k}": totals[i] / world_steps for i, k in enumerate(keys)}
    seen, bad_total = totals[len(keys) + 1], totals[len(keys) + 2]
    world = dist.get_world_size() if dist.is_initialized() else 1
    metrics.update(train_clips=seen, bad_clips=bad_total,
                   train_clips_per_s=seen / max(totals[-1] / world, 1e-9))
    return metrics


@torch.no_grad()
def evaluate_epoch(model: torch.nn.Module, shard, taxonomy: Taxonomy, mode: str,
                   batch_size: int, device: torch.device) -> dict[str, float]:
    model.eval()
    accuracy = Accuracy(taxonomy, mode)
    for batch in shard.iter_torch_batches(batch_size=batch_size, device=device):
        valid = batch["valid"]
        if not bool(valid.any()):
            continue
        out = model(batch["video"][valid])
        probs = {level: torch.softmax(out.logits[level].float(), dim=-1) for level in LEVELS}
        accuracy.update(probs, {level: batch[level][valid] for level in LEVELS})
    accuracy.load_state(_all_reduce(accuracy.state().astype(np.float64)).round().astype(np.int64))
    return {**accuracy.metrics(), "val_clips": float(accuracy.total)}


def train_loop(loop_config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"])
    taxonomy = Taxonomy.from_dict(loop_config["taxonomy"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)

    tables = loop_config.get("text_tables")
    text_dim = next(iter(tables.values())).shape[1] if tables else 512
    model = build_model(cfg, taxonomy.sizes, text_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    start_epoch = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        start_epoch = saved["epoch"] + 1
    model = ray.train.torch.prepare_model(model)
    text_tables = ({k: torch.tensor(v, device=device) for k, v in tables.items()}
                   if tables else None)
    state = StepState(model, optimizer, cfg, device, text_tables)
    uri, run_id = loop_config["tracking_uri"], loop_config["run_id"]

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    for epoch in range(start_epoch, cfg.train.epochs):
        metrics = train_epoch(state, train_shard, epoch, rank)
        # The bare module: a DDP forward syncs buffers, and val shards are uneven across workers.
        metrics.update(evaluate_epoch(_unwrap(model), val_shard, taxonomy, cfg.eval.mode,
                                      cfg.eval.batch_size, device))
        metrics["epoch"] = epoch
        seen = metrics["train_clips"] + metrics["bad_clips"]
        if seen and metrics["bad_clips"] / seen > cfg.data.max_bad_fraction:
            raise RuntimeError(f"{UserError.__name__}: {int(metrics['bad_clips'])} of {int(seen)} "
                               f"training clips could not be decoded (more than data.max_bad_fraction="
                               f"{cfg.data.max_bad_fraction}); see the worker log for which")
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                save_checkpoint(folder, model=_unwrap(model), optimizer=optimizer, epoch=epoch,
                                metrics=metrics, config=cfg, taxonomy=taxonomy, text_dim=text_dim,
                                extra={"mlflow_run_id": run_id})
                tracking.log_metrics(uri, run_id, metrics, step=epoch)
                print(f"epoch {epoch}: " + " ".join(
                    f"{k}={v:.2f}" for k, v in metrics.items() if k.endswith("top1") or k == "train_loss"),
                    flush=True)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder)
                             if rank == 0 else None)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


# -- the driver side --------------------------------------------------------------------------


class ValSplitDataConfig(DataConfig):
    """The training split in equal shards (every worker takes the same number of DDP steps),
    the val split in unequal shards so that every clip is evaluated exactly once."""

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        # Ray Train V2 calls this once per dataset.
        output = [{} for _ in range(world_size)]
        for name, ds in datasets.items():
            if name == "train":
                part = super().configure({name: ds}, world_size, worker_handles, worker_node_ids,
                                         **kwargs)
                for i in range(world_size):
                    output[i][name] = part[i][name]
                continue
            ds = ds.copy(ds)
            ds.context.execution_options = self._resolve_execution_options(name)
            for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                output[i][name] = split
        return output


def check_inputs(cfg: Config) -> tuple[Taxonomy, dict | None]:
    """Everything a run needs, checked before any worker starts: the taxonomy, both splits,
    scene labels when the scene loss is on, text features when TLA is on."""
    from cg_ray.data.stream import has_scene_labels, load_taxonomy, split_summary
    from cg_ray.labels.text import load_text_tables

    if not cfg.data.path:
        raise UserError("no dataset: set data.path (e.g. --set data.path=DEST from `cg-ray prepare`)")
    taxonomy = load_taxonomy(cfg.data.path)
    splits = split_summary(cfg.data.path)
    for split in (cfg.data.train_split, cfg.data.val_split):
        if not splits.get(split):
            raise UserError(f"dataset '{cfg.data.path}' has no clips in split '{split}' "
                            f"(it has: {splits or 'none'})")
    if splits[cfg.data.train_split] < cfg.train.num_workers:
        raise UserError(f"{splits[cfg.data.train_split]} training clips cannot feed "
                        f"train.num_workers={cfg.train.num_workers} workers")
    if cfg.model.sca.enabled and not has_scene_labels(cfg.data.path, cfg.data.train_split):
        raise UserError(f"dataset '{cfg.data.path}' has no scene labels for every training clip: run "
                        f"`cg-ray scenes` on it, or switch the scene loss off with "
                        f"--set model.sca.enabled=false")
    tables = load_text_tables(cfg.data.path, taxonomy) if cfg.model.tla.enabled else None
    return taxonomy, tables


def train(cfg: Config) -> dict:
    """Fit a model as the config says; returns the final metrics, checkpoint and MLflow run id."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from cg_ray.data.stream import clip_dataset
    from cg_ray.ray_env import init_ray

    taxonomy, tables = check_inputs(cfg)
    storage_path = cfg.run.storage_path
    if not storage.is_uri(storage_path):
        storage_path = os.path.abspath(storage_path)  # Ray Train refuses relative paths
    uri = tracking.tracking_uri(cfg.run.tracking_uri)
    run_id = tracking.start_run(uri, cfg.run.experiment, cfg.run.name, cfg.to_dict(),
                                tags={"cg_ray.data": cfg.data.path})
    tracking.log_text(uri, run_id, cfg.to_yaml(), "config.yaml")
    tracking.log_text(uri, run_id, taxonomy.to_json(), "taxonomy.json")

    init_ray(min_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 2)
    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        import ray

        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    d = cfg.data
    datasets = {
        "train": clip_dataset(d.path, d.train_split, taxonomy, d.num_frames, d.image_size,
                              d.scene_labels, shuffle_seed=cfg.train.seed),
        "val": clip_dataset(d.path, d.val_split, taxonomy, d.num_frames, d.image_size, d.scene_labels),
    }
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "taxonomy": taxonomy.to_dict(),
                           "text_tables": tables, "tracking_uri": uri, "run_id": run_id},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(name=cfg.run.name, storage_path=storage_path),
        datasets=datasets,
        dataset_config=ValSplitDataConfig(),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        tracking.end_run(uri, run_id, "FAILED")
        raise _user_error_from(exc) from None
    checkpoint_path = result.checkpoint.path
    if not storage.is_uri(storage_path):
        tracking.log_artifacts(uri, run_id, checkpoint_path, "checkpoint")
    tracking.end_run(uri, run_id)
    return {**result.metrics, "checkpoint": checkpoint_path, "run_id": run_id}


def _user_error_from(exc: Exception) -> Exception:
    """A training failure whose root is bad input becomes a one-line UserError."""
    text = str(exc)
    marker = f"{UserError.__name__}: "
    if marker in text:
        return UserError(text.split(marker, 1)[1].splitlines()[0])
    return exc
