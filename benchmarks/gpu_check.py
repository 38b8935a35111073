"""`make gpu-check`: every GPU path of cg_ray, measured in one prepared run.

    .venv/bin/python benchmarks/gpu_check.py [--out gpu_check.json]   # needs a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --cpu                    # the same steps, tiny, on CPU

On a GPU (in under 8 minutes, offline, nothing installed beyond `make install`): the paper's
model (VideoMAE-S 16x224 from scratch, SCA + TLA, CityGuessr68k's 166/157/91/6 labels) trained
through `cg-ray train` with one Ray Train GPU worker on packed synthetic shards, with
train.compile off and on (clips/s once warm, MFU against the GPU's dense bf16 peak, peak GPU
memory, the fraction of step time spent waiting for data); the same step in a bare PyTorch loop
(the Ray Train overhead ratio); `cg-ray evaluate` clips/s; `cg-ray predict` latency for one
clip; batch prediction clips/s with GPU actors; scene labelling frames/s with a GPU actor;
JPEG decoding of packed frames, CPU per core vs GPU; and the bytes per clip that cross Ray's
object store with data.decode=cpu vs gpu.

Every step is guarded: one that fails is reported in the table and the others still run; steps
past the time budget (--budget) are skipped and say so. The last line of stdout is the result as
one JSON object (what --out writes). Without a GPU and without --cpu it says so in one line (no
figures, so no JSON) and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

PAPER_CONFIG = ROOT / "configs" / "paper" / "table3_tla_all.yaml"
# Dense bf16 tensor peak (FLOP/s), by a substring of torch.cuda.get_device_name(); the first
# match wins, so the more specific names come first.
PEAK_BF16 = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("B100", 1750e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A6000 Ada", 364e12),
    ("RTX 6000 Ada", 364e12),
    ("A6000", 155e12),
    ("A5000", 111e12),
    ("A4000", 77e12),
    ("A40", 150e12),
    ("A30", 165e12),
    ("A10G", 70e12),
    ("A10", 125e12),
    ("4090", 165e12),
    ("3090", 71e12),
]
TINY_MODEL = [
    "model.backbone.hidden_size=64",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=4",
    "model.backbone.intermediate_size=128",
    "model.backbone.patch_size=8",
]


def peak_flops(device_name: str) -> float | None:
    return next((v for k, v in PEAK_BF16 if k in device_name), None)


class Check:
    """The steps and their rows: name -> figures, or the error that stopped the step."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s
        self.rows: dict[str, dict] = {}

    def run(self, name: str, fn, *args) -> dict | None:
        if time.perf_counter() - self.start > self.budget_s:
            self.rows[name] = {"status": "skipped", "why": f"past the {self.budget_s:.0f} s budget"}
            print(f"[gpu-check] {name}: skipped (time budget)", flush=True)
            return None
        print(f"[gpu-check] {name} ...", flush=True)
        began = time.perf_counter()
        try:
            figures = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - a step may die any way; the rest still run
            if isinstance(exc, KeyboardInterrupt):
                raise
            last = traceback.format_exception_only(type(exc), exc)[-1].strip()
            self.rows[name] = {
                "status": "failed",
                "error": last[:300],
                "seconds": round(time.perf_counter() - began, 1),
            }
            print(f"[gpu-check] {name}: FAILED {last[:300]}", flush=True)
            return None
        if figures.get("status") == "skipped":
            self.rows[name] = figures
            return None
        self.rows[name] = {"status": "ok", **figures, "seconds": round(time.perf_counter() - began, 1)}
        return self.rows[name]


def _quiet_cli(argv: list[str]) -> str:
    """Run a `cg-ray` command in this process; returns its stdout (also echoed, shortened)."""
    from cg_ray.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    text = out.getvalue()
    if code:
        raise RuntimeError(f"cg-ray {argv[0]} exited {code}: {text.strip()[-300:]}")
    return text


