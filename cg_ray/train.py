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
import random
import tempfile
import time
from contextlib import nullcontext
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
from cg_ray.secrets import redact, redact_tree
from cg_ray.optim import build_optimizer, build_schedule
from cg_ray.taxonomy import LEVELS, Taxonomy

log = logging.getLogger(__name__)


# -- the worker side --------------------------------------------------------------------------


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


def _all_reduce(values: np.ndarray) -> np.ndarray:
    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.as_tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.numpy()


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def forward_backward(state: TrainState, batch: dict[str, torch.Tensor], scale: float = 1.0) -> dict[str, float]:
    """Forward under autocast, losses, backward of loss * scale (scale = 1 / accumulation).

    Clips that failed to decode (valid = False) are left out of the loss; a batch without any
    valid clip still runs backward (of zero) so that DDP's gradient sync stays in step."""
    valid = batch["valid"]
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
    target = (text_targets(state.text_tables, labels, state.cfg.model.tla.levels)
              if state.text_tables is not None else None)
    losses = compute_losses(out, labels, state.cfg.loss, batch["scene"][valid], target)
    (losses["loss"] * scale).backward()
    return {k: float(v.detach()) for k, v in losses.items()}


def optimizer_step(state: TrainState) -> None:
    if state.cfg.train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(state.model.parameters(), state.cfg.train.grad_clip)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.scheduler.step()
    state.step += 1


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


def train_epoch(state: TrainState, shard, epoch: int, rank: int) -> dict[str, float]:
    state.model.train()
    accum = state.cfg.train.grad_accum_steps
    sums: dict[str, float] = {}
    micro, clips, bad, start = 0, 0, 0, time.perf_counter()
    batches = shard.iter_torch_batches(batch_size=state.cfg.train.batch_size, device=state.device,
                                       pin_memory=state.device.type == "cuda")
    for batch, last in _with_last(batches):
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
        if rank == 0 and micro % state.cfg.train.log_every == 0:
            print(f"epoch {epoch} batch {micro} loss {losses.get('loss', float('nan')):.4f}", flush=True)
    elapsed = time.perf_counter() - start
    keys = sorted(sums)
    totals = _all_reduce(np.array([sums[k] for k in keys] + [micro, clips, bad, elapsed]))
    world_batches = max(totals[len(keys)], 1)
    metrics = {f"train_{k}": totals[i] / world_batches for i, k in enumerate(keys)}
    seen, bad_total = totals[len(keys) + 1], totals[len(keys) + 2]
    world = dist.get_world_size() if dist.is_initialized() else 1
    metrics.update(train_clips=seen, bad_clips=bad_total, lr=state.scheduler.get_last_lr()[0],
                   train_clips_per_s=seen / max(totals[-1] / world, 1e-9))
    return metrics


