"""`cg-ray jobs list | status | logs | stop`: the cg_ray jobs on a cluster, each with its command,
state, start and duration and, for a training or a search, its MLflow run and latest progress
line (the last `epoch N/M` or `Trial status` line of its log)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time

from cg_ray.jobs import cluster
from cg_ray.secrets import MASK, redact

PROGRESS = re.compile(r"(epoch \d+/\d+.*|Trial status: .*)")
RAY_PREFIX = re.compile(r"^(\x1b\[[0-9;]*m)?\([^)\n]*\)(\x1b\[[0-9;]*m)?\s*")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LAST_LINES = 15  # of a failed job's log, in its status


def _when(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def _duration(info) -> str:
    if not info.start_time:
        return "-"
    seconds = int(((info.end_time or time.time() * 1000) - info.start_time) / 1000)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s"


def _command(info) -> str:
    return (info.metadata or {}).get("cg_ray.command") or info.entrypoint


def progress(log: str) -> str | None:
    """The latest progress line of a job's log, without Ray's `(Actor pid=...)` prefix."""
    for line in reversed(log.splitlines()):
        found = PROGRESS.search(ANSI.sub("", RAY_PREFIX.sub("", line)))
        if found:
            return found.group(1).strip()
    return None


def mlflow_run(info) -> str | None:
    """The MLflow run of a train job (the newest run of its name) or a search (its parent run),
    as the store its metadata names says; None when that store cannot be read from here."""
    meta = info.metadata or {}
    name, experiment = meta.get("cg_ray.run_name"), meta.get("cg_ray.experiment")
    uri = meta.get("cg_ray.tracking_uri") or ""
    here = os.environ.get("MLFLOW_TRACKING_URI")
    if here and redact(here) == uri:
        uri = here  # the store this shell names, with the credentials the job's metadata masks
    if not (name and experiment and uri) or MASK in uri:
        return None
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///") :]):
        return None  # a file on the nodes, not here (MLflow would make an empty one)
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is None:
            return None
        search = " and tags.`cg_ray.kind` = 'search'" if meta.get("cg_ray.job") == "tune" else ""
        runs = client.search_runs(
            [found.experiment_id],
            filter_string=f"attributes.run_name = '{name}'{search}",
            order_by=["attributes.start_time DESC"],
            max_results=20,
        )
    except Exception:  # noqa: BLE001 - an unreachable or foreign store: the listing goes on
        return None
    mine = [r for r in runs if search or "mlflow.parentRunId" not in r.data.tags]
    return mine[0].info.run_id if mine else None


def _details(client, info) -> list[str]:
    """The MLflow run and latest progress line of a training or a search."""
    if (info.metadata or {}).get("cg_ray.job") not in ("train", "tune"):
        return []
    run = mlflow_run(info)
    try:
        line = progress(client.get_job_logs(info.submission_id))
    except Exception:  # noqa: BLE001 - no logs yet (PENDING), or the job's node is gone
        line = None
    return [f"MLflow run {run}" if run else "MLflow run -", line or "no progress line yet"]


def list_jobs(address: str, every: bool = False, limit: int = 20) -> str:
    """The cluster's cg_ray jobs (every=True: all its jobs), newest first."""
    client = cluster.connect(address)
    jobs = [j for j in client.list_jobs() if every or "cg_ray.job" in (j.metadata or {})]
    jobs.sort(key=lambda j: j.start_time or 0, reverse=True)
    if not jobs:
        return f"no {'' if every else 'cg_ray '}jobs on the cluster at {address}"
    lines = []
    for info in jobs[:limit]:
        lines.append(
            f"{info.submission_id or info.job_id}  {info.status.value:<9}  started {_when(info.start_time)}"
            f"  {_duration(info):>7}  {_command(info)}"
        )
        details = _details(client, info)
        if details:
            lines.append("    " + "  ".join(details))
    if len(jobs) > limit:
        lines.append(f"({len(jobs) - limit} older jobs not shown: --limit N)")
    return "\n".join(lines)


def status(address: str, job_id: str) -> str:
    """One job: its state, command, times, MLflow run and progress; a failed job's last lines."""
    client = cluster.connect(address)
    info = cluster.job_info(client, address, job_id)
    message = (info.message or "").strip().splitlines()
    lines = [
        f"job {job_id}: {info.status.value}" + (f" ({message[0]})" if message else ""),
        f"  command   {_command(info)}",
        f"  started   {_when(info.start_time)}, ran {_duration(info)}"
        + (f", exit code {info.driver_exit_code}" if info.driver_exit_code is not None else ""),
    ]
    details = _details(client, info)
    if details:
        lines += [f"  mlflow    {details[0].removeprefix('MLflow ')}", f"  progress  {details[1]}"]
    if info.status == "FAILED":
        log = client.get_job_logs(job_id).rstrip().splitlines()
        lines += ["  last lines of its log:"] + [f"    {line}" for line in log[-LAST_LINES:]]
    return "\n".join(lines)


async def _tail(client, job_id: str) -> None:
    async for lines in client.tail_job_logs(job_id):
        print(lines, end="", flush=True)


def logs(address: str, job_id: str, follow: bool = False) -> int:
    """Print the job's log; follow=True: to the job's end, then exit 0 only if it SUCCEEDED
    (Ctrl-C stops following, the job goes on)."""
    client = cluster.connect(address)
    info = cluster.job_info(client, address, job_id)
    if not follow:
        print(client.get_job_logs(job_id), end="", flush=True)
        return 0
    try:
        asyncio.run(_tail(client, job_id))
        info = cluster.wait_for_end(client, job_id, timeout=60)
    except KeyboardInterrupt:
        print(
            f"jobs: stopped following {job_id}; it goes on: {cluster.follow_hint(job_id, address)}",
            file=sys.stderr,
        )
        return 130
    print(f"job {job_id}: {info.status.value}", file=sys.stderr)
    return 0 if info.status == "SUCCEEDED" else 1


def stop(address: str, job_id: str, wait: float = 60) -> str:
    """Ask Ray to stop the job and wait (up to `wait` seconds) for it to end: what happened."""
    client = cluster.connect(address)
    info = cluster.job_info(client, address, job_id)
    if info.status in cluster.TERMINAL:
        return f"job {job_id} had ended already: {info.status.value}"
    client.stop_job(job_id)
    info = cluster.wait_for_end(client, job_id, timeout=wait)
    if info.status in cluster.TERMINAL:
        return f"job {job_id}: {info.status.value}"
    return f"job {job_id}: asked to stop, still {info.status.value} after {wait:.0f} s"
