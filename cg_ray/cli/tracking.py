"""`cg-ray tracking sync`: deliver what a run kept while MLflow was away."""

from __future__ import annotations

import json

from cg_ray.cli.common import command, tracking_option


def register(sub) -> None:
    p = command(
        sub,
        "tracking",
        "deliver tracking records kept while MLflow was away",
        """
While the MLflow server is away, training goes on: its metrics, params, tags, artifacts and
registrations wait and are retried. What is still waiting when a command ends is kept in the run
folder (RUN_DIR/tracking/); sync delivers it.""",
        """
cg-ray tracking sync runs/demo
cg-ray tracking sync s3://work/runs/search-1 --tracking-uri http://mlflow:5000""",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = command(
        actions,
        "sync",
        "replay a run's kept tracking records into MLflow",
        """
Deliver, in order, the tracking records that a run (or a search, with its trials) kept in its
folder: into its own store, the records it lacks; into another one (a fresh server), each run is
created (name, params, tags) and all its records added. Running it again adds nothing twice.""",
        """
cg-ray tracking sync runs/demo
cg-ray tracking sync runs/search-1 --tracking-uri http://127.0.0.1:5000""",
        sync,
    )
    c.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder: run.storage_path/run.name")
    tracking_option(c, "$MLFLOW_TRACKING_URI, else the one the records name", "MLflow store to deliver to")
    c.add_argument(
        "--wait",
        type=float,
        metavar="S",
        help="seconds to keep retrying an unreachable server (default: $CG_RAY_TRACKING_WAIT_S or 120)",
    )


def sync(args) -> None:
    from cg_ray.predict.pyfunc import register_checkpoint
    from cg_ray.tracking_sync import sync

    print(json.dumps(sync(args.run_dir, args.tracking_uri, args.wait, register_checkpoint)))
