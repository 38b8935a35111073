"""MLflow: one run per training, the resolved config as params, per-epoch metrics, artifacts.

Everything goes through an explicit MlflowClient and tracking URI, so the driver and the rank-0
worker (another process) log to the same run without global state.
"""

from __future__ import annotations

import os
from typing import Any

from cg_ray.errors import UserError
from cg_ray.secrets import redact, redact_tree


def tracking_uri(configured: str | None = None) -> str:
    """The configured URI, else $MLFLOW_TRACKING_URI, else sqlite in the working directory."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{os.path.abspath('mlflow.db')}"


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_root(uri: str) -> str | None:
    # A sqlite store would put artifacts in ./mlruns of whatever directory the process runs in;
    # keep them beside the database instead.
    if uri.startswith("sqlite:///"):
        return "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///") :]) or ".", "mlartifacts")
    return None


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
        import base64
        import urllib.error
        import urllib.parse
        import urllib.request

        parts = urllib.parse.urlsplit(uri)
        host = parts.hostname + (f":{parts.port}" if parts.port else "")
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
            reason = getattr(exc, "reason", exc)
            raise UserError(
                f"MLflow tracking server {redact(uri)} is unreachable ({reason}): start "
                f"it, or point MLFLOW_TRACKING_URI / run.tracking_uri elsewhere"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = os.path.dirname(uri[len("sqlite:///") :]) or "."
        if not os.path.isdir(folder):
            raise UserError(f"MLflow store {uri}: folder '{folder}' does not exist")


def start_run(uri: str, experiment: str, run_name: str, params: dict, tags: dict | None = None) -> str:
    """Create the run and log the flattened params (secrets masked); returns its id."""
    params, tags = redact_tree(params), redact_tree(tags or {})
    client = _client(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(experiment, artifact_location=_artifact_root(uri))
        )
        run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    except Exception as exc:  # MLflow raises many types for an unreachable or bad store
        raise UserError(f"cannot use MLflow tracking store '{uri}': {str(exc).splitlines()[0]}") from None
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i : i + 100])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
    _client(uri).log_batch(run_id, metrics=batch)


def log_artifacts(uri: str, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
    _client(uri).log_artifacts(run_id, local_dir, artifact_path)


def metric_history(uri: str, run_id: str, names) -> dict[str, list[tuple[int, float]]]:
    """Metric name -> [(step, value)] of a run, for the names it has."""
    client = _client(uri)
    history = {name: [(m.step, m.value) for m in client.get_metric_history(run_id, name)] for name in names}
    return {name: points for name, points in history.items() if points}


def log_bytes(uri: str, run_id: str, data: bytes, artifact_file: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, os.path.basename(artifact_file))
        with open(path, "wb") as f:
            f.write(data)
        _client(uri).log_artifact(run_id, path, os.path.dirname(artifact_file) or None)


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    _client(uri).log_text(run_id, redact(text), artifact_file)


def reopen_run(uri: str, run_id: str) -> None:
    """Mark an interrupted run as running again: a resumed training continues the same run."""
    try:
        _client(uri).update_run(run_id, status="RUNNING")
    except Exception as exc:
        raise UserError(
            f"cannot reopen MLflow run {run_id} in {redact(uri)} to resume it: {str(exc).splitlines()[0]}"
        ) from None


def log_epoch(uri: str, run_id: str, metrics: dict[str, float], epoch: int) -> bool:
    """Log an epoch's metrics unless the run has them already: after a failure an epoch can be
    reported twice, and a checkpointed epoch may have died before its metrics were logged.
    Returns True when it logged."""
    history = _client(uri).get_metric_history(run_id, "city_top1")
    if any(m.step == epoch for m in history):
        return False
    log_metrics(uri, run_id, metrics, step=epoch)
    return True


def system_metrics(uri: str, run_id: str, interval: float = 5.0):
    """Start logging CPU, memory (and GPU, where there is one) to the run; call .finish()."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    class Monitor(SystemMetricsMonitor):
        def finish(self):
            # MLflow drops the samples of the interval in progress at shutdown: a run (or the
            # tail of one) shorter than one interval would have no system metrics.
            if self._process is not None:
                self._shutdown_event.set()
                self._process.join()
                pending = self.aggregate_metrics()
                if pending:
                    self.publish_metrics(pending)
            super().finish()

    monitor = Monitor(run_id, sampling_interval=interval, resume_logging=True, tracking_uri=uri)
    monitor.start()
    return monitor


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


def get_run(uri: str, run_id: str):
    return _client(uri).get_run(run_id)


def close_orphan(uri: str, run_id: str, why: str) -> bool:
    """End a run left RUNNING by a driver that died (status KILLED, the reason as a tag);
    False when there is no such run in this store or it has ended already."""
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
