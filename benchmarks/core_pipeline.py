"""Throughput of the demo configuration on this machine.

    .venv/bin/python benchmarks/core_pipeline.py [--epochs 3] [--out /tmp/cg_bench]

Prints training clips/s (Ray Data -> TorchTrainer, last epoch, so warm) with 1 and 2 workers,
the wall time of each fit, and evaluation clips/s of the resulting checkpoint. The last line is
a JSON object with the same figures.
"""

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cg_ray.config import load_config  # noqa: E402
from cg_ray.demo import WORLD, synthetic_dataset  # noqa: E402
from cg_ray.predict.evaluate import evaluate  # noqa: E402
from cg_ray.ray_env import init_ray  # noqa: E402
from cg_ray.runs import train  # noqa: E402


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default="/tmp/cg_bench")
    args = parser.parse_args()
    os.environ["CG_RAY_PROGRESS"] = "0"
    data = synthetic_dataset(args.out, **WORLD)
    init_ray(min_cpus=4)
    rows = []
    checkpoint = None
    for workers in (1, 2):
        cfg = load_config(
            str(ROOT / "configs" / "demo.yaml"),
            [
                f"data.path={data}",
                f"train.num_workers={workers}",
                f"train.epochs={args.epochs}",
                f"run.storage_path={args.out}/runs",
                f"run.name=bench-{workers}w-{int(time.time())}",
                f"run.tracking_uri=sqlite:///{args.out}/mlflow.db",
            ],
        )
        start = time.perf_counter()
        result = train(cfg)
        rows.append((workers, result["train_clips_per_s"], time.perf_counter() - start, result["city_top1"]))
        checkpoint = result["checkpoint"]
    metrics = evaluate(checkpoint, data, "val", modes=("codependent",))["codependent"]
    print(
        f"\ncores: {os.cpu_count()}  clips: {WORLD['cities'] * WORLD['clips_per_city']}  "
        f"epochs: {args.epochs}  config: configs/demo.yaml"
    )
    print(f"{'workers':>8} {'train clips/s (last epoch)':>28} {'fit wall s':>11} {'city top-1':>11}")
    for workers, rate, wall, top1 in rows:
        print(f"{workers:>8} {rate:>28.1f} {wall:>11.1f} {top1:>11.1f}")
    print(
        f"evaluation: {metrics['num_clips']} clips at {metrics['clips_per_s']:.1f} clips/s "
        f"(decode + forward, driver process)"
    )
    print_result(
        {
            "cores": os.cpu_count(),
            "clips": WORLD["cities"] * WORLD["clips_per_city"],
            "epochs": args.epochs,
            "train": [
                {"workers": w, "clips_per_s": round(rate, 1), "fit_s": round(wall, 1), "city_top1": top1}
                for w, rate, wall, top1 in rows
            ],
            "evaluate_clips": metrics["num_clips"],
            "evaluate_clips_per_s": round(metrics["clips_per_s"], 1),
        }
    )


if __name__ == "__main__":
    main()
