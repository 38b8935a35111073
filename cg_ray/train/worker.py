"""The per-worker side of training: what every Ray Train worker runs (DDP).

train_loop()            one worker: model, optimizer, epochs, checkpoints, reports
  train_epoch()         steps over this worker's shard of the training split
    forward_backward()  forward, losses, backward (bf16 autocast on GPU)
    optimizer_step()    clipping, optimizer and schedule step
  evaluate_epoch()      this worker's shard of the val split -> accuracy counts
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from cg_ray import tracking
from cg_ray.config import Config, config_from_dict
from cg_ray.console import Progress
from cg_ray.data.feed import DeviceFeed
from cg_ray.errors import UserError
from cg_ray.evaluation import Accuracy, view_probs
from cg_ray.model.losses import compute_losses, text_targets
from cg_ray.model.net import build_model
from cg_ray.secrets import redact
from cg_ray.taxonomy import LEVELS, Taxonomy
from cg_ray.train.checkpoint import latest_checkpoint, restore_training, save_checkpoint
from cg_ray.train.ema import WeightEMA, build_ema
from cg_ray.train.optim import build_optimizer, build_schedule


@dataclass
class TrainState:
    """What one worker's step needs."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    cfg: Config
    device: torch.device
    text_tables: dict[str, torch.Tensor] | None
    bf16: bool
    step: int = 0
    ema: WeightEMA | None = None
    """EMA of the weights (train.ema), updated after every optimizer step."""
    parents: dict[str, torch.Tensor] | None = None
    """Parent ids per child level (the consistency loss)."""
    augment: torch.Generator | None = None
    """Draws of data.augment; made from the epoch's seeded RNG on first use."""


def _all_reduce(values: np.ndarray) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.as_tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.numpy()


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def forward_backward(
    state: TrainState, batch: dict[str, torch.Tensor], scale: float = 1.0
) -> dict[str, float]:
    """Forward under autocast, losses, backward of loss * scale (scale = 1 / accumulation).

    Clips that failed to decode (valid = False) are left out of the loss; a batch without any
    valid clip still runs backward (of zero) so that DDP's gradient sync stays in step."""
    valid = batch["valid"]
    if state.cfg.data.augment.enabled:  # uint8, in place, before the model normalizes
        # Imported here: torchvision's transforms pull in torch._dynamo, 1.4 s of every
        # training worker's start-up when nothing is augmented.
        from cg_ray.data.augment import augment_batch

        if state.augment is None:
            state.augment = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        if batch["video"].device.type == "cpu":
            # On a CPU worker the batch can be a read-only view of Ray's object store: own it
            # once (on a GPU the batch is already the worker's own copy).
            batch["video"] = batch["video"].clone()
        augment_batch(batch["video"], state.cfg.data.augment, state.augment)
    with _autocast(state.device, state.bf16):
        out = state.model(batch["video"])
    if not bool(valid.any()):
        (sum(v.sum() for v in out.logits.values()) * 0.0).backward()
        return {}
    if not bool(valid.all()):
        out.logits = {k: v[valid] for k, v in out.logits.items()}
        out.scene_logits = out.scene_logits[valid] if out.scene_logits is not None else None
        out.text_embedding = out.text_embedding[valid] if out.text_embedding is not None else None
    labels = {level: batch[level][valid] for level in LEVELS}
    target = (
        text_targets(state.text_tables, labels, state.cfg.model.tla.levels)
        if state.text_tables is not None
        else None
    )
    losses = compute_losses(out, labels, state.cfg.loss, batch["scene"][valid], target, state.parents)
    (losses["loss"] * scale).backward()
    return {k: float(v.detach()) for k, v in losses.items()}


def optimizer_step(state: TrainState) -> None:
    if state.cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.cfg.train.grad_clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.step += 1
    if state.ema is not None:
        state.ema.update(_unwrap(state.model))


