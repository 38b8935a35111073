"""Submit a cg_ray job to a Ray cluster, follow its logs, exit 0 only when it SUCCEEDED.

    python jobs/submit.py train --address http://HEAD:8265 -- --config configs/demo.yaml --set ...
    make submit JOB=train CONFIG=configs/demo.yaml RAY_ADDRESS=http://HEAD:8265 ARGS="--set ..."

The runtime_env comes from a YAML file (jobs/runtime_env.yaml: cg_ray installed on the nodes;
jobs/runtime_env.dev.yaml: the checkout travels with the job); its working_dir is relative to the
repository root. The storage and MLflow settings of this shell (PASS_ENV) are added to its
env_vars; credentials never are: the nodes take theirs from their own environment.
(`ray job submit` alone exits 0 for a job that was stopped; this exits 1 for anything but SUCCEEDED.)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import sys
import tempfile
import time

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = ("pack", "scenes", "text", "train", "tune", "evaluate", "serve")
PASS_ENV = (
    "MLFLOW_TRACKING_URI",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "CG_RAY_PROGRESS",
)
SECRET = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|ACCESS_KEY|API_KEY|CREDENTIAL|SESSION", re.I)


def runtime_env(path: str, extra_env: list[str]) -> dict:
    """The YAML's runtime_env, working_dir made absolute, this shell's settings added."""
    with open(path) as f:
        env = yaml.safe_load(f) or {}
    if env.get("working_dir") and "://" not in env["working_dir"]:
        env["working_dir"] = os.path.normpath(os.path.join(ROOT, env["working_dir"]))
    env_vars = dict(env.get("env_vars") or {})
    for name in (*PASS_ENV, *extra_env):
        if SECRET.search(name):
            raise SystemExit(
                f"submit: refusing to send {name} with the job: give the nodes "
                f"their credentials (instance role, Kubernetes Secret)"
            )
        if name in os.environ:
            env_vars[name] = os.environ[name]
    env["env_vars"] = env_vars
    return env


def entrypoint(job: str, env: dict, args: list[str]) -> str:
    """`python <the job script, relative to working_dir> ARGS`, or the installed `cg-ray`
    command when nothing travels with the job."""
    working_dir = env.get("working_dir")
    if working_dir and "://" not in working_dir:
        script = os.path.relpath(os.path.join(ROOT, "jobs", f"{job}.py"), working_dir)
        return shlex.join(["python", script, *args])
    return shlex.join(["cg-ray", job, *args])


def with_config(env: dict, args: list[str]) -> tuple[dict, list[str]]:
    """The config file named by --config travels with the job: a local file inside the
    working_dir is named relative to it; any other local file goes into a copy of the working_dir
    (as _config/NAME) that is uploaded instead. A URI, or a path that is not a file here, stays
    as it is (the job reads it, or says that it is missing)."""
    args = list(args)
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            index, path = i + 1, args[i + 1]
            break
        if arg.startswith("--config="):
            index, path = i, arg.split("=", 1)[1]
            break
    else:
        return env, args
    if "://" in path or not os.path.isfile(path):
        return env, args
    prefix = "--config=" if args[index].startswith("--config=") else ""
    full = os.path.abspath(path)
    working_dir = env.get("working_dir")
    if working_dir and "://" not in working_dir and full.startswith(working_dir + os.sep):
        args[index] = prefix + os.path.relpath(full, working_dir)
        return env, args
    if working_dir and "://" in working_dir:
        raise SystemExit(
            f"submit: cannot add {path} to the remote working_dir {working_dir}: "
            f"give --config as a URI the nodes can read"
        )
    staged = tempfile.mkdtemp(prefix="cg-ray-job-")  # removed by submit() once uploaded
    if working_dir:
        shutil.copytree(
            working_dir,
            staged,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(*env.get("excludes", []), ".git", ".venv"),
        )
    os.makedirs(os.path.join(staged, "_config"))
    shutil.copy(full, os.path.join(staged, "_config", os.path.basename(full)))
    args[index] = prefix + f"_config/{os.path.basename(full)}"
    return {**env, "working_dir": staged}, args


def use_auth_token() -> None:
    """Send Ray's auth token the way Ray's own CLI finds one: with RAY_AUTH_MODE unset, a token
    in $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token turns token mode on."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    from ray._raylet import AuthenticationTokenLoader, Config

    if AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        os.environ["RAY_AUTH_MODE"] = "token"
        Config.initialize("")  # Ray reads the mode once per process


AUTH_HINT = (
    "the cluster at {address} wants a Ray auth token: put the head's token (`ray "
    "get-auth-token` there) in ~/.ray/auth_token, or set RAY_AUTH_TOKEN=<token> "
    "(or RAY_AUTH_TOKEN_PATH=<file>)"
)


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def submit(job: str, address: str, env: dict, args: list[str], submission_id: str | None) -> int:
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    use_auth_token()
    staged, args = with_config(env, args)
    command = entrypoint(job, env, args)  # a staged working_dir keeps the script's place
    copy = staged["working_dir"] if staged.get("working_dir") != env.get("working_dir") else None
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=command, runtime_env=staged, submission_id=submission_id)
    except AuthenticationError:
        print(f"submit: {AUTH_HINT.format(address=address)}", file=sys.stderr)
        return 2
    except (RuntimeError, ConnectionError) as exc:
        if "authentication" in str(exc).lower() or "401" in str(exc):
            print(f"submit: {AUTH_HINT.format(address=address)}", file=sys.stderr)
            return 2
        print(f"submit: cannot submit to {address}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    finally:  # submit_job has uploaded the staged copy (or failed): it is not needed here
        if copy:
            shutil.rmtree(copy, ignore_errors=True)
    print(f"submitted {job_id}: {command}", file=sys.stderr, flush=True)
    try:
        asyncio.run(_follow(client, job_id))
        status = client.get_job_status(job_id)
        while status not in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            time.sleep(1)  # the log stream can end a moment before the status does
            status = client.get_job_status(job_id)
    except KeyboardInterrupt:
        print(
            f"submit: stopped following; the job goes on: ray job stop {job_id} --address {address}",
            file=sys.stderr,
        )
        return 130
    info = client.get_job_info(job_id)
    print(f"job {job_id}: {status.value}" + (f" ({info.message})" if info.message else ""), file=sys.stderr)
    return 0 if status == JobStatus.SUCCEEDED else 1


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(submit's own options, the command's arguments)."""
    # Everything after `--` goes to the command untouched (argparse's REMAINDER would also
    # swallow submit's own options after the job name).
    split = argv.index("--") if "--" in argv else len(argv)
    own, args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], usage="%(prog)s JOB [options] -- [the command's arguments]"
    )
    parser.add_argument("job", choices=JOBS)
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="the job server, http://HEAD:8265 (default: $RAY_ADDRESS)",
    )
    parser.add_argument("--runtime-env", default=os.path.join(ROOT, "jobs", "runtime_env.yaml"))
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME",
        help="also pass this variable of the submitting shell",
    )
    parser.add_argument("--submission-id")
    ns = parser.parse_args(own)
    if not ns.address:
        parser.error("no cluster: give --address http://HEAD:8265 or set RAY_ADDRESS")
    return ns, args


def main(argv: list[str] | None = None) -> int:
    ns, args = parse(sys.argv[1:] if argv is None else list(argv))
    return submit(ns.job, ns.address, runtime_env(ns.runtime_env, ns.env), args, ns.submission_id)


if __name__ == "__main__":
    sys.exit(main())
