"""What a cold `cg-ray train` costs, prompt to prompt, and whether an environment setting changes it.

    .venv/bin/python benchmarks/cold_start.py [--runs 3] [--against NAME=VALUE ...] [--epochs 2]

The command as a user types it (`cg-ray train --config configs/demo.yaml`, 2 epochs on the
tests' tiny world of 60 clips), each run in a fresh process that starts its own local Ray, each
a new run (nothing resumed). For each run: the wall time and the CPU time of the whole machine
(/proc/stat: Ray's daemons and workers included), which on a small machine is what a command
really costs. With `--against`, every run is paired with one under those variables, in
alternating order, and the pairs' differences are reported: how an idea for a faster start
(e.g. `RAY_enable_metrics_collection=0`) is judged against the noise of the machine. The last
line is a JSON object.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def machine_cpu_seconds() -> float:
    """CPU time of every process on the machine since boot (user, nice, system, irq, softirq,
    steal), in seconds."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def cold_train(data: str, work: str, name: str, epochs: int, extra_env: dict) -> dict:
    env = {**os.environ, **extra_env, "CG_RAY_PROGRESS": "0"}
    env.pop("RAY_ADDRESS", None)
    command = [
        str(Path(sys.executable).parent / "cg-ray"),
        "train",
        "--config",
        str(ROOT / "configs" / "demo.yaml"),
        "--set",
        f"data.path={data}",
        f"train.epochs={epochs}",
        f"run.storage_path={work}/runs",
        f"run.name={name}",
        f"run.tracking_uri=sqlite:///{work}/mlflow.db",
    ]
    cpu, start = machine_cpu_seconds(), time.perf_counter()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, machine_cpu_seconds() - cpu
    if proc.returncode:
        raise SystemExit(f"cg-ray train exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs (pairs with --against; default: 3)")
    parser.add_argument(
        "--against",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="pair each run with one under these environment variables (default: no pairs)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each run (default: 2)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error(f"--runs must be 1 or more, got {args.runs}")
    malformed = [item for item in args.against if "=" not in item or item.startswith("=")]
    if malformed:
        parser.error(
            f"--against takes NAME=VALUE pairs, e.g. RAY_enable_metrics_collection=0; got {malformed}"
        )
    against = dict(item.split("=", 1) for item in args.against)
    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="cg-cold-"))

    from result_line import print_result

    from cg_ray.demo import synthetic_dataset

    data = synthetic_dataset(
        os.path.join(work, "world"), cities=6, clips_per_city=10, frames=10, size=(32, 32), seed=1
    )
    variants = {"as_is": {}, **({"against": against} if against else {})}
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    for index in range(args.runs):
        order = list(variants) if index % 2 == 0 else list(reversed(variants))
        for name in order:
            row = cold_train(data, work, f"{name}-{index}", args.epochs, variants[name])
            runs[name].append(row)
            print(
                f"run {index + 1}: {name:7s} {row['wall_s']:6.1f} s wall  {row['cpu_s']:6.1f} CPU-s",
                flush=True,
            )
    result: dict = {"runs": args.runs, "epochs": args.epochs, "against": against, "cpus": os.cpu_count()}
    for name, rows in runs.items():
        result[f"{name}_wall_s"] = [r["wall_s"] for r in rows]
        result[f"{name}_cpu_s"] = [r["cpu_s"] for r in rows]
    result["as_is_wall_s_median"] = statistics.median(result["as_is_wall_s"])
    result["as_is_cpu_s_median"] = statistics.median(result["as_is_cpu_s"])
    if against:
        pairs = list(zip(runs["against"], runs["as_is"]))
        result["against_minus_as_is_wall_s"] = [round(a["wall_s"] - b["wall_s"], 1) for a, b in pairs]
        result["against_minus_as_is_cpu_s"] = [round(a["cpu_s"] - b["cpu_s"], 1) for a, b in pairs]
        print(
            f"{' '.join(args.against)} minus as is, per pair: wall {result['against_minus_as_is_wall_s']} s, "
            f"CPU {result['against_minus_as_is_cpu_s']} CPU-s"
        )
    result["load_average_1min"] = round(os.getloadavg()[0], 2)
    print_result(result)


if __name__ == "__main__":
    main()
