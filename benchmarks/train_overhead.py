"""Ray Train's overhead on CPU: the demo-size model through `cg-ray train` (1 worker) vs the
same step in a bare PyTorch loop (benchmarks/bare_loop.py) over the same packed shards.

    .venv/bin/python benchmarks/train_overhead.py [--steps 150] [--epochs 2] [--threads 1]

Both sides are compared once warm: for `cg-ray train`, the last epoch's clips/s after its
first batch (`train_clips_per_s_warm`: Ray Data's start-up of the epoch left out); for the bare
loop, clips/s after a few warm-up steps. Both run the model with the same number of torch
threads (a Ray Train worker gets as many as train.cpus_per_worker). The bare loop runs before
and after `cg-ray train`: a shared machine's speed drifts by tens of percent within minutes, and
the mean of the two brackets the Ray run. The last line is a JSON object with `overhead_ratio` =
bare clips/s (mean) / Ray Train clips/s (1.0: no overhead).

Where a step's wall time goes on each side, from the scheduler's counters (sched_watch.py): the
share of the training thread's time (Ray Train: its last 1/epochs, about the last epoch) spent
on a CPU, runnable but waiting for one (`runqueue`: what the processes beside it cost it) and
asleep (waiting for data or a lock), and the cores every other process used meanwhile (Ray's
own: raylet, GCS, dashboard, Train's and Data's helper actors, the decode tasks).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEMO = ROOT / "configs" / "demo.yaml"
DEMO_SIZES = (12, 11, 9, 6)  # the demo world's cities, states, countries, continents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per epoch (default: 150)")
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="epochs through cg-ray train; the last one is compared (default: 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of the model, both sides (default: 1, as "
        "train.cpus_per_worker=1 gives a Ray Train worker)",
    )
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("CG_RAY_PROGRESS", "0")
    if not os.environ.get("RAY_TMPDIR"):  # made only when needed (short: Ray socket paths)
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="cgr-oh-", dir="/tmp")
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="cg-overhead-"))

    import torch
    from bare_loop import bare_loop
    from packed_synthetic import write_packed_dataset
    from result_line import print_result
    from sched_watch import ProcessWatch, ThisThread

    from cg_ray.cli import main as cli
    from cg_ray.config import load_config

    data = os.path.join(work, "data")
    cfg = load_config(str(DEMO), [f"data.path={data}"])
    batch, frames, size = cfg.train.batch_size, cfg.data.num_frames, cfg.data.image_size
    write_packed_dataset(
        data,
        train_clips=args.steps * batch,
        val_clips=2 * batch,
        num_frames=frames,
        image_size=size,
        sizes=DEMO_SIZES,
        raw_clips=0,
    )
    overrides = [
        f"data.path={data}",
        "train.num_workers=1",
        f"train.epochs={args.epochs}",
        f"train.cpus_per_worker={args.threads}",
        "train.use_gpu=false",
        f"run.storage_path={work}/runs",
        f"run.tracking_uri=sqlite:///{work}/mlflow.db",
        "run.name=overhead",
    ]

    def bare() -> dict:
        torch.set_num_threads(args.threads)
        with ThisThread() as thread:
            figures = bare_loop(
                load_config(str(DEMO), overrides),
                data,
                steps=args.steps,
                warmup=max(3, args.steps // 20),
                device="cpu",
                decode="cpu",
            )
        return {**figures, "thread": thread.figures}

    before = bare()
    metrics = os.path.join(work, "train.json")
    watch = ProcessWatch("ray::RayTrainWorker").start()
    start = time.perf_counter()
    with redirect_stdout(io.StringIO()):
        code = cli(["train", "--config", str(DEMO), "--metrics-out", metrics, "--set", *overrides])
    if code:
        raise SystemExit(f"cg-ray train exited {code}")
    wall = time.perf_counter() - start
    ray_thread = watch.stop(tail=1 / args.epochs)  # about the last epoch: the one compared
    ray_side = json.loads(open(metrics).read())
    after = bare()

    bare_rate = (before["clips_per_s"] + after["clips_per_s"]) / 2
    ray_rate = ray_side["train_clips_per_s_warm"]
    result = {
        "overhead_ratio": round(bare_rate / max(ray_rate, 1e-9), 3),
        "ray_train_clips_per_s_warm": round(ray_rate, 2),
        "ray_train_clips_per_s_epoch": round(ray_side["train_clips_per_s"], 2),
        "ray_train_first_batch_s": round(ray_side["first_batch_s"], 2),
        "ray_train_data_wait_fraction": round(ray_side["data_wait_fraction"], 3),
        "ray_train_wall_s": round(wall, 1),
        "ray_train_thread": ray_thread,
        "bare_clips_per_s": round(bare_rate, 2),
        "bare_clips_per_s_before_after": [before["clips_per_s"], after["clips_per_s"]],
        "bare_data_fraction": before["data_fraction"],
        "bare_thread": before["thread"],
        "steps_per_epoch": args.steps,
        "batch_size": batch,
        "threads": args.threads,
        "frames": frames,
        "size": size,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    print(
        f"Ray Train (1 worker, last of {args.epochs} epochs, warm): {ray_rate:.1f} clips/s; "
        f"bare PyTorch loop: {before['clips_per_s']:.1f} before, {after['clips_per_s']:.1f} after; "
        f"overhead ratio {result['overhead_ratio']:.3f} (goal: <= 1.10)"
    )
    for side, figures in (("Ray Train", ray_thread), ("bare loop", before["thread"])):
        if figures:
            print(
                f"{side} training thread: {figures['cpu_share']:.0%} on a CPU, "
                f"{figures['runqueue_share']:.0%} waiting for one, {figures['sleep_share']:.0%} asleep"
            )
    print_result(result)


if __name__ == "__main__":
    main()