class Run:
    """What the steps share: sizes for this mode, the work folder, the dataset, the model."""

    def __init__(self, args, gpu_name: str | None):
        self.args, self.gpu = args, gpu_name is not None
        self.gpu_name = gpu_name
        self.work = os.path.abspath(args.work)
        tiny = args.cpu
        self.frames, self.size = (4, 32) if tiny else (16, 224)
        self.batch = args.batch or (8 if tiny else 32)
        self.train_clips = args.train_clips or (96 if tiny else 2400)
        self.val_clips = 24 if tiny else 240
        self.raw_clips = 8 if tiny else 64
        self.epochs = 2
        self.data = os.path.join(self.work, "data")
        self.checkpoint: str | None = None
        self.overrides = [
            f"data.path={self.data}",
            f"data.num_frames={self.frames}",
            f"data.image_size={self.size}",
            "model.backbone.pretrained=null",
            f"train.epochs={self.epochs}",
            "train.num_workers=1",
            f"train.batch_size={self.batch}",
            f"train.use_gpu={'true' if self.gpu else 'false'}",
            "train.log_every=1000000",
            f"eval.batch_size={self.batch}",
            f"run.storage_path={self.work}/runs",
            f"run.tracking_uri=sqlite:///{self.work}/mlflow.db",
            "run.experiment=gpu-check",
        ] + (TINY_MODEL if tiny else [])

    def config(self, extra: list[str] = ()):
        from cg_ray.config import load_config

        return load_config(str(PAPER_CONFIG), self.overrides + list(extra))


# -- the steps ------------------------------------------------------------------------------------


def step_dataset(run: Run) -> dict:
    from packed_synthetic import write_packed_dataset

    info = write_packed_dataset(
        run.data,
        train_clips=run.train_clips,
        val_clips=run.val_clips,
        num_frames=run.frames,
        image_size=run.size,
        raw_clips=run.raw_clips,
    )
    run.raw = info.pop("raw")
    info.pop("path")
    return {**info, "frames": run.frames, "size": run.size, "batch": run.batch}


def step_object_store(run: Run) -> dict:
    """Bytes per clip in the blocks Ray Data hands the consumer, decode=cpu vs gpu."""
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.stream import clip_dataset

    taxonomy = PreparedDataset(run.data).taxonomy
    clips = min(run.train_clips, 120)
    out = {}
    for mode in ("cpu", "gpu"):
        ds = (
            clip_dataset(
                run.data, "train", taxonomy, run.frames, run.size, decode_batch_size=run.batch, decode=mode
            )
            .limit(clips)
            .materialize()
        )
        out[f"bytes_per_clip_{mode}"] = round(ds.size_bytes() / ds.count())
        del ds
    out["ratio_cpu_to_gpu"] = round(out["bytes_per_clip_cpu"] / out["bytes_per_clip_gpu"], 1)
    return out


def _train(run: Run, name: str, extra: list[str]) -> dict:
    metrics = os.path.join(run.work, f"{name}.json")
    _quiet_cli(
        [
            "train",
            "--config",
            str(PAPER_CONFIG),
            "--metrics-out",
            metrics,
            *[a for o in run.overrides + [f"run.name={name}"] + extra for a in ("--set", o)],
        ]
    )
    result = json.loads(open(metrics).read())
    run.checkpoint = run.checkpoint or result["checkpoint"]
    warm = result.get("train_clips_per_s_warm", result.get("train_clips_per_s"))
    out = {
        "clips_per_s": round(warm, 2),
        "clips_per_s_epoch": round(result["train_clips_per_s"], 2),
        "data_wait_fraction": result.get("data_wait_fraction"),
        "peak_gpu_memory_gb": result.get("gpu_peak_memory_gb"),
        "first_batch_s": round(result.get("first_batch_s", 0.0), 2),
        "decode": "gpu" if run.gpu else "cpu",  # data.decode=auto on a GPU worker: gpu
        "train_loss": round(result["train_loss"], 4),
    }
    flops = getattr(run, "flops_per_clip", None)
    peak = peak_flops(run.gpu_name or "")
    if flops and peak and warm:
        out["mfu"] = round(flops * warm / peak, 4)
    return out


def step_bare(run: Run, decode: str) -> dict:
    import torch
    from bare_loop import bare_loop

    steps, warmup = (10, 2) if run.args.cpu else (40, 5)
    cfg, threads = run.config(), torch.get_num_threads()
    # As many torch threads as a Ray Train worker gets (OMP_NUM_THREADS = its CPUs).
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    try:
        out = bare_loop(
            cfg,
            run.data,
            steps,
            warmup,
            "cuda" if run.gpu else "cpu",
            decode="gpu" if run.gpu and decode != "cpu" else "cpu",
            count_flops=True,
        )
    finally:
        torch.set_num_threads(threads)
    run.flops_per_clip = out["flops_per_clip"]
    if run.gpu:
        torch.cuda.empty_cache()  # the Ray Train worker, in its own process, gets the memory
    peak = peak_flops(run.gpu_name or "")
    if peak:
        out["mfu"] = round(out["flops_per_clip"] * out["clips_per_s"] / peak, 4)
    out["gflops_per_clip"] = round(out.pop("flops_per_clip") / 1e9, 2)
    return out


