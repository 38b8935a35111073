"""`cg-ray tune`: a hyper-parameter search."""

from __future__ import annotations

import json

from cg_ray.cli.common import command, config_options, write_json


def register(sub) -> None:
    p = command(
        sub,
        "tune",
        "hyper-parameter search over tune.space with Ray Tune (ASHA "
        "or FIFO, random or Optuna); MLflow child run per trial",
        """
Search the config's tune.space with Ray Tune: each trial is a full training run (an MLflow
child run under one parent); the best trial's config is written as YAML.""",
        """
cg-ray tune --config configs/demo.yaml --set data.path=demo_out/data --num-samples 3
cg-ray tune --config configs/search.yaml --num-samples 16 --best-config-out best.yaml
cg-ray tune --config configs/search.yaml --resume
cg-ray tune --config configs/search.yaml --resume auto""",
        tune,
    )
    config_options(p)
    p.add_argument("--num-samples", type=int, metavar="N", help="trials (tune.num_samples)")
    p.add_argument(
        "--max-concurrent",
        type=int,
        metavar="M",
        help="trials at once (tune.max_concurrent; default: what the cluster fits)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="must",
        choices=["must", "auto"],
        help="continue the interrupted search run.storage_path/run.name: --resume (= must) is "
        "an error if there is none; --resume auto starts a new search then (for jobs that "
        "restart themselves)",
    )
    p.add_argument(
        "--best-config-out", metavar="PATH", help="also write the best trial's ready-to-train config here"
    )
    p.add_argument("--metrics-out", metavar="PATH", help="the search summary as JSON")


def tune(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.tune.search import search

    overrides = list(args.set)
    if args.num_samples is not None:
        overrides.append(f"tune.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        overrides.append(f"tune.max_concurrent={args.max_concurrent}")
    summary = search(load_config(args.config, overrides), args.resume, args.best_config_out)
    write_json(args.metrics_out, summary)
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "best"} | {"best_run_id": summary["best"]["run_id"]}
        )
    )
