"""Prediction speed on this machine (CPU).

    .venv/bin/python benchmarks/predict.py [--out /tmp/cg_bench_predict] [--batch-clips 48]

Prints, for the paper's model (VideoMAE ViT-S, 16x224x224, SCA + TLA, CityGuessr68k's
166/157/91/6 classes; random weights, same compute) and for the demo model (8x32x32):

  1. single-clip latency: decode, forward and the whole `predict_inputs` (warm, median of 5),
     for a CityGuessr-like clip (100 frames, 1280x720) as an h264 mp4 and as a JPEG frame folder,
     plus the cold `cg-ray predict` command (process start, imports, checkpoint load);
  2. batch prediction with Ray Data (`batch_predict`): clips/s and clips/s per core, over
     h264 mp4 clips of 640x360 with 48 frames.

The last line of stdout is one JSON object with the figures.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cg_ray.config import load_config  # noqa: E402
from cg_ray.data.decode import decode_clip  # noqa: E402
from cg_ray.data.synthetic import _mp4  # noqa: E402
from cg_ray.model.net import build_model  # noqa: E402
from cg_ray.predict.predictor import Predictor, predict_inputs  # noqa: E402
from cg_ray.taxonomy import Taxonomy  # noqa: E402
from cg_ray.train.checkpoint import load_model, save_checkpoint  # noqa: E402

SIZES = (166, 157, 91, 6)  # CityGuessr68k cities, states, countries, continents
MODELS = {
    "paper ViT-S 16x224": [],
    "demo 8x32": [
        "data.num_frames=8",
        "data.image_size=32",
        "model.backbone.hidden_size=64",
        "model.backbone.num_layers=2",
        "model.backbone.num_heads=4",
        "model.backbone.intermediate_size=128",
        "model.backbone.patch_size=8",
    ],
}


def taxonomy() -> Taxonomy:
    """A tree of the CityGuessr68k sizes (names made up): 166 cities under 157 states, ..."""
    rows = []
    for c in range(SIZES[0]):
        s = min(c, SIZES[1] - 1)
        k = min(s, SIZES[2] - 1)
        rows.append(
            {
                "city": f"city{c:03d}",
                "state": f"state{s:03d}",
                "country": f"country{k:02d}",
                "continent": f"continent{k % SIZES[3]}",
            }
        )
    return Taxonomy.from_rows(rows)


def checkpoint(folder: str, overrides: list[str]) -> str:
    cfg = load_config(None, overrides)
    tax = taxonomy()
    model = build_model(cfg, tax.sizes, text_dim=512)
    save_checkpoint(
        folder, model=model, optimizer=None, epoch=0, metrics={}, config=cfg, taxonomy=tax, text_dim=512
    )
    return folder


def frames(n: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: a panning gradient with mild noise; at 1280x720 and 10 fps its h264
    runs at about dashcam bitrates (a few Mbit/s), so decoding costs what real clips cost."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    base = (x * [1.0, 0.3, 0.6] + y * [0.2, 0.8, 0.4]) % 256
    out = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        out[t] = np.clip(np.roll(base, 7 * t, axis=1) + rng.normal(0, 2, base.shape), 0, 255)
    return out


def timed(fn, repeats: int = 5) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds (all threads of this process) of fn()."""
    fn()  # warm-up
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def single_clip(out: str, ckpts: dict[str, str]) -> dict:
    """Prints the table; returns its figures, by model and input."""
    pixels = frames(100, 1280, 720)
    mp4 = os.path.join(out, "clip720p.mp4")
    with open(mp4, "wb") as f:
        f.write(_mp4(pixels, fps=10))
    folder = os.path.join(out, "clip720p_frames")
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(pixels, start=1):
        Image.fromarray(frame).save(os.path.join(folder, f"{t}.jpg"), quality=90)
    print(
        "\n1. single clip, CPU (CityGuessr-like clip: 100 frames 1280x720), warm, median of 5;"
        "\n   wall ms, and in brackets CPU ms of all threads (steadier when the machine is busy)"
    )
    print(
        f"{'model':<20}{'input':<13}{'decode ms':>16}{'forward ms':>16}{'predict ms':>16}{'cold CLI s':>11}"
    )
    figures: dict = {}
    for name, path in ckpts.items():
        predictor = Predictor(load_model(path), "codependent", 5)
        t, s = predictor.num_frames, predictor.image_size
        clip = decode_clip(mp4, t, s)[None]
        forward = timed(lambda: predictor.probs(clip))  # noqa: B023 (timed calls it here)
        for label, source in (("mp4 h264", mp4), ("jpeg folder", folder)):
            decode = timed(lambda: decode_clip(source, t, s))  # noqa: B023
            whole = timed(lambda: predict_inputs(predictor, [source]))  # noqa: B023
            start = time.perf_counter()
            subprocess.run(
                [str(ROOT / ".venv" / "bin" / "cg-ray"), "predict", "--checkpoint", path, source],
                check=True,
                capture_output=True,
            )
            cold = time.perf_counter() - start
            cells = "".join(f"{f'{1000 * w:.0f} ({1000 * c:.0f})':>16}" for w, c in (decode, forward, whole))
            print(f"{name:<20}{label:<13}{cells}{cold:>11.2f}")
            cell = figures.setdefault(name, {})[label] = {"cold_cli_s": round(cold, 2)}
            for step, (w, c) in (("decode", decode), ("forward", forward), ("predict", whole)):
                cell[f"{step}_ms"], cell[f"{step}_cpu_ms"] = round(1000 * w, 1), round(1000 * c, 1)
    return figures