@torch.no_grad()
def evaluate_epoch(model: torch.nn.Module, shard, taxonomy: Taxonomy, mode: str,
                   batch_size: int, device: torch.device, bf16: bool = False) -> dict[str, float]:
    model.eval()
    accuracy = Accuracy(taxonomy, mode)
    for batch in shard.iter_torch_batches(batch_size=batch_size, device=device):
        valid = batch["valid"]
        if not bool(valid.any()):
            continue
        with _autocast(device, bf16):
            out = model(batch["video"][valid])
        probs = {level: torch.softmax(out.logits[level].float(), dim=-1) for level in LEVELS}
        accuracy.update(probs, {level: batch[level][valid] for level in LEVELS})
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
    model = build_model(cfg, taxonomy.sizes, text_dim)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_schedule(optimizer, cfg.optim, loop_config["total_steps"])
    start_epoch, step = 0, 0
    checkpoint = _newest(ray.train.get_checkpoint(), latest_checkpoint(loop_config["run_dir"]))
    if checkpoint is not None:  # a resumed run or a restarted worker group
        with checkpoint.as_directory() as folder:
            saved = torch.load(os.path.join(folder, "checkpoint.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        start_epoch, step = saved["epoch"] + 1, saved["step"]
    model.to(device)
    if cfg.train.compile:
        model = torch.compile(model)
    model = ray.train.torch.prepare_model(model, move_to_device=False)
    text_tables = {k: torch.tensor(v, device=device) for k, v in tables.items()} if tables else None
    bf16 = _uses_bf16(cfg, device)
    state = TrainState(model, optimizer, scheduler, cfg, device, text_tables, bf16, step)
    uri, run_id = loop_config["tracking_uri"], loop_config["run_id"]
    monitor = tracking.system_metrics(uri, run_id) if rank == 0 else None
    if rank == 0 and checkpoint is not None:
        # The checkpointed epoch's metrics, in case its process died before logging them; and a
        # visible trace of every resume or worker-group restart, at the epoch it started from.
        tracking.log_epoch(uri, run_id, saved["metrics"], saved["epoch"])
        tracking.log_metrics(uri, run_id, {"resumed_at_epoch": start_epoch}, step=start_epoch)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    try:
        for epoch in range(start_epoch, cfg.train.epochs):
            # Randomness is a function of (seed, epoch, rank): a resumed epoch draws the same.
            _seed_everything(cfg.train.seed + 1000 * epoch + rank)
            metrics = train_epoch(state, train_shard, epoch, rank)
            # The bare module: a DDP forward syncs buffers, and val shards are uneven across workers.
            metrics.update(evaluate_epoch(_unwrap(model), val_shard, taxonomy, cfg.eval.mode,
                                          cfg.eval.batch_size, device, bf16))
            metrics.update(epoch=epoch, step=state.step)
            _check_bad_fraction(metrics, cfg.data.max_bad_fraction)
            _report(state, metrics, taxonomy, text_dim, rank, loop_config)
    finally:
        if monitor is not None:
            monitor.finish()


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
        raise RuntimeError(f"{UserError.__name__}: {int(metrics['bad_clips'])} of {int(seen)} "
                           f"training clips could not be decoded (more than data.max_bad_fraction="
                           f"{limit}); see the worker log for which")


def _report(state: TrainState, metrics: dict, taxonomy: Taxonomy, text_dim: int, rank: int,
            loop_config: dict) -> None:
    """Checkpoint (rank 0 writes it), report to Ray Train, then log to MLflow: logging after
    the checkpoint is persisted means a resumed run never logs an epoch twice."""
    import ray.train

    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            save_checkpoint(folder, model=_unwrap(state.model), optimizer=state.optimizer,
                            epoch=int(metrics["epoch"]), metrics=metrics, config=state.cfg,
                            taxonomy=taxonomy, text_dim=text_dim,
                            extra={"mlflow_run_id": loop_config["run_id"], "step": state.step,
                                   "mlflow_tracking_uri": redact(loop_config["tracking_uri"]),
                                   "scheduler": state.scheduler.state_dict()})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder)
                         if rank == 0 else None)
    if rank == 0:
        # Idempotent: an epoch re-run after a failure is never logged twice.
        tracking.log_epoch(loop_config["tracking_uri"], loop_config["run_id"], metrics,
                           int(metrics["epoch"]))
        shown = " ".join(f"{k}={v:.2f}" for k, v in metrics.items()
                         if k.endswith("top1") or k == "train_loss")
        print(f"epoch {int(metrics['epoch'])}: {shown}", flush=True)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = model.module if hasattr(model, "module") else model  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


# -- the driver side --------------------------------------------------------------------------


class ValSplitDataConfig(DataConfig):
    """The training split in equal shards (every worker takes the same number of DDP steps),
    the val split in unequal shards so that every clip is evaluated exactly once."""

    def _resolve_execution_options(self, dataset_name: str):
        options = super()._resolve_execution_options(dataset_name)
        # Blocks in a fixed order: with the seeded shuffle, a run is reproducible and a resumed
        # epoch sees the same clips in the same order.
        options.preserve_order = True
        return options

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


