"""`cg-ray tune`: a hyper-parameter search."""

from __future__ import annotations

import json

from cg_ray.cli.common import command, config_options, resume_option, write_json


def register(sub) -> None:
    p = command(
        sub,
        "tune",
        "hyper-parameter search over tune.space with Ray Tune (ASHA "
        "or FIFO, random or Optuna); MLflow child run per trial",
        """
Search the config's tune.space with Ray Tune: each trial is a full training run (an MLflow
child run under one parent); the best trial's config is written as YAML. At the end it prints
the trials' table (hyper-parameters, status, epochs, best metric) and the hyper-parameters'
importances, and writes a report (that table, importances, a parallel-coordinates picture and
the learning curves) to run.storage_path/run.name/report/ and the MLflow parent run; --report
makes it again for a finished or interrupted search.""",
        """
cg-ray tune --config configs/demo.yaml --set data.path=demo_out/data --num-samples 3
cg-ray tune --config configs/search.yaml --num-samples 16 --best-config-out best.yaml
cg-ray tune --config configs/search.yaml --resume
cg-ray tune --config configs/search.yaml --resume auto
cg-ray tune --report runs/demo
cg-ray tune --config configs/search.yaml --report""",
        tune,
    )
    config_options(p)
    next(a for a in p._actions if a.dest == "config").required = False  # --report DIR needs none
    p.add_argument("--num-samples", type=int, metavar="N", help="trials (tune.num_samples)")
    p.add_argument(
        "--max-concurrent",
        type=int,
        metavar="M",
        help="trials at once (tune.max_concurrent; default: what the cluster fits)",
    )
    resume_option(
        p,
        "continue the interrupted search run.storage_path/run.name: --resume (= must) is "
        "an error if there is none; --resume auto starts a new search then (for jobs that "
        "restart themselves)",
    )
    p.add_argument(
        "--best-config-out", metavar="PATH", help="also write the best trial's ready-to-train config here"
    )
    p.add_argument("--metrics-out", metavar="PATH", help="the search summary as JSON")
    p.add_argument(
        "--report",
        nargs="?",
        const="",
        metavar="SEARCH_DIR",
        help="only write (again) the report of a finished or interrupted search, run.storage_path/"
        "run.name (e.g. runs/demo); without SEARCH_DIR, the search of --config",
    )


def tune(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.errors import UserError
    from cg_ray.tune.report import report_command
    from cg_ray.tune.search import search

    if args.report is not None:
        print(report_command(args.report, args.config, args.set))
        return
    if not args.config:
        raise UserError("give --config FILE (or --report SEARCH_DIR for a search's report)")
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
