"""Training-step throughput, peak memory and model FLOPs utilization (MFU) of the paper's
configuration: VideoMAE ViT-S, 16 frames at 224x224, batch 12, all four heads + SCA + TLA.

    .venv/bin/python benchmarks/train_step.py                 # GPU when present, else CPU
    .venv/bin/python benchmarks/train_step.py --compile       # + torch.compile
    .venv/bin/python benchmarks/train_step.py --precision fp32

It runs the same forward_backward / optimizer_step as training (cg_ray.train.worker), on uint8 clips
copied from pinned memory and normalized on the device. FLOPs are counted by
torch.utils.flop_counter on one step; MFU = achieved FLOP/s / the GPU's dense bf16 peak.

The last line of stdout is one JSON object with the figures.
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cg_ray.config import config_from_dict  # noqa: E402
from cg_ray.model.net import build_model  # noqa: E402
from cg_ray.taxonomy import LEVELS  # noqa: E402
from cg_ray.train.optim import build_optimizer, build_schedule  # noqa: E402
from cg_ray.train.worker import TrainState, forward_backward, optimizer_step  # noqa: E402

SIZES = [166, 157, 91, 6]  # CityGuessr68k
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A6000": 155e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def make_batch(batch: int, frames: int, size: int, device: torch.device) -> dict:
    video = torch.randint(0, 256, (batch, frames, size, size, 3), dtype=torch.uint8)
    if device.type == "cuda":
        video = video.pin_memory()
    scenes = torch.rand(batch, 16)
    out = {
        "video": video.to(device, non_blocking=True),
        "valid": torch.ones(batch, dtype=torch.bool, device=device),
        "scene": (scenes / scenes.sum(1, keepdim=True)).to(device),
    }
    for level, n in zip(LEVELS, SIZES):
        out[level] = torch.randint(0, n, (batch,), device=device)
    return out


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = args.steps or (20 if device.type == "cuda" else 2)
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 1)
    cfg = config_from_dict({}, [f"train.precision={args.precision}", f"train.batch_size={args.batch}"])
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    torch.manual_seed(0)
    model = build_model(cfg, SIZES, text_dim=512).to(device)
    if args.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(model, cfg.optim)
    tables = {
        lvl: torch.nn.functional.normalize(torch.randn(n, 512, device=device), dim=-1)
        for lvl, n in zip(LEVELS, SIZES)
    }
    state = TrainState(
        model, optimizer, build_schedule(optimizer, cfg.optim, 10**6), cfg, device, tables, bf16
    )
    batch = make_batch(args.batch, cfg.data.num_frames, cfg.data.image_size, device)

    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        forward_backward(state, batch)
    flops_per_step = counter.get_total_flops()
    optimizer.zero_grad(set_to_none=True)

    def step():
        fresh = make_batch(args.batch, cfg.data.num_frames, cfg.data.image_size, device)
        forward_backward(state, fresh)
        optimizer_step(state)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps

    name = (
        torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    )
    achieved = flops_per_step / seconds
    print(f"device: {name}   precision: {'bf16' if bf16 else 'fp32'}   compile: {args.compile}")
    print(
        f"config: VideoMAE ViT-S, {cfg.data.num_frames}x{cfg.data.image_size}x{cfg.data.image_size}, "
        f"batch {args.batch}, SCA + TLA, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params"
    )
    print(f"step time: {seconds * 1000:.1f} ms   throughput: {args.batch / seconds:.1f} clips/s")
    print(
        f"model FLOPs per step (fwd+bwd): {flops_per_step / 1e12:.3f} TFLOP   "
        f"achieved: {achieved / 1e12:.2f} TFLOP/s"
    )
    result = {
        "device": name,
        "precision": "bf16" if bf16 else "fp32",
        "compile": args.compile,
        "batch": args.batch,
        "step_ms": round(seconds * 1000, 1),
        "clips_per_s": round(args.batch / seconds, 2),
        "tflop_per_step": round(flops_per_step / 1e12, 3),
        "achieved_tflop_per_s": round(achieved / 1e12, 2),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        print(f"peak GPU memory: {result['peak_gpu_memory_gib']:.2f} GiB")
        peak = peak_flops(name)
        result["mfu"] = round(achieved / peak, 4) if peak else None
        print(
            f"MFU: {100 * achieved / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s dense bf16"
            if peak
            else "MFU: unknown GPU peak"
        )
    else:
        result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        print(f"peak RSS: {result['peak_rss_mib']} MiB   MFU: n/a on CPU")
    print_result(result)


if __name__ == "__main__":
    main()