# Keys that may change when a run resumes; any other difference means another experiment.
RESUMABLE_CHANGES = {"train.epochs", "train.max_failures", "train.log_every", "train.num_workers",
                     "train.cpus_per_worker", "train.use_gpu", "train.keep_best", "data.path",
                     "data.max_bad_fraction", "eval.batch_size", "run.tracking_uri",
                     "run.register_as", "run.storage_path"}


def latest_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint folder of a run (Ray names them by time), or None."""
    entries = [e for e in storage.list_dir(run_dir)
               if e.base_name.startswith("checkpoint_") and e.type.name == "Directory"]
    for entry in sorted(entries, key=lambda e: e.base_name, reverse=True):
        folder = storage.uri_of(run_dir, entry.path)
        if storage.exists(storage.join(folder, "checkpoint.pt")):  # complete
            return folder
    return None


def check_resumable(state: dict, cfg: Config, taxonomy: Taxonomy, where: str) -> None:
    """Refuse to continue a checkpoint of another experiment, naming what differs."""
    differences = Taxonomy.from_dict(state["taxonomy"]).differences(taxonomy)
    if differences:
        raise UserError(f"cannot resume {where}: its taxonomy differs from the dataset's: "
                        f"{differences[0]}")
    old = tracking.flatten(state["config"])
    new = tracking.flatten(redact_tree(cfg.to_dict()))
    changed = sorted(k for k in set(old) | set(new)
                     if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
                     and not k.startswith("tune."))  # search settings: not the run's
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise UserError(f"cannot resume {where} with a different config ({shown}); use another "
                        f"run.name to start a new run")


def _steps_per_epoch(cfg: Config, train_clips: int) -> int:
    per_worker = train_clips // cfg.train.num_workers
    batches = -(-per_worker // cfg.train.batch_size)
    return max(-(-batches // cfg.train.grad_accum_steps), 1)


def train(cfg: Config, resume: bool = False, *, callbacks: list | None = None,
          run_tags: dict | None = None) -> dict:
    """Fit a model as the config says; returns the final metrics, checkpoint and MLflow run id.

    A run whose folder (run.storage_path/run.name) already holds checkpoints continues from the
    latest one, in the same MLflow run; `resume=True` insists that there is one. `callbacks` go
    to the trainer's RunConfig and `run_tags` onto a new MLflow run (cg_ray.tune: a trial's
    TuneReportCallback and its parent run).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from cg_ray.checkpoint import read_checkpoint
    from cg_ray.data.stream import clip_dataset, split_summary
    from cg_ray.ray_env import init_ray

    taxonomy, tables = check_inputs(cfg)
    storage_path = cfg.run.storage_path
    if not storage.is_uri(storage_path):
        storage_path = os.path.abspath(storage_path)  # Ray Train refuses relative paths
    run_dir = storage.join(storage_path, cfg.run.name)
    uri = tracking.tracking_uri(cfg.run.tracking_uri)
    tracking.check_reachable(uri)

    previous = latest_checkpoint(run_dir)
    if resume and previous is None:
        raise UserError(f"nothing to resume: no checkpoint under {run_dir}")
    start_epoch = 0
    if previous is not None:
        state = read_checkpoint(previous)
        check_resumable(state, cfg, taxonomy, previous)
        run_id, start_epoch = state["mlflow_run_id"], state["epoch"] + 1
        tracking.reopen_run(uri, run_id)
        tracking.log_epoch(uri, run_id, state["metrics"], state["epoch"])
        print(f"resuming {cfg.run.name} after epoch {state['epoch']} (MLflow run {run_id})", flush=True)
    else:
        run_id = tracking.start_run(uri, cfg.run.experiment, cfg.run.name, cfg.to_dict(),
                                    tags={"cg_ray.data": cfg.data.path, **(run_tags or {})})
        tracking.log_text(uri, run_id, cfg.to_yaml(), "config.yaml")
        tracking.log_text(uri, run_id, taxonomy.to_json(), "taxonomy.json")

    init_ray(min_cpus=cfg.train.num_workers * cfg.train.cpus_per_worker + 2)
    use_gpu = cfg.train.use_gpu
    if use_gpu is None:
        import ray

        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    d = cfg.data
    datasets = {
        # Decoded blocks of one batch each: the step's batches are then zero-copy views.
        "train": clip_dataset(d.path, d.train_split, taxonomy, d.num_frames, d.image_size,
                              d.scene_labels, shuffle_seed=cfg.train.seed,
                              decode_batch_size=cfg.train.batch_size),
        "val": clip_dataset(d.path, d.val_split, taxonomy, d.num_frames, d.image_size, d.scene_labels,
                            decode_batch_size=cfg.eval.batch_size),
    }
    # Ray Data re-seeds the shuffle on every execution (one per epoch) from a counter on the
    # dataset's context; starting it at the resumed epoch gives that epoch its own order again.
    datasets["train"].context._execution_idx = start_epoch
    total_steps = _steps_per_epoch(cfg, split_summary(d.path)[d.train_split]) * cfg.train.epochs
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"config": cfg.to_dict(), "taxonomy": taxonomy.to_dict(),
                           "text_tables": tables, "tracking_uri": uri, "run_id": run_id,
                           "total_steps": total_steps, "run_dir": run_dir},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers, use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=cfg.run.name, storage_path=storage.ray_storage(storage_path)[1],
            storage_filesystem=storage.ray_storage(storage_path)[0],  # s3: endpoint and keys from env
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=list(callbacks or []),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_best, checkpoint_score_attribute="city_top1",
                checkpoint_score_order="max")),
        datasets=datasets,
        dataset_config=ValSplitDataConfig(),
    )
    try:
        result = trainer.fit()
    except Exception as exc:
        tracking.end_run(uri, run_id, "FAILED")
        raise _user_error_from(exc) from None
    return _finish(cfg, result, uri, run_id, storage_path)