def step_train(run: Run, compile_: bool) -> dict:
    if compile_ and run.args.cpu:
        return {"status": "skipped", "why": "--cpu: inductor compiles take minutes on a small CPU"}
    return _train(run, "compile" if compile_ else "eager", [f"train.compile={str(compile_).lower()}"])


def step_overhead(run: Run) -> dict:
    train, bare = run.check.rows.get("train"), run.check.rows.get("bare_loop")
    if not (train and bare and train.get("status") == bare.get("status") == "ok"):
        return {"status": "skipped", "why": "needs both train and bare_loop"}
    return {
        "ray_train_clips_per_s": train["clips_per_s"],
        "bare_clips_per_s": bare["clips_per_s"],
        "overhead_ratio": round(bare["clips_per_s"] / max(train["clips_per_s"], 1e-9), 3),
    }


def step_evaluate(run: Run) -> dict:
    if not run.checkpoint:
        return {"status": "skipped", "why": "no checkpoint (training failed)"}
    path = os.path.join(run.work, "evaluate.json")
    _quiet_cli(
        [
            "evaluate",
            "--checkpoint",
            run.checkpoint,
            "--data",
            run.data,
            "--split",
            "val",
            "--batch-size",
            str(run.batch),
            "--metrics-out",
            path,
        ]
    )
    metrics = json.loads(open(path).read())
    return {
        "clips_per_s": round(metrics["clips_per_s"], 2),
        "clips": metrics["num_clips"],
        "device": "cuda" if run.gpu else "cpu",
        "decode": "gpu" if run.gpu else "cpu",
    }


def step_predict(run: Run) -> dict:
    if not run.checkpoint:
        return {"status": "skipped", "why": "no checkpoint (training failed)"}
    times = []
    for _ in range(3):
        start = time.perf_counter()
        text = _quiet_cli(["predict", run.raw[0], "--checkpoint", run.checkpoint, "--json"])
        times.append(time.perf_counter() - start)
    json.loads(text.strip().splitlines()[-1])
    device = "cuda" if run.gpu else "cpu"  # `cg-ray predict` runs on the GPU when there is one
    return {"first_ms": round(1000 * times[0]), "warm_ms": round(1000 * min(times[1:])), "device": device}


def step_batch_predict(run: Run) -> dict:
    if not run.checkpoint:
        return {"status": "skipped", "why": "no checkpoint (training failed)"}
    out = os.path.join(run.work, "batch.parquet")
    text = _quiet_cli(
        [
            "predict",
            "--input-list",
            os.path.join(run.data, "raw"),
            "--out",
            out,
            "--checkpoint",
            run.checkpoint,
            "--batch-size",
            str(run.batch),
        ]
    )
    summary = json.loads(text.strip().splitlines()[-1])
    return {k: summary.get(k) for k in ("clips_per_s", "clips", "actors", "use_gpu", "first_rows_s")}


def step_scenes(run: Run) -> dict:
    import pyarrow.parquet as pq
    from scene_helpers import places_resnet, save_csail, write_sheet

    from cg_ray.labels.scenes import SceneOptions, label_scenes

    dest = os.path.join(run.work, "scenes")
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    shutil.copy(os.path.join(run.data, "taxonomy.json"), dest)
    table = pq.read_table(os.path.join(run.data, "manifest.parquet"))
    pq.write_table(table.slice(0, run.raw_clips), os.path.join(dest, "manifest.parquet"))
    weights = os.path.join(run.work, "places_resnet18.pth.tar")
    save_csail(places_resnet(), weights)
    sheet = Path(run.work) / "hierarchy.csv"
    write_sheet(sheet)
    report = label_scenes(
        dest,
        SceneOptions(
            checkpoint=weights,
            hierarchy=str(sheet),
            num_frames=run.frames,
            image_size=run.size,
            batch_size=max(1, run.batch // 4),
        ),
    )
    return {k: report[k] for k in ("frames_per_s", "frames", "actors", "use_gpu", "seconds")}


def step_decode(run: Run) -> dict:
    """Packed 224 (or tiny) JPEG frames: one CPU core (the decoder Ray Data's tasks use) vs
    one batched torchvision decode_jpeg call on the GPU (on --cpu: on the CPU, as a stand-in)."""
    import pyarrow.parquet as pq
    import torch

    from cg_ray.data.gpu_decode import _decode
    from cg_ray.data.shards import decode_jpeg_into, packed_files

    path = packed_files(run.data, "train", run.frames, run.size)[0]
    frames = [
        f for clip in pq.read_table(path, columns=["frames"]).column("frames").to_pylist() for f in clip
    ]
    import numpy as np

    out = np.empty((run.size, run.size, 3), np.uint8)
    start = time.perf_counter()
    cpu_start = time.process_time()
    for data in frames:
        decode_jpeg_into(data, out)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    figures = {
        "frames": len(frames),
        "cpu_images_per_s_per_core": round(len(frames) / cpu),
        "cpu_images_per_s_wall": round(len(frames) / wall),
    }
    device = "cuda" if run.gpu else "cpu"
    tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in frames]
    batch = 256 if run.gpu else 64
    _decode(tensors[:batch], device)  # warm: nvJPEG handles, CUDA context
    if run.gpu:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(0, len(tensors), batch):
        _decode(tensors[i : i + batch], device)
    if run.gpu:
        torch.cuda.synchronize()
    key = "gpu_images_per_s" if run.gpu else "torchvision_cpu_images_per_s (GPU stand-in)"
    figures[key] = round(len(frames) / (time.perf_counter() - start))
    return figures


