"""MLflow: one run per training, the resolved config as params, per-epoch metrics, artifacts.

Every write goes through this process's outbox (cg_ray.tracking_outbox): queued, never blocking
the training loop, delivered in order by one thread that retries with back-off while the server
is away, and journaled in the run's folder (RUN_DIR/tracking/) for whoever delivers the rest: the
driver after its workers, a search after its trials, or `cg-ray tracking sync RUN_DIR`. Reads
(get_run, metric_history) and the start of a command's run are synchronous: a store that cannot be
used at the start of a command fails it at once.

    start_run / reopen_run        the run (created now, or later when a trial starts while away)
    log_* / set_tags / set_status queued records
    flush / end_run               wait for delivery; end_run writes the journals
    adopt                         deliver what other processes left in a run folder
    kept_warning                  the line to print when records are left for `tracking sync`
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from cg_ray import storage
from cg_ray.errors import UserError
from cg_ray.secrets import redact, redact_tree
from cg_ray.tracking_outbox import OUTBOX, PENDING, artifact_root, handoff_s, transient, wait_s


def tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else sqlite in the working directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{os.path.abspath('mlflow.db')}"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail at start, not after an epoch of work, when the tracking store cannot be used."""
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.parse
        import urllib.request

        parts = urllib.parse.urlsplit(uri)
        host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
        request = urllib.request.Request(
            urllib.parse.urlunsplit((parts.scheme, host, parts.path.rstrip("/") + "/health", "", ""))
        )
        if parts.username:  # credentials in the URI go in a header, as MLflow's client does
            token = base64.b64encode(f"{parts.username}:{parts.password or ''}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read()
        except (urllib.error.URLError, OSError) as exc:
            why = getattr(exc, "reason", exc)
            raise UserError(
                f"MLflow tracking server {redact(uri)} is unreachable ({why}): start "
                f"it, or point MLFLOW_TRACKING_URI / run.tracking_uri elsewhere"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :]) or "."
        if not os.path.isdir(folder):
            raise UserError(f"MLflow store {uri}: folder '{folder}' does not exist")


def reachable(uri: str, timeout: float = 5.0) -> bool:
    """One quick look (no retries): whether the store answers now."""
    try:
        check_reachable(uri, timeout)
    except UserError:
        return False
    return True


def bind(run_id: str, run_dir: str) -> None:
    """Journal this process's records of run_id in run_dir/tracking/."""
    OUTBOX.bind(run_id, run_dir)


def start_run(
    uri: str,
    experiment: str,
    run_name: str,
    params: dict,
    tags: dict | None = None,
    *,
    run_dir: str | None = None,
    defer: bool = False,
) -> str:
    """Create the run and log the flattened params (secrets masked); returns its id. Its records
    are journaled in run_dir/tracking/ when given. defer=True (a search's trial: the search
    checked the store at its start): a server away now does not stop the run, which gets a
    `pending-...` id and is created when the server is back."""
    params, tags = redact_tree(params), redact_tree(tags or {})
    run_id = None
    if not defer or reachable(uri):
        client = _client(uri)
        try:
            found = client.get_experiment_by_name(experiment)
            experiment_id = (
                found.experiment_id
                if found is not None
                else client.create_experiment(experiment, artifact_location=artifact_root(uri))
            )
            run_id = client.create_run(experiment_id, run_name=run_name, tags=tags or {}).info.run_id
        except Exception as exc:  # MLflow raises many types for an unreachable or bad store
            if not (defer and transient(exc)):
                raise UserError(
                    f"cannot use MLflow tracking store '{redact(uri)}': {str(exc).splitlines()[0]}"
                ) from None
    pending = run_id is None
    run_id = run_id or f"{PENDING}{uuid.uuid4().hex}"
    if run_dir is not None:
        bind(run_id, run_dir)
    start = int(time.time() * 1000)
    fields = {"experiment": experiment, "name": run_name, "tags": tags, "start": start}
    OUTBOX.put(uri, run_id, "create", delivered=not pending, **fields)
    items = {k: str(v)[:6000] for k, v in flatten(params).items()}
    OUTBOX.put(uri, run_id, "params", params=items)
    return run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int, once: str | None = None) -> None:
    """Queue the numeric values of metrics at `step` (once: see cg_ray.tracking_records)."""
    values = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    OUTBOX.put(uri, run_id, "metrics", metrics=values, step=step, ts=int(time.time() * 1000), once=once)


