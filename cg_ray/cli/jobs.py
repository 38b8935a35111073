"""`cg-ray submit` and `cg-ray jobs list | logs | stop | status`: cg_ray commands as jobs on a Ray
cluster."""

from __future__ import annotations

import argparse

from cg_ray.cli.common import command
from cg_ray.jobs import JOBS


def _address_option(p) -> None:
    p.add_argument(
        "--address",
        metavar="URL",
        help="the cluster's job server, http://HEAD:8265 (default: $RAY_ADDRESS)",
    )


def _submit_options(p) -> None:
    """submit's own options: declared once, for its help and for finding them after JOB."""
    _address_option(p)
    p.add_argument(
        "--runtime-env",
        metavar="FILE",
        help="runtime_env YAML (default: jobs/runtime_env.yaml of this checkout: cg_ray installed on "
        "the nodes; jobs/runtime_env.dev.yaml ships the checkout)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="also pass this variable of this shell to the job (never a credential)",
    )
    p.add_argument("--submission-id", metavar="ID", help="the job's id (default: one Ray makes)")
    p.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="submit a lost job again, up to N times, with --resume auto (a lost head, node or "
        "driver; not a job that failed on its own)",
    )
    p.add_argument(
        "--head-wait",
        type=float,
        default=600,
        metavar="SECONDS",
        help="how long to wait for a head that stopped answering before giving up",
    )
    p.add_argument(
        "--no-wait", action="store_true", help="print the job's id and return once it is submitted"
    )


def register(sub) -> None:
    p = command(
        sub,
        "submit",
        "run a cg-ray command as a job on a Ray cluster and follow it",
        """
Submit `cg-ray JOB ARGS` to the Ray cluster at --address (default $RAY_ADDRESS), follow its logs
and exit with its outcome: 0 only when it SUCCEEDED. The command's options are given as they
would be locally; submit's own options may come before or after JOB (after `--`, everything goes
to the command untouched). The config file and any local file an option names travel with the
job; a file option naming a file that is not here, or a train/tune config that does not
validate, is refused before anything is submitted. This shell's MLflow and storage settings
(MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL, AWS_REGION, ...) go with it, credentials never.
Ray's auth token is found as Ray finds it ($RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH,
~/.ray/auth_token). Ctrl-C stops following (the job goes on) and says how to follow or stop it
again; --no-wait prints the job's id and returns at once.""",
        """
cg-ray submit train --config configs/demo.yaml --set train.epochs=3
cg-ray submit tune --config configs/search.yaml --set data.path=s3://bucket/data --retries 2
cg-ray submit train --config configs/demo.yaml --no-wait --address http://127.0.0.1:8265
cg-ray submit evaluate --checkpoint s3://bucket/runs/demo/checkpoint_000005 --data s3://bucket/data
cg-ray submit --runtime-env jobs/runtime_env.dev.yaml pack s3://bucket/data""",
        submit,
    )
    _submit_options(p)
    p.add_argument("job", choices=JOBS, metavar="JOB", help=f"the cg-ray command to run: {', '.join(JOBS)}")
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        metavar="...",
        help="the command's own options, as `cg-ray JOB --help` lists them",
    )

    p = command(
        sub,
        "jobs",
        "list, follow, stop or inspect the cg_ray jobs on a Ray cluster",
        """
The cg_ray jobs on the Ray cluster at --address (default $RAY_ADDRESS), as `cg-ray submit`
submitted them: their command, state, start and duration and, for a training or a search, its
MLflow run and latest progress line.""",
        """
cg-ray jobs list
cg-ray jobs status raysubmit_XYZ
cg-ray jobs logs raysubmit_XYZ --follow
cg-ray jobs stop raysubmit_XYZ""",
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = command(
        actions,
        "list",
        "the cg_ray jobs on the cluster, newest first",
        """
One line per job (its id, state, start, how long it ran, its command) and, for a training or a
search, its MLflow run and the latest progress line of its log.""",
        """
cg-ray jobs list
cg-ray jobs list --all --limit 50 --address http://127.0.0.1:8265""",
        jobs_list,
    )
    _address_option(c)
    c.add_argument("--all", action="store_true", help="every job on the cluster, not only cg_ray's")
    c.add_argument("--limit", type=int, default=20, metavar="N", help="show the N newest")
    for name, summary, description, example, func in (
        (
            "status",
            "one job's state, command, times, MLflow run and progress",
            "One job in detail: its state, command, start and duration, exit code, MLflow run and latest "
            "progress line, and for a failed job the last lines of its log.",
            "cg-ray jobs status raysubmit_XYZ",
            jobs_status,
        ),
        (
            "logs",
            "print a job's log, or follow it to its end",
            "Print a job's log so far; --follow streams it until the job ends and exits with its outcome "
            "(0 only when it SUCCEEDED). Ctrl-C stops following; the job goes on.",
            "cg-ray jobs logs raysubmit_XYZ --follow",
            jobs_logs,
        ),
        (
            "stop",
            "stop a job",
            "Ask Ray to stop a job (its driver gets SIGTERM, then SIGKILL) and wait for it to end. A "
            "training or search stopped this way continues with `cg-ray submit ... --resume`.",
            "cg-ray jobs stop raysubmit_XYZ",
            jobs_stop,
        ),
    ):
        c = command(actions, name, summary, description, example, func)
        c.add_argument("job_id", metavar="ID", help="the job's id, as `cg-ray jobs list` shows it")
        _address_option(c)
        if name == "logs":
            c.add_argument("--follow", action="store_true", help="stream the log until the job ends")


def split_submit_args(args: argparse.Namespace) -> list[str]:
    """submit's own options found after JOB (before any `--`) into `args`; the command's own
    arguments, in order."""
    rest = list(args.args)
    tail: list[str] = []
    if "--" in rest:
        at = rest.index("--")
        rest, tail = rest[:at], rest[at + 1 :]
    own = argparse.ArgumentParser(prog="cg-ray submit", add_help=False, allow_abbrev=False)
    _submit_options(own)
    _, command_args = own.parse_known_args(rest, namespace=args)
    return command_args + tail


def submit(args) -> None:
    from cg_ray.jobs import cluster
    from cg_ray.jobs.files import DEFAULT_RUNTIME_ENV
    from cg_ray.jobs.submit import Submission
    from cg_ray.jobs.submit import submit as submit_job

    command_args = split_submit_args(args)
    submission = Submission(
        job=args.job,
        args=command_args,
        address=cluster.address_of(args.address),
        runtime_env=args.runtime_env or DEFAULT_RUNTIME_ENV,
        extra_env=args.env,
        submission_id=args.submission_id,
        retries=args.retries,
        head_wait=args.head_wait,
        wait=not args.no_wait,
    )
    code = submit_job(submission)
    if code:
        raise SystemExit(code)


def jobs_list(args) -> None:
    from cg_ray.jobs import cluster, listing

    print(listing.list_jobs(cluster.address_of(args.address), args.all, args.limit))


def jobs_status(args) -> None:
    from cg_ray.jobs import cluster, listing

    print(listing.status(cluster.address_of(args.address), args.job_id))


def jobs_logs(args) -> None:
    from cg_ray.jobs import cluster, listing

    code = listing.logs(cluster.address_of(args.address), args.job_id, args.follow)
    if code:
        raise SystemExit(code)


def jobs_stop(args) -> None:
    from cg_ray.jobs import cluster, listing

    print(listing.stop(cluster.address_of(args.address), args.job_id))
