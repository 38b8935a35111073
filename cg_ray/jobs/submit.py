"""`cg-ray submit JOB [the command's options]`: a cg-ray command as a Ray job on a cluster, followed
to its end; exit status 0 only when it SUCCEEDED (`ray job submit` alone exits 0 for a job that
was stopped). Ctrl-C detaches (the job goes on); `wait=False` returns once it is submitted.

`retries=N` submits a job again, up to N times, when it was lost rather than failed (see LOST
below), with `--resume auto` (train and tune continue from the state the lost run saved).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field

from cg_ray.errors import UserError
from cg_ray.jobs import JOBS, cluster, files
from cg_ray.secrets import redact

# A job is lost, and run again with retries, when it did not end by its own decision: its
# supervisor actor died (the head or the node that ran the driver went away), its driver was
# killed by a signal (exit code < 0 or > 128: the OOM killer, a preempted or drained node, SIGKILL;
# 130 is also cg-ray's own exit after an interrupt whose state it saved), or the head stopped
# answering and came back without the job. A command that exits with a code of its own (2: bad
# input or a permanent storage error, 1: any other error) is not run again: it would fail the
# same way. Neither is a job that a person STOPPED, nor one whose runtime_env failed to set up or
# that no node could host.
LOST_ERROR_TYPES = {"JOB_SUPERVISOR_ACTOR_DIED", "JOB_SUPERVISOR_ACTOR_UNKNOWN_FAILURE"}
RESUMABLE_JOBS = ("train", "tune")  # the commands with --resume; pack and scenes continue anyway


@dataclass
class Submission:
    """What to submit where: the cg-ray command JOB ARGS, and how."""

    job: str
    args: list[str]
    address: str
    runtime_env: str = files.DEFAULT_RUNTIME_ENV
    extra_env: list[str] = field(default_factory=list)
    submission_id: str | None = None
    retries: int = 0
    head_wait: float = 600
    wait: bool = True


def entrypoint(job: str, env: dict, args: list[str]) -> str:
    """`python <the job script, relative to working_dir> ARGS`, or the installed `cg-ray`
    command when nothing travels with the job."""
    working_dir = env.get("working_dir")
    if working_dir and "://" not in working_dir:
        script = os.path.relpath(os.path.join(files.ROOT, "jobs", f"{job}.py"), working_dir)
        return shlex.join(["python", script, *args])
    return shlex.join(["cg-ray", job, *args])


def metadata(job: str, args: list[str]) -> dict[str, str]:
    """What `cg-ray jobs` shows of a job: the command as given and, for train and tune, where
    its MLflow run is (run name, experiment, store; a store whose URI holds credentials is
    named masked)."""
    meta = {"cg_ray.job": job, "cg_ray.command": redact(shlex.join(["cg-ray", job, *args]))}
    if job in RESUMABLE_JOBS:
        cfg = _config(args)
        if cfg is not None:
            uri = cfg.run.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
            meta.update(
                {
                    "cg_ray.run_name": cfg.run.name,
                    "cg_ray.experiment": cfg.run.experiment,
                    "cg_ray.tracking_uri": redact(uri),
                }
            )
    return meta


def _config(args: list[str]):
    """The config of a train or tune command line, checked here (a wrong key or value is refused
    before anything is submitted); None when it names no local config file."""
    from cg_ray.config import load_config

    path, sets, i = None, [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--config" and i + 1 < len(args):
            path, i = args[i + 1], i + 1
        elif arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif arg == "--set":
            while i + 1 < len(args) and not args[i + 1].startswith("--"):
                sets.append(args[i + 1])
                i += 1
        i += 1
    if path is None or not os.path.isfile(path):
        return None
    return load_config(path, sets)


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


def _say(line: str) -> None:
    print(f"submit: {line}", file=sys.stderr, flush=True)


async def _follow(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


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
                _say(f"no answer from {address}: waiting up to {head_wait:.0f} s")
            elif time.time() - silent_since > head_wait:
                silent = f"the cluster at {address} did not answer for {head_wait:.0f} s"
                raise ConnectionError(silent) from None
            client = None  # a new head: a new client (and its version check)
            time.sleep(5)
            continue
        except RuntimeError as exc:
            if "status code 404" in str(exc):
                return None
            raise
        if info.status in cluster.TERMINAL:
            return info
        silent_since = None
        time.sleep(1)  # the log stream can end a moment before the status does


def _send(s: Submission, env: dict, args: list[str], submission_id: str | None) -> tuple[object, str, str]:
    """Submit once: (the client, the job's id, its entrypoint)."""
    meta = metadata(s.job, args)  # checks a train or tune config here first
    staged_env, staged_args, copy = files.stage(env, args)
    command = entrypoint(s.job, env, staged_args)  # a staged working_dir keeps the script's place
    try:
        client = cluster.connect(s.address)
        job_id = client.submit_job(
            entrypoint=command,
            runtime_env=staged_env,
            submission_id=submission_id,
            metadata=meta,
        )
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError for what the server refused
        raise cluster.refused(exc, s.address) or UserError(
            f"cannot submit to {s.address}: {str(exc).splitlines()[0]}"
        ) from None
    finally:  # submit_job has uploaded the staged copy (or failed): it is not needed here
        if copy:
            shutil.rmtree(copy, ignore_errors=True)
    return client, job_id, command


def follow(
    client, address: str, job_id: str, head_wait: float = 600, command: str = ""
) -> tuple[int, str | None]:
    """Say the job was submitted and print its logs to its end: (exit code, why the job was lost
    or None). Ctrl-C detaches with one line saying how to follow or stop the job again (exit
    code 130)."""
    try:
        _say(f"submitted {job_id}: {command}")  # from here on, Ctrl-C detaches
        try:
            asyncio.run(_follow(client, job_id))
        except Exception as exc:  # noqa: BLE001 - the stream broke (a lost head?): the status says
            _say(f"the log stream of {job_id} broke ({(str(exc).splitlines() or [type(exc).__name__])[0]})")
        info = _wait_for_end(address, client, job_id, head_wait)
    except KeyboardInterrupt:
        _say(f"detached; job {job_id} goes on: {cluster.follow_hint(job_id, address)}")
        return 130, None
    except ConnectionError as exc:  # a head that does not come back: nothing to submit to
        _say(f"{exc}; job {job_id} is lost")
        return 1, None
    if info is not None:
        first = (info.message or "").strip().splitlines()
        print(f"job {job_id}: {info.status.value}" + (f" ({first[0]})" if first else ""), file=sys.stderr)
    return (0 if info is not None and info.status == "SUCCEEDED" else 1), lost_because(info)


def submit(s: Submission) -> int:
    """Submit the job and follow it (or, wait=False, print its id and return); submit it again
    (with --resume auto) while it is lost, up to s.retries times. The exit code: 0 only when it
    SUCCEEDED."""
    if s.job not in JOBS:
        raise UserError(f"unknown job {s.job!r}: one of {', '.join(JOBS)}")
    if s.retries < 0 or (s.retries and not s.wait):
        raise UserError("--retries takes N >= 0, and needs the job followed (not --no-wait)")
    env = files.runtime_env(s.runtime_env, s.extra_env)
    args = list(s.args)
    for attempt in range(s.retries + 1):
        sid = f"{s.submission_id}-retry{attempt}" if s.submission_id and attempt else s.submission_id
        client, job_id, command = _send(s, env, args, sid)
        if not s.wait:
            _say(f"submitted {job_id}: {command}")
            print(job_id, flush=True)
            return 0
        code, lost = follow(client, s.address, job_id, s.head_wait, command)
        if lost is None or attempt == s.retries:
            if lost is not None and s.retries:
                _say(f"lost {s.retries + 1} times ({lost}); giving up")
            return code
        args = with_resume_auto(s.job, args)
        _say(
            f"the job was lost ({lost}): submitting it again with --resume auto "
            f"(retry {attempt + 1} of {s.retries})"
        )
    return 1  # not reached: the last attempt returns