def log_epoch(uri: str, run_id: str, metrics: dict[str, float], epoch: int) -> None:
    """Log an epoch's metrics unless the run has them already: after a failure an epoch can be
    reported twice, and a checkpointed epoch may have died before its metrics were logged. The
    run's history is read when the record is delivered, so a server away now costs nothing."""
    log_metrics(uri, run_id, metrics, step=epoch, once="city_top1")


def log_artifacts(uri: str, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
    """Queue a local folder's files as artifacts (read when delivered: the folder must stay)."""
    OUTBOX.put(uri, run_id, "artifacts", folder=os.path.abspath(local_dir), path=artifact_path)


def log_bytes(uri: str, run_id: str, data: bytes, artifact_file: str) -> None:
    OUTBOX.put(uri, run_id, "bytes", file=artifact_file, data=base64.b64encode(data).decode("ascii"))


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    OUTBOX.put(uri, run_id, "text", file=artifact_file, text=redact(text))


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    OUTBOX.put(uri, run_id, "tags", tags={k: str(v) for k, v in redact_tree(tags).items()})


def set_status(uri: str, run_id: str, status: str) -> None:
    """Queue the run's end (FINISHED, FAILED, KILLED), without waiting for it."""
    OUTBOX.put(uri, run_id, "status", status=status, end=int(time.time() * 1000))


def register_model(uri: str, run_id: str, checkpoint_dir: str, name: str, register: Callable) -> dict:
    """Queue the registration of a checkpoint as model `name` by
    `register(uri, run_id, checkpoint_dir, name) -> version` (cg_ray.predict.pyfunc's
    register_checkpoint); the returned record holds its "version" once delivered."""
    OUTBOX.hooks["register"] = register
    return OUTBOX.put(uri, run_id, "register", checkpoint=os.path.abspath(checkpoint_dir), name=name)


def metric_history(uri: str, run_id: str, names) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> [(step, value)] of a run, for the names it has: from the store, or, while
    records wait for it, from the records this process holds (its own and those it adopted)."""
    if OUTBOX.waiting() or OUTBOX.away():
        return OUTBOX.history(run_id, set(names))
    client = _client(uri)
    real = OUTBOX.resolve(uri, run_id)
    history = {name: [(m.step, m.value) for m in client.get_metric_history(real, name)] for name in names}
    return {name: points for name, points in history.items() if points}


def reopen_run(uri: str, run_id: str, *, defer: bool = False) -> None:
    """Mark an interrupted run as running again: a resumed training continues the same run.
    defer=True (a search's trial): while the server is away, queued instead."""
    if run_id.startswith(PENDING) or (defer and not reachable(uri)):
        OUTBOX.put(uri, run_id, "status", status="RUNNING")
        return
    try:
        _client(uri).update_run(OUTBOX.resolve(uri, run_id), status="RUNNING")
    except Exception as exc:
        if defer and transient(exc):
            OUTBOX.put(uri, run_id, "status", status="RUNNING")
            return
        raise UserError(
            f"cannot reopen MLflow run {run_id} in {redact(uri)} to resume it: {str(exc).splitlines()[0]}"
        ) from None
    OUTBOX.put(uri, run_id, "status", delivered=True, status="RUNNING")


def system_metrics(uri: str, run_id: str, interval: float = 5.0):
    """Start logging CPU, memory (and GPU, where there is one) to the run; call .finish()."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Monitor(SystemMetricsMonitor):
        """MLflow's monitor, its samples queued in the outbox. MLflow's own loop reads the run
        from the server at every interval and stops for good at the first failure; this one
        samples until finish(), and publishes the interval in progress then (MLflow drops it:
        a run shorter than one interval would have no system metrics)."""

        def _get_next_logging_step(self, run_id):
            if run_id.startswith(PENDING) or not reachable(uri, timeout=2.0):
                return 0
            return super()._get_next_logging_step(OUTBOX.resolve(uri, run_id))

        def monitor(self):
            while not self._shutdown_event.is_set():
                self.collect_metrics()
                self._shutdown_event.wait(self.sampling_interval)
                self.publish_metrics(self.aggregate_metrics())

        def publish_metrics(self, metrics):
            prefix = self._metrics_prefix + (self.node_id + "/" if self.node_id else "")
            log_metrics(uri, run_id, {prefix + k: v for k, v in metrics.items()}, step=self._logging_step)
            self._logging_step += 1
            for monitor in self.monitors:
                monitor.clear_metrics()

        def finish(self):
            if self._process is not None:
                self._shutdown_event.set()
                self._process.join()
                self._process = None
            OUTBOX.flush(handoff_s())

    monitor = Monitor(run_id, sampling_interval=interval, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def waiting() -> int:
    """This process's records that wait for delivery."""
    return OUTBOX.waiting()


def flush(timeout: float | None = None) -> int:
    """Wait for this process's queued records (up to wait_s()); the number still waiting."""
    return OUTBOX.flush(wait_s() if timeout is None else timeout)


def close() -> None:
    """Write this process's journals; what they hold undelivered is left to whoever adopts them
    (a worker's to its driver, a trial's to its search) or to `cg-ray tracking sync`."""
    OUTBOX.close()


def end_run(uri: str, run_id: str, status: str = "FINISHED", wait: float | None = None) -> int:
    """End the run, wait for delivery (up to `wait`, default wait_s(), or handoff_s() when this
    process waited that long already in vain) and write the journals; the records left waiting."""
    set_status(uri, run_id, status)
    if wait is None:
        wait = handoff_s() if OUTBOX.gave_up else wait_s()
    waiting = OUTBOX.flush(wait)
    OUTBOX.close()
    return waiting


def adopt(run_dir: str, uri: str, recursive: bool = False) -> int:
    """Queue what other processes (workers, trials, an earlier driver) left undelivered in
    run_dir's journals (recursive: in every run folder under it); how many records."""
    return OUTBOX.adopt(run_dir, uri, recursive)


def kept_warning(uri: str, run_dir: str) -> str | None:
    """The line to print when this process left records in journals under run_dir, or None."""
    root = storage.join(run_dir, "")
    count = sum(OUTBOX.kept.pop(f) for f in list(OUTBOX.kept) if storage.join(f, "").startswith(root))
    if not count:
        return None
    return (
        f"cg-ray: warning: MLflow at {redact(uri)} is unreachable: {count} tracking records are "
        f"kept in {storage.join(run_dir, 'tracking')}; replay them with: cg-ray tracking sync {run_dir}"
    )


def resolve(uri: str, run_id: str) -> str:
    """The run's id in the store: a pending run's once it was created."""
    return OUTBOX.resolve(uri, run_id)


def get_run(uri: str, run_id: str):
    return _client(uri).get_run(OUTBOX.resolve(uri, run_id))


def close_orphan(uri: str, run_id: str, why: str) -> bool:
    """End a run left RUNNING by a driver that died (status KILLED, the reason as a tag);
    False when there is no such run in this store or it has ended already. While the server is
    away the check is queued (and False returned)."""
    run_id = OUTBOX.resolve(uri, run_id)
    if run_id.startswith(PENDING):
        return False  # never created: nothing to close
    if not reachable(uri):
        OUTBOX.put(uri, run_id, "orphan", why=why)
        return False
    client = _client(uri)
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - another store, or a run deleted since
        return False
    if run.info.status != "RUNNING":
        return False
    client.set_tag(run_id, "cg_ray.ended_because", why)
    client.set_terminated(run_id, status="KILLED")
    return True