def _finish(cfg: Config, result, uri: str, run_id: str, storage_path: str) -> dict:
    """Artifacts, registration and the summary of a finished fit."""
    from cg_ray.registry import register_checkpoint

    latest = storage.uri_of(storage_path, result.checkpoint.path)  # s3: the s3:// URI again
    best = result.get_best_checkpoint(metric="city_top1", mode="max")
    best_path = storage.uri_of(storage_path, best.path) if best is not None else latest
    _prune_unregistered(result, storage_path, cfg.run.name)
    summary = {**result.metrics, "checkpoint": latest, "best_checkpoint": best_path, "run_id": run_id}
    if not storage.is_uri(storage_path):
        tracking.log_artifacts(uri, run_id, latest, "checkpoint")
        if cfg.run.register_as:
            summary["registered_version"] = register_checkpoint(uri, run_id, best_path,
                                                                cfg.run.register_as)
            summary["registered_model"] = f"models:/{cfg.run.register_as}/{summary['registered_version']}"
    tracking.end_run(uri, run_id)
    return summary


def _prune_unregistered(result, storage_path: str, name: str) -> None:
    """Keep exactly what Ray Train retained (the best k and the latest): a checkpoint written
    just before a process was killed may have escaped its bookkeeping."""
    kept = {c.path.rstrip("/") for c, _ in result.best_checkpoints}
    kept.add(result.checkpoint.path.rstrip("/"))
    run_dir = storage.join(storage_path, name)
    fs, _ = storage.filesystem(run_dir)
    for entry in storage.list_dir(run_dir):  # entry.path: inside the filesystem, as Ray's paths
        if (entry.base_name.startswith("checkpoint_") and entry.type.name == "Directory"
                and entry.path.rstrip("/") not in kept):
            fs.delete_dir(entry.path)


def _user_error_from(exc: Exception) -> Exception:
    """A training failure whose root is bad input becomes a one-line UserError."""
    text = str(exc)
    marker = f"{UserError.__name__}: "
    if marker in text:
        return UserError(text.split(marker, 1)[1].splitlines()[0])
    return exc
