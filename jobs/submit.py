"""Submit a cg_ray job to a Ray cluster, follow its logs, exit 0 only when it SUCCEEDED.

    python jobs/submit.py train --address http://HEAD:8265 -- --config configs/demo.yaml --set ...
    make submit JOB=train CONFIG=configs/demo.yaml RAY_ADDRESS=http://HEAD:8265 ARGS="--set ..."

The runtime_env comes from a YAML file (jobs/runtime_env.yaml: cg_ray installed on the nodes;
jobs/runtime_env.dev.yaml: the checkout travels with the job); its working_dir is relative to the
repository root. The storage and MLflow settings of this shell (PASS_ENV) are added to its
env_vars; credentials never are: the nodes take theirs from their own environment.
(`ray job submit` alone exits 0 for a job that was stopped; this exits 1 for anything but SUCCEEDED.)

`--retries N` (make submit ... RETRIES=N) submits a job again, up to N times, when it was lost
rather than failed: see LOST below. The retry runs the same command with `--resume auto` (train
and tune: continue from the state the lost run saved, or start if it saved none).
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
# A job is lost, and run again with --retries, when it did not end by its own decision: its
# supervisor actor died (the head or the node that ran the driver went away), its driver was
# killed by a signal (exit code < 0 or > 128: the OOM killer, a preempted or drained node, SIGKILL;
# 130 is also cg-ray's own exit after an interrupt whose state it saved), or the head stopped
# answering and came back without the job. A command that exits with a code of its own (2: bad
# input or a permanent storage error, 1: any other error) is not run again: it would fail the
# same way. Neither is a job that a person STOPPED, nor one whose runtime_env failed to set up or
# that no node could host.
LOST_ERROR_TYPES = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE"}
RESUMABLE_JOBS = ("train", "tune")  # the commands with --resume; pack and scenes continue anyway


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


def lost_because(info) -> str | None:
    """Why a finished job was lost rather than failed by its own command (LOST); None when it
    was not lost: it succeeded, was stopped, or its command failed on its own."""
    if info is None:
        return "the head no longer knows the job (it was replaced)"
    if info.status != "FAILED":  # JobStatus and JobErrorType are str enums
        return None
    kind, code = getattr(info.error_type, "value", info.error_type), info.driver_exit_code
    if kind in LOST_ERROR_TYPES:
        return f"{kind}: {(info.message or 'no message').splitlines()[0]}"
    if kind == "JOB_ENTRYPOINT_COMMAND_ERROR" and code is not None and (code < 0 or code > 128):
        return f"its driver was killed (exit code {code})"
    return None


def with_resume_auto(job: str, args: list[str]) -> list[str]:
    """The command's arguments for a retry: any --resume [must|auto] replaced by --resume auto
    (train, tune); other commands unchanged."""
    if job not in RESUMABLE_JOBS:
        return list(args)
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
            continue
        if arg.startswith("--resume="):
            continue
        if arg == "--resume":
            skip = i + 1 < len(args) and args[i + 1] in ("must", "auto")
            continue
        out.append(arg)
    return [*out, "--resume", "auto"]


def _wait_for_end(address: str, client, job_id: str, head_wait: float):
    """The job's final info, polling its status (also across a head that goes away and comes
    back within head_wait seconds); None when the head answers but no longer knows the job."""
    from ray.job_submission import JobSubmissionClient

    silent_since = None
    while True:
        try:
            client = client or JobSubmissionClient(address)
            info = client.get_job_info(job_id)
        except OSError:  # nobody answers (ConnectionError, and requests' errors, are OSErrors)
            if silent_since is None:
                silent_since = time.time()
                print(f"submit: no answer from {address}: waiting up to {head_wait:.0f} s", file=sys.stderr)
            elif time.time() - silent_since > head_wait:
                raise ConnectionError(
                    f"the cluster at {address} did not answer for {head_wait:.0f} s"
                ) from None
            client = None  # a new head: a new client (and its version check)
            time.sleep(5)
            continue
        except RuntimeError as exc:
            if "status code 404" in str(exc):
                return None
            raise
        if info.status.is_terminal():
            return info
        silent_since = None
        time.sleep(1)  # the log stream can end a moment before the status does


def submit_once(
    job: str, address: str, env: dict, args: list[str], submission_id: str | None, head_wait: float
) -> tuple[int, str | None]:
    """Submit, follow the logs to the end: (exit code, why the job was lost or None)."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus, JobSubmissionClient

    staged, args = with_config(env, args)
    command = entrypoint(job, env, args)  # a staged working_dir keeps the script's place
    copy = staged["working_dir"] if staged.get("working_dir") != env.get("working_dir") else None
    try:
        client = JobSubmissionClient(address)
        job_id = client.submit_job(entrypoint=command, runtime_env=staged, submission_id=submission_id)
    except AuthenticationError:
        print(f"submit: {AUTH_HINT.format(address=address)}", file=sys.stderr)
        return 2, None
    except (RuntimeError, ConnectionError) as exc:
        if "authentication" in str(exc).lower() or "401" in str(exc):
            print(f"submit: {AUTH_HINT.format(address=address)}", file=sys.stderr)
            return 2, None
        print(f"submit: cannot submit to {address}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2, None
    finally:  # submit_job has uploaded the staged copy (or failed): it is not needed here
        if copy:
            shutil.rmtree(copy, ignore_errors=True)
    print(f"submitted {job_id}: {command}", file=sys.stderr, flush=True)
    try:
        try:
            asyncio.run(_follow(client, job_id))
        except Exception as exc:  # noqa: BLE001 - the stream broke (a lost head?): the status says
            why = (str(exc).splitlines() or [type(exc).__name__])[0]
            print(f"submit: the log stream of {job_id} broke ({why})", file=sys.stderr)
        info = _wait_for_end(address, client, job_id, head_wait)
    except KeyboardInterrupt:
        print(
            f"submit: stopped following; the job goes on: ray job stop {job_id} --address {address}",
            file=sys.stderr,
        )
        return 130, None
    except ConnectionError as exc:  # a head that does not come back: nothing to submit to
        print(f"submit: {exc}; job {job_id} is lost", file=sys.stderr)
        return 1, None
    lost = lost_because(info)
    if info is not None:
        message = f" ({info.message})" if info.message else ""
        print(f"job {job_id}: {info.status.value}{message}", file=sys.stderr)
    return (0 if info is not None and info.status == JobStatus.SUCCEEDED else 1), lost


def submit(
    job: str,
    address: str,
    env: dict,
    args: list[str],
    submission_id: str | None,
    retries: int = 0,
    head_wait: float = 600,
) -> int:
    """Submit and follow the job; run it again (with --resume auto) while it is lost, up to
    `retries` times. The exit code: 0 only when it SUCCEEDED."""
    use_auth_token()
    for attempt in range(retries + 1):
        sid = f"{submission_id}-retry{attempt}" if submission_id and attempt else submission_id
        code, lost = submit_once(job, address, env, args, sid, head_wait)
        if lost is None or attempt == retries:
            if lost is not None and retries:
                print(f"submit: lost {retries + 1} times ({lost}); giving up", file=sys.stderr)
            return code
        args = with_resume_auto(job, args)
        print(
            f"submit: the job was lost ({lost}): submitting it again with --resume auto "
            f"(retry {attempt + 1} of {retries})",
            file=sys.stderr,
            flush=True,
        )
    return 1  # not reached: the last attempt returns


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
    parser.add_argument(
        "--retries",
        type=int,
        default=0,
        metavar="N",
        help="submit a lost job again, up to N times, with --resume auto (a lost head, node or "
        "driver; not a job that failed on its own)",
    )
    parser.add_argument(
        "--head-wait",
        type=float,
        default=600,
        metavar="SECONDS",
        help="how long to wait for a head that stopped answering before giving up (default 600)",
    )
    ns = parser.parse_args(own)
    if ns.retries < 0:
        parser.error("--retries must be 0 or more")
    if not ns.address:
        parser.error("no cluster: give --address http://HEAD:8265 or set RAY_ADDRESS")
    return ns, args


def main(argv: list[str] | None = None) -> int:
    ns, args = parse(sys.argv[1:] if argv is None else list(argv))
    env = runtime_env(ns.runtime_env, ns.env)
    return submit(ns.job, ns.address, env, args, ns.submission_id, ns.retries, ns.head_wait)


if __name__ == "__main__":
    sys.exit(main())