# -- the table ------------------------------------------------------------------------------------


def format_rows(rows: dict[str, dict]) -> str:
    lines = [f"{'step':<16}{'status':<9}figures"]
    for name, row in rows.items():
        figures = "  ".join(f"{k}={v}" for k, v in row.items() if k != "status")
        lines.append(f"{name:<16}{row['status']:<9}{figures}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cpu", action="store_true", help="run every step at tiny sizes on the CPU (default: needs a GPU)"
    )
    parser.add_argument("--out", metavar="PATH", help="write the table as JSON (default: none)")
    parser.add_argument(
        "--work", default=None, help="scratch folder (default: a new temporary folder, removed after)"
    )
    parser.add_argument(
        "--batch", type=int, default=None, help="clips per training step (default: 32 on GPU, 8 with --cpu)"
    )
    parser.add_argument(
        "--train-clips",
        type=int,
        default=None,
        help="clips per training epoch (default: 2400 on GPU, 96 with --cpu)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds after which the remaining steps are skipped (default: 420)",
    )
    args = parser.parse_args(argv)

    import torch

    gpu_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if gpu_name is None and not args.cpu:
        print(
            "gpu-check: no CUDA GPU here (torch.cuda.is_available() is False): nothing measured; "
            "`make gpu-check CPU=1` runs the same steps at tiny sizes on the CPU"
        )
        return 0
    if args.cpu:
        gpu_name = None
    os.environ.setdefault("CG_RAY_PROGRESS", "0")
    if not os.environ.get("RAY_TMPDIR"):  # made only when needed (short: Ray socket paths)
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="cgr-gc-", dir="/tmp")
    scratch = args.work is None
    args.work = args.work or tempfile.mkdtemp(prefix="cg-gpu-check-")
    run = Run(args, gpu_name)
    run.check = check = Check(args.budget)
    sys.path.insert(0, str(ROOT / "tests"))  # scene_helpers: a Places365-style CNN, a sheet
    try:
        from cg_ray.ray_env import init_ray

        if check.run("dataset", step_dataset, run):
            check.run("ray_start", lambda: (init_ray(min_cpus=4), {})[1])
            check.run("bare_loop", step_bare, run, "auto")
            check.run("train", step_train, run, False)
            check.run("overhead", step_overhead, run)
            check.run("train_compile", step_train, run, True)
            check.run("evaluate", step_evaluate, run)
            check.run("predict_one", step_predict, run)
            check.run("batch_predict", step_batch_predict, run)
            check.run("scenes", step_scenes, run)
            check.run("object_store", step_object_store, run)
        check.run("jpeg_decode", step_decode, run)
    finally:
        if scratch:
            shutil.rmtree(args.work, ignore_errors=True)
    device = gpu_name or f"CPU ({os.cpu_count()} cores), --cpu: tiny sizes"
    result = {
        "device": device,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_flops": peak_flops(gpu_name or ""),
        "total_s": round(time.perf_counter() - check.start, 1),
        "steps": check.rows,
    }
    print(f"\ngpu-check on {device}: {result['total_s']} s")
    print(format_rows(check.rows))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    from result_line import print_result

    print_result(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