def batch(out: str, ckpts: dict[str, str], clips: int) -> dict:
    """Prints the table; returns its figures, by model."""
    import ray

    from cg_ray.predict.batch import batch_predict
    from cg_ray.ray_env import init_ray

    folder = os.path.join(out, "batch")
    os.makedirs(folder, exist_ok=True)
    for i in range(clips):
        path = os.path.join(folder, f"clip{i:04d}.mp4")
        with open(path, "wb") as f:
            f.write(_mp4(frames(48, 640, 360, seed=i), fps=10))
    init_ray()
    cores = int(ray.cluster_resources().get("CPU", 1))
    print(f"\n2. batch prediction with Ray Data: {clips} mp4 clips (640x360, 48 frames), {cores} CPUs in Ray")
    print(
        f"{'model':<20}{'actors':>7}{'wall s':>8}{'first rows s':>13}{'clips/s':>9}"
        f"{'clips/s/core':>13}{'warm clips/s/core':>18}"
    )
    figures: dict = {"clips": clips, "cpus_in_ray": cores}
    for name, path in ckpts.items():
        s = batch_predict(path, folder, os.path.join(out, "preds.parquet"), batch_size=4, progress_every=1e9)
        # After the first rows are back the actors are up: the rate from there on is the warm one.
        rest = s["seconds"] - s["first_rows_s"]
        warm = f"{(s['clips'] - s['first_rows']) / rest / cores:.2f}" if rest > 1 else "n/a"
        print(
            f"{name:<20}{s['actors']:>7}{s['seconds']:>8.1f}{s['first_rows_s']:>13.1f}"
            f"{s['clips_per_s']:>9.2f}{s['clips_per_s'] / cores:>13.2f}{warm:>18}"
        )
        figures[name] = {
            "actors": s["actors"],
            "seconds": round(s["seconds"], 1),
            "first_rows_s": round(s["first_rows_s"], 1),
            "clips_per_s": round(s["clips_per_s"], 2),
            "clips_per_s_per_core": round(s["clips_per_s"] / cores, 2),
            "warm_clips_per_s_per_core": float(warm) if warm != "n/a" else None,
        }
    return figures


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="/tmp/cg_bench_predict")
    parser.add_argument("--batch-clips", type=int, default=48)
    args = parser.parse_args()
    os.environ.setdefault("CG_RAY_PROGRESS", "0")
    shutil.rmtree(os.path.join(args.out, "ckpt"), ignore_errors=True)
    ckpts = {
        name: checkpoint(os.path.join(args.out, "ckpt", str(i)), o)
        for i, (name, o) in enumerate(MODELS.items())
    }
    import torch

    print(
        f"cores: {os.cpu_count()}  torch threads: {torch.get_num_threads()}  "
        f"load average: {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)"
    )
    single = single_clip(args.out, ckpts)
    batched = batch(args.out, ckpts, args.batch_clips)
    print_result({"cores": os.cpu_count(), "single_clip": single, "batch": batched})


if __name__ == "__main__":
    main()