def eval_module(state: TrainState) -> torch.nn.Module:
    """What an epoch evaluates: the EMA weights when the run keeps them, else the bare live
    module (a DDP forward syncs buffers, and val shards are uneven across workers)."""
    return state.ema.module if state.ema is not None else _unwrap(state.model)


def _with_last(iterable):
    """(item, is_last) pairs: the last micro-batch of an epoch must sync gradients."""
    iterator = iter(iterable)
    try:
        current = next(iterator)
    except StopIteration:
        return
    for upcoming in iterator:
        yield current, False
        current = upcoming
    yield current, True


def train_epoch(
    state: TrainState, shard, epoch: int, rank: int, progress: Progress | None = None
) -> dict[str, float]:
    state.model.train()
    state.augment = None  # this epoch's augmentation draws come from its seeded RNG
    accum = state.cfg.train.grad_accum_steps
    sums: dict[str, float] = {}
    micro, clips, bad, start = 0, 0, 0, time.perf_counter()
    feed = DeviceFeed(shard, state.cfg.train.batch_size, state.device)
    for batch, last in _with_last(feed):
        micro += 1
        boundary = last or micro % accum == 0
        # Between optimizer steps, DDP need not all-reduce gradients: no_sync skips it.
        sync = nullcontext() if boundary or not hasattr(state.model, "no_sync") else state.model.no_sync()
        with sync:
            losses = forward_backward(state, batch, 1.0 / accum)
        if boundary:
            optimizer_step(state)
        for key, value in losses.items():
            sums[key] = sums.get(key, 0.0) + value
        clips += int(batch["valid"].sum())
        bad += int((~batch["valid"]).sum())
        if progress is not None:
            progress.update(clips + bad, loss=float(losses.get("loss", float("nan"))))
    if progress is not None:
        progress.close(clips + bad)
    elapsed = time.perf_counter() - start
    keys = sorted(sums)
    totals = _all_reduce(np.array([sums[k] for k in keys] + [micro, clips, bad, elapsed]))
    world_batches = max(totals[len(keys)], 1)
    metrics = {f"train_{k}": totals[i] / world_batches for i, k in enumerate(keys)}
    seen, bad_total = totals[len(keys) + 1], totals[len(keys) + 2]
    world = dist.get_world_size() if dist.is_initialized() else 1
    metrics.update(
        train_clips=seen,
        bad_clips=bad_total,
        lr=max(state.scheduler.get_last_lr()),
        train_clips_per_s=seen / max(totals[-1] / world, 1e-9),
    )
    metrics.update(_feed_metrics(feed, elapsed, clips + bad, state.device))
    return metrics


