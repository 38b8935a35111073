"""What a Ray Tune search costs on this machine.

    .venv/bin/python benchmarks/tune_overhead.py [--epochs 2] [--out /tmp/cg_tune_bench]

On the tiny synthetic world of the tests (6 cities x 10 clips, 32x32, configs/demo.yaml with one
1-CPU worker), in one local Ray session, after a warm-up fit:
  1. a bare training run (`cg_ray.runs.train`, what `cg-ray train` calls),
  2. a 1-trial search whose only trial has exactly that config: its wall time minus (1) is the
     overhead of a Tune trial (Tuner, trial actor, the trainer inside it, MLflow parent run),
  3. the 3-trial search of the demo space (ASHA, random search, as many trials at once as fit):
     its wall time.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cg_ray.config import load_config  # noqa: E402
from cg_ray.demo import synthetic_dataset  # noqa: E402
from cg_ray.ray_env import init_ray  # noqa: E402
from cg_ray.runs import train  # noqa: E402
from cg_ray.tune.search import search  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from result_line import print_result  # noqa: E402


def _world(out: str) -> str:
    return synthetic_dataset(out, cities=6, clips_per_city=10, frames=10, size=(32, 32), seed=1)


def _timed(fn, *args, **kwargs) -> tuple[float, dict]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default="/tmp/cg_tune_bench")
    args = parser.parse_args()
    os.environ["CG_RAY_PROGRESS"] = "0"
    data = _world(args.out)
    stamp = int(time.time())

    def config(name: str, *extra: str):
        return load_config(
            str(ROOT / "configs" / "demo.yaml"),
            [
                f"data.path={data}",
                f"train.epochs={args.epochs}",
                "train.num_workers=1",
                "train.batch_size=8",
                f"run.storage_path={args.out}/runs",
                f"run.name={name}-{stamp}",
                f"run.tracking_uri=sqlite:///{args.out}/mlflow.db",
                *extra,
            ],
        )

    init_ray(min_cpus=4)
    train(config("warmup", "train.epochs=1"))
    bare_s, bare = _timed(train, config("bare"))
    # The only trial's config is the bare run's: optim.lr has one possible value, the same.
    one = json.dumps({"optim.lr": {"choice": [0.001]}})
    one_s, _ = _timed(search, config("one", "tune.num_samples=1", f"tune.space={one}"))
    three_s, three = _timed(search, config("three", "tune.num_samples=3"))
    print(
        f"\ncores: {os.cpu_count()}  clips: 60 (48 train, 12 val)  epochs: {args.epochs}  "
        f"config: configs/demo.yaml, 1 worker of 1 CPU"
    )
    print(f"bare train:                 {bare_s:7.1f} s  (city top-1 {bare['city_top1']:.1f})")
    print(
        f"1-trial search, same config: {one_s:6.1f} s  -> Tune overhead per trial "
        f"{one_s - bare_s:+.1f} s ({100 * (one_s - bare_s) / bare_s:+.0f}%)"
    )
    print(
        f"3-trial search (demo space): {three_s:6.1f} s  ({three['concurrency']} at once; "
        f"{three['completed']} completed, {three['stopped_early']} stopped by ASHA, "
        f"{three['failed']} failed; Tuner.fit {three['seconds']:.1f} s)"
    )
    print_result(
        {
            "bare_train_s": round(bare_s, 1),
            "one_trial_search_s": round(one_s, 1),
            "one_trial_overhead_s": round(one_s - bare_s, 1),
            "one_trial_overhead_fraction": round((one_s - bare_s) / bare_s, 3),
            "three_trial_search_s": round(three_s, 1),
            "three_trial_tuner_fit_s": three["seconds"],
            "epochs": args.epochs,
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        }
    )


if __name__ == "__main__":
    main()
