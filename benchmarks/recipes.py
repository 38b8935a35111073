"""What the recipe switches buy on the synthetic world, and what each costs per training step.

    .venv/bin/python benchmarks/recipes.py [--epochs 10] [--out /tmp/cg_recipes] [--skip-train]

1. Accuracy: a synthetic world where frame choice matters (100-frame clips whose city patch
   shows in only 15% of the frames, a run at a random place in each clip: `city_cue_fraction`),
   trained through the real `cg-ray train` path (Ray Train, Ray Data from the raw frames, MLflow)
   with the demo model (tiny VideoMAE, 16 frames at 32x32, SCA + TLA) and one switch changed per
   run: sampling uniform / official / random / bidirectional, linear vs graph head (with the
   consistency term), with and without EMA. The table is `cg-ray compare` over the runs'
   MLflow experiment; one seed each, so differences of a few points are noise.
2. Cost: forward + backward + optimizer step of the same model without Ray (one process, one
   thread, the worker's own forward_backward / optimizer_step), median CPU-ms per step at batch
   8 (CPU time, not wall time: the development machine is shared), each switch alone, timed
   round-robin; `--paper` times the paper's model (VideoMAE ViT-S 16x224, CityGuessr68k sizes).

The last line of stdout is one JSON object with the figures.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cg_ray.config import load_config  # noqa: E402
from cg_ray.data.sampling import Sampling  # noqa: E402
from cg_ray.model.net import build_model  # noqa: E402
from cg_ray.taxonomy import LEVELS  # noqa: E402
from cg_ray.train.ema import build_ema  # noqa: E402
from cg_ray.train.optim import build_optimizer, build_schedule  # noqa: E402
from cg_ray.train.worker import TrainState, forward_backward, optimizer_step  # noqa: E402

WORLD = dict(cities=12, clips_per_city=30, frames=100, size=(32, 32), city_cue_fraction=0.15, seed=0)
BASE = [
    "data.num_frames=16",
    "train.batch_size=8",
    "train.num_workers=1",
    "train.seed=0",
    "train.cpus_per_worker=1",
]
RUNS = {  # run name -> overrides on top of configs/demo.yaml + BASE
    "uniform": [],
    "official": ["data.sampling=official"],
    "random": ["data.sampling=random"],
    "bidirectional": ["data.sampling=bidirectional"],
    "graph-head": ["model.head=graph", "model.graph.dim=64", "loss.consistency=1.0"],
    "ema": ["train.ema.enabled=true", "train.ema.decay=0.99"],
}
COSTS = {  # switch -> overrides, timed against "baseline"
    "baseline": [],
    "bidirectional": ["data.sampling=bidirectional"],
    "graph head + consistency": ["model.head=graph", "model.graph.dim=64", "loss.consistency=1.0"],
    "ema": ["train.ema.enabled=true"],
    "augment": ["data.augment.enabled=true"],
    "adamw + layer decay": ["optim.name=adamw", "optim.weight_decay=0.05", "optim.layer_decay=0.75"],
    "drop path 0.1": ["model.backbone.drop_path=0.1"],
    "label smoothing 0.1": ["loss.label_smoothing=0.1"],
}
PAPER = [
    "data.num_frames=16",
    "data.image_size=224",
    "model.backbone.hidden_size=384",
    "model.backbone.num_layers=12",
    "model.backbone.num_heads=6",
    "model.backbone.intermediate_size=1536",
    "model.backbone.patch_size=16",
]


def train_runs(data: str, out: str, epochs: int, names: list[str]) -> tuple[str, dict]:
    """Trains the named runs into one new MLflow experiment: (its name, top-1 per level of each run)."""
    from cg_ray.runs import train

    experiment = f"recipes-{int(time.time())}"
    results: dict = {}
    for name, overrides in RUNS.items():
        if name not in names:
            continue
        cfg = load_config(
            str(ROOT / "configs" / "demo.yaml"),
            BASE
            + overrides
            + [
                f"data.path={data}",
                f"train.epochs={epochs}",
                f"run.storage_path={out}/runs",
                f"run.name={name}",
                f"run.experiment={experiment}",
                f"run.tracking_uri=sqlite:///{out}/mlflow.db",
            ],
        )
        start = time.perf_counter()
        try:
            result = train(cfg)
        except Exception as exc:  # a switch that cannot run yet is reported, not fatal
            print(f"[recipes] {name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
            results[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
            continue
        results[name] = {k: round(v, 1) for k, v in result.items() if k.endswith("_top1")}
        results[name]["seconds"] = round(time.perf_counter() - start)
        print(
            f"[recipes] {name}: city top-1 {result['city_top1']:.1f} in {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    return experiment, results


def _batch(cfg, sizes, n: int) -> dict:
    g = torch.Generator().manual_seed(0)
    leading = Sampling(cfg.data.sampling, cfg.data.num_frames, training=True).leading
    s = cfg.data.image_size
    video = torch.randint(0, 256, (n, *leading, cfg.data.num_frames, s, s, 3), generator=g, dtype=torch.uint8)
    scenes = torch.rand(n, 16, generator=g)
    out = {
        "video": video,
        "valid": torch.ones(n, dtype=torch.bool),
        "scene": scenes / scenes.sum(1, keepdim=True),
    }
    for level, k in zip(LEVELS, sizes):
        out[level] = torch.randint(0, k, (n,), generator=g)
    return out


def step_costs(paper: bool, steps: int, batch: int) -> list[tuple[str, float]]:
    import json

    from cg_ray.taxonomy import Taxonomy

    maps = (
        json.loads((Path("/work/shared/data/official_hierarchy_mappings.json")).read_text())
        if paper and Path("/work/shared/data/official_hierarchy_mappings.json").exists()
        else None
    )
    if maps:
        parents = {level: [m[str(i)] for i in range(len(m))] for level, m in zip(LEVELS, maps)}
        sizes = [
            len(parents["city"]),
            len(parents["state"]),
            len(parents["country"]),
            max(parents["country"]) + 1,
        ]
    else:
        rows = [
            {"city": c, "state": s, "country": k, "continent": t}
            for c, s, k, t in __import__("cg_ray.data.synthetic", fromlist=["places"]).places(12)
        ]
        tax = Taxonomy.from_rows(rows)
        parents, sizes = tax.parents, tax.sizes
    states = {}
    for name, overrides in COSTS.items():
        cfg = load_config(str(ROOT / "configs" / "demo.yaml"), BASE + overrides + (PAPER if paper else []))
        torch.manual_seed(0)
        model = build_model(cfg, sizes, text_dim=512, parents=parents).train()
        optimizer = build_optimizer(model, cfg.optim)
        tables = {level: torch.randn(n, 512) for level, n in zip(LEVELS, sizes)}
        state = TrainState(
            model,
            optimizer,
            build_schedule(optimizer, cfg.optim, 100),
            cfg,
            torch.device("cpu"),
            tables,
            bf16=False,
        )
        state.ema = build_ema(model, cfg.train.ema)
        state.parents = {k: torch.tensor(v) for k, v in parents.items()}
        states[name] = state
    # Round-robin over the switches, so load from other processes hits them alike.
    times: dict[str, list[float]] = {name: [] for name in states}
    for i in range(steps + 1):
        for name, state in list(states.items()):
            data = _batch(state.cfg, sizes, batch)
            start = time.process_time()  # CPU time: steadier than wall time on a shared machine
            try:
                forward_backward(state, data)
            except Exception as exc:
                print(f"[recipes] cost of {name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                del states[name]
                continue
            optimizer_step(state)
            if i:  # the first step warms up
                times[name].append(time.process_time() - start)
    return [(name, 1000 * statistics.median(t)) for name, t in times.items() if t]


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--out", default="/tmp/cg_recipes")
    parser.add_argument("--skip-train", action="store_true", help="only the per-step costs")
    parser.add_argument("--skip-costs", action="store_true", help="only the training runs")
    parser.add_argument(
        "--runs",
        default=",".join(RUNS),
        help=f"comma-separated runs to train (default all: {','.join(RUNS)})",
    )
    parser.add_argument("--paper", action="store_true", help="time the paper-size model (slow on CPU)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="clips per timed step")
    parser.add_argument(
        "--cue-fraction",
        type=float,
        default=WORLD["city_cue_fraction"],
        help="fraction of each clip's frames that show its city (default 0.15)",
    )
    args = parser.parse_args()
    os.environ["CG_RAY_PROGRESS"] = "0"
    torch.set_num_threads(1)
    figures: dict = {"epochs": args.epochs, "cue_fraction": args.cue_fraction}
    if not args.skip_train:
        from cg_ray.demo import synthetic_dataset
        from cg_ray.ray_env import init_ray

        world = dict(WORLD, city_cue_fraction=args.cue_fraction)
        data = synthetic_dataset(args.out, **world)
        init_ray(min_cpus=2)
        experiment, figures["runs"] = train_runs(data, args.out, args.epochs, args.runs.split(","))
        print(
            f"\nworld: {world}\nconfig: configs/demo.yaml + {' '.join(BASE)}; {args.epochs} epochs, "
            f"one seed\n$ cg-ray compare {experiment} --tracking-uri sqlite:///{args.out}/mlflow.db"
        )
        subprocess.run(
            [
                sys.executable,
                "-m",
                "cg_ray",
                "compare",
                experiment,
                "--tracking-uri",
                f"sqlite:///{args.out}/mlflow.db",
            ],
            check=False,
        )
    if args.skip_costs:
        print_result(figures)
        return
    size = "paper model (VideoMAE ViT-S 16x224, 166/157/91/6)" if args.paper else "demo model (16x32x32)"
    print(
        f"\ncost per training step (forward, backward, optimizer step; CPU-ms of one thread), {size}, "
        f"batch {args.batch}, median of {args.steps}:"
    )
    costs = step_costs(args.paper, args.steps, args.batch)
    base = dict(costs).get("baseline")
    for name, ms in costs:
        extra = f"{ms / base:.2f}x" if base else ""
        print(f"  {name:<28} {ms:>9.1f} CPU-ms  {extra}")
    figures["cpu_ms_per_step"] = {name: round(ms, 1) for name, ms in costs}
    figures["cost_model"] = "paper" if args.paper else "demo"
    print_result(figures)


if __name__ == "__main__":
    main()