def _feed_metrics(feed: DeviceFeed, elapsed: float, rows: int, device: torch.device) -> dict:
    """data_wait_fraction: the share of the epoch a worker waited for its batches (mean over
    workers); train_clips_per_s_warm: clips/s after each worker's first batch (the pipeline's
    start-up left out; summed over workers); peak GPU memory of rank 0's device."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    warm = (rows - feed.first_rows) / max(elapsed - feed.first_s, 1e-9)
    wait, warm = _all_reduce(np.array([feed.wait_s / max(elapsed, 1e-9), warm]))
    out = {"data_wait_fraction": wait / world, "train_clips_per_s_warm": warm, "first_batch_s": feed.first_s}
    if device.type == "cuda":
        out["gpu_peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


@torch.no_grad()
def evaluate_epoch(
    model: torch.nn.Module,
    shard,
    taxonomy: Taxonomy,
    mode: str,
    batch_size: int,
    device: torch.device,
    bf16: bool = False,
    progress: Progress | None = None,
    views: int = 1,
) -> dict[str, float]:
    """Accuracy counts of this worker's val shard, summed over workers; with `views` K > 1
    the batches hold K temporal clips per video (B, K, ...), whose softmax outputs are
    averaged before the evaluation mode ranks them."""
    model.eval()
    accuracy = Accuracy(taxonomy, mode)
    for batch in DeviceFeed(shard, batch_size, device):
        valid = batch["valid"]
        if not bool(valid.any()):
            continue
        with _autocast(device, bf16):
            probs = view_probs(model, batch["video"][valid], views)
        accuracy.update(probs, {level: batch[level][valid] for level in LEVELS})
        if progress is not None:
            progress.update(accuracy.total)
    if progress is not None:
        progress.close(accuracy.total)
    accuracy.load_state(_all_reduce(accuracy.state().astype(np.float64)).round().astype(np.int64))
    return {**accuracy.metrics(), "val_clips": float(accuracy.total)}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _uses_bf16(cfg: Config, device: torch.device) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")


def train_loop(loop_config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = config_from_dict(loop_config["config"])
    taxonomy = Taxonomy.from_dict(loop_config["taxonomy"])
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    if device.type == "cuda" and cfg.train.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    _seed_everything(cfg.train.seed)

    tables = loop_config.get("text_tables")
    text_dim = next(iter(tables.values())).shape[1] if tables else 512
    model = build_model(cfg, taxonomy.sizes, text_dim, parents=taxonomy.parents, text_tables=tables)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_schedule(optimizer, cfg.optim, loop_config["total_steps"])
    start_epoch, step = 0, 0
    checkpoint = _newest(ray.train.get_checkpoint(), latest_checkpoint(loop_config["run_dir"]))
    if checkpoint is not None:  # a resumed run or a restarted worker group
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu", weights_only=False)
    ema = build_ema(model, cfg.train.ema)
    if checkpoint is not None:
        start_epoch, step = restore_training(saved, model, optimizer, scheduler, ema)
    model.to(device)
    if ema is not None:
        ema.to(device)
    if cfg.train.compile:
        model = torch.compile(model)
    model = ray.train.torch.prepare_model(model, move_to_device=False)
    text_tables = {k: torch.tensor(v, device=device) for k, v in tables.items()} if tables else None
    bf16 = _uses_bf16(cfg, device)
    state = TrainState(
        model,
        optimizer,
        scheduler,
        cfg,
        device,
        text_tables,
        bf16,
        step,
        ema,
        {k: torch.tensor(v, device=device) for k, v in taxonomy.parents.items()},
    )
    uri, run_id = loop_config["tracking_uri"], loop_config["run_id"]
    if rank == 0:  # its records queue in this process; what MLflow did not take, in the run folder
        tracking.bind(run_id, loop_config["run_dir"])
    monitor = tracking.system_metrics(uri, run_id) if rank == 0 else None
    if rank == 0 and checkpoint is not None:
        # The checkpointed epoch's metrics, in case its process died before logging them; and a
        # visible trace of every resume or worker-group restart, at the epoch it started from.
        tracking.log_epoch(uri, run_id, saved["metrics"], saved["epoch"])
        tracking.log_metrics(uri, run_id, {"resumed_at_epoch": start_epoch}, step=start_epoch)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    try:
        if checkpoint is not None and start_epoch >= cfg.train.epochs:
            # Resumed after its last epoch was checkpointed (stopped or killed before the run
            # closed): nothing to train; that epoch is reported again, so that Ray Train's result
            # and a search (whose trial would otherwise end without a result) see it finished.
            _report(state, saved["metrics"], taxonomy, text_dim, rank, loop_config)
        for epoch in range(start_epoch, cfg.train.epochs):
            # Randomness is a function of (seed, epoch, rank): a resumed epoch draws the same.
            _seed_everything(cfg.train.seed + 1000 * epoch + rank)
            shown = _progress(
                f"epoch {epoch + 1}/{cfg.train.epochs}",
                "train",
                loop_config,
                rank,
                after=cfg.train.epochs - epoch - 1,
            )
            metrics = train_epoch(state, train_shard, epoch, rank, shown)
            # The bare module: a DDP forward syncs buffers, and val shards are uneven across workers.
            metrics.update(
                evaluate_epoch(
                    eval_module(state),
                    val_shard,
                    taxonomy,
                    cfg.eval.mode,
                    cfg.eval.batch_size,
                    device,
                    bf16,
                    _progress(f"evaluate epoch {epoch + 1}", "val", loop_config, rank),
                    views=cfg.eval.views,
                )
            )
            metrics.update(epoch=epoch, step=state.step)
            _check_bad_fraction(metrics, cfg.data.max_bad_fraction)
            _report(state, metrics, taxonomy, text_dim, rank, loop_config)
    finally:
        if monitor is not None:
            monitor.finish()  # waits a little (CG_RAY_TRACKING_HANDOFF_S) for an away server
            tracking.close()  # the rest is journaled: the driver delivers it


def _progress(label: str, split: str, loop_config: dict, rank: int, after: int = 0) -> Progress | None:
    """Rank 0's progress over its share of a split (the driver counted the split's clips)."""
    if rank != 0:
        return None
    import ray.train

    world = ray.train.get_context().get_world_size()
    share = -(-loop_config.get("epoch_clips", {}).get(split, 0) // world)
    return Progress(f"{label} (rank 0 of {world})", share or None, stream=sys.stdout, passes_after=after)


def _newest(reported, folder: str | None):
    """The checkpoint to start from: Ray Train's latest reported one (a restarted worker group,
    or a run Ray restored) or the newest complete folder in the run, whichever is newer. A
    process killed right after a checkpoint was written can leave it unknown to Ray."""
    import ray.train

    found = ray.train.Checkpoint(folder) if folder else None
    candidates = [c for c in (reported, found) if c is not None]
    return max(candidates, key=lambda c: os.path.basename(c.path.rstrip("/")), default=None)


def _check_bad_fraction(metrics: dict, limit: float) -> None:
    seen = metrics["train_clips"] + metrics["bad_clips"]
    if seen and metrics["bad_clips"] / seen > limit:
        raise RuntimeError(
            f"{UserError.__name__}: {int(metrics['bad_clips'])} of {int(seen)} "
            f"training clips could not be decoded (more than data.max_bad_fraction="
            f"{limit}); see the worker log for which"
        )


def _report(
    state: TrainState, metrics: dict, taxonomy: Taxonomy, text_dim: int, rank: int, loop_config: dict
) -> None:
    """Checkpoint (rank 0 writes it), report to Ray Train, then log to MLflow: logging after
    the checkpoint is persisted means a resumed run never logs an epoch twice."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            save_checkpoint(
                folder,
                model=_unwrap(state.model),
                optimizer=state.optimizer,
                epoch=int(metrics["epoch"]),
                metrics=metrics,
                config=state.cfg,
                taxonomy=taxonomy,
                text_dim=text_dim,
                extra={
                    "mlflow_run_id": loop_config["run_id"],
                    "step": state.step,
                    "mlflow_tracking_uri": redact(loop_config["tracking_uri"]),
                    "scheduler": state.scheduler.state_dict(),
                    "ema": state.ema.state_dict() if state.ema is not None else None,
                },
            )
        ray.train.report(
            metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if rank == 0 else None
        )
    if rank == 0:
        # Queued, never blocking; idempotent: an epoch re-run after a failure is logged once.
        tracking.log_epoch(loop_config["tracking_uri"], loop_config["run_id"], metrics, int(metrics["epoch"]))
        shown = " ".join(
            f"{k}={v:.2f}" for k, v in metrics.items() if k.endswith("top1") or k == "train_loss"
        )
        # Written, not printed: Ray Train turns a worker's print into a log record and also
        # tees it to stdout, so each printed line reached the driver twice.
        # Counted as the progress lines count (epoch 1/6), where MLflow's steps start at 0.
        sys.stdout.write(f"epoch {int(metrics['epoch']) + 1}/{state.cfg.train.epochs}: {shown}\n")
        sys.stdout.flush()


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = model.module if hasattr(model, "module") else model  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile
