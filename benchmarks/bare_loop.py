"""The training step of `cg-ray train`, in a bare PyTorch loop: no Ray, one process.

    bare_loop(cfg, data_path, steps=50, warmup=5, device="cuda", decode="gpu")

It reads the same packed shards (pyarrow), decodes each batch in the loop (CPU: the JPEG decoder
Ray Data's tasks use; GPU: cg_ray.data.gpu_decode, as a training worker with data.decode=gpu),
and runs the worker's own forward_backward + optimizer_step (cg_ray.train.worker). What Ray
Train adds on top of this is its overhead.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cg_ray.config import Config  # noqa: E402
from cg_ray.data.gpu_decode import decode_video, jpeg_batch  # noqa: E402
from cg_ray.data.prepared import PreparedDataset  # noqa: E402
from cg_ray.data.shards import STREAM_COLUMNS, decode_packed_batch, packed_files  # noqa: E402
from cg_ray.model.net import build_model  # noqa: E402
from cg_ray.taxonomy import LEVELS  # noqa: E402
from cg_ray.train.optim import build_optimizer, build_schedule  # noqa: E402
from cg_ray.train.worker import TrainState, forward_backward, optimizer_step  # noqa: E402


def batches(cfg: Config, data_path: str, device: torch.device, decode: str):
    """Endless batches of the training split as the worker gets them, on `device`."""
    taxonomy = PreparedDataset(data_path).taxonomy
    d = cfg.data
    files = packed_files(data_path, d.train_split, d.num_frames, d.image_size)
    if not files:
        raise SystemExit(f"{data_path} has no pack for {d.num_frames} frames at {d.image_size}")
    args = dict(
        label_ids={level: taxonomy.index(level) for level in LEVELS},
        num_frames=d.num_frames,
        image_size=d.image_size,
        scene_labels=d.scene_labels,
        keep_ids=False,
    )
    size = cfg.train.batch_size
    while True:
        for path in files:
            table = pq.read_table(path, columns=STREAM_COLUMNS)
            for start in range(0, table.num_rows - size + 1, size):
                rows = table.slice(start, size)
                if decode == "gpu":
                    raw = jpeg_batch(rows, **args)
                    video, valid = decode_video(
                        raw["jpeg"], raw["jpeg_offsets"], raw["valid"], d.image_size, device
                    )
                    raw.update(video=video, valid=valid)
                else:
                    raw = decode_packed_batch(rows, **args)
                yield {
                    k: torch.as_tensor(v).to(device, non_blocking=True)
                    for k, v in raw.items()
                    if k not in ("jpeg", "jpeg_offsets")
                }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_loop(
    cfg: Config,
    data_path: str,
    steps: int,
    warmup: int,
    device: str = "cpu",
    decode: str = "cpu",
    count_flops: bool = False,
) -> dict:
    """Steady-state clips/s of `steps` steps after `warmup`; FLOPs of one step when asked."""

    device = torch.device(device)
    torch.manual_seed(cfg.train.seed)
    dataset = PreparedDataset(data_path)
    taxonomy = dataset.taxonomy
    tables = dataset.text_tables if cfg.model.tla.enabled else None
    text_dim = next(iter(tables.values())).shape[1] if tables else 512
    model = build_model(cfg, taxonomy.sizes, text_dim).to(device)
    if cfg.train.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(model, cfg.optim)
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    text = {k: torch.tensor(v, device=device) for k, v in tables.items()} if tables else None
    state = TrainState(model, optimizer, build_schedule(optimizer, cfg.optim, 10**6), cfg, device, text, bf16)
    stream = batches(cfg, data_path, device, decode)
    flops = None
    if count_flops:
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            forward_backward(state, next(stream))
        optimizer.zero_grad(set_to_none=True)
        flops = counter.get_total_flops()
    for _ in range(warmup):
        forward_backward(state, next(stream))
        optimizer_step(state)
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start, wait = time.perf_counter(), 0.0
    for _ in range(steps):
        before = time.perf_counter()
        batch = next(stream)
        wait += time.perf_counter() - before
        forward_backward(state, batch)
        optimizer_step(state)
    _sync(device)
    seconds = time.perf_counter() - start
    clips = steps * cfg.train.batch_size
    out = {
        "clips_per_s": round(clips / seconds, 2),
        "steps_per_s": round(steps / seconds, 3),
        "step_ms": round(1000 * seconds / steps, 2),
        "steps": steps,
        "warmup": warmup,
        "data_fraction": round(wait / seconds, 3),
        "decode": decode,
        "bf16": bf16,
        "threads": torch.get_num_threads(),
    }
    if flops is not None:
        out["flops_per_clip"] = flops / cfg.train.batch_size
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del stream
    return out
