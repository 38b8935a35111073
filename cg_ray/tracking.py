"""MLflow: one run per training, the resolved config as params, per-epoch metrics, artifacts.

Everything goes through an explicit MlflowClient and tracking URI, so the driver and the rank-0
worker (another process) log to the same run without global state.
"""

from __future__ import annotations

import os
from typing import Any

from cg_ray.errors import UserError


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
        return "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///"):]) or ".", "mlartifacts")
    return None


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def start_run(uri: str, experiment: str, run_name: str, params: dict, tags: dict | None = None) -> str:
    """Create the run and log the flattened params; returns its id."""
    client = _client(uri)
    try:
        found = client.get_experiment_by_name(experiment)
        experiment_id = (found.experiment_id if found is not None else
                         client.create_experiment(experiment, artifact_location=_artifact_root(uri)))
        run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    except Exception as exc:  # MLflow raises many types for an unreachable or bad store
        raise UserError(f"cannot use MLflow tracking store '{uri}': {str(exc).splitlines()[0]}") from None
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric
    import time

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if isinstance(v, (int, float))]
    _client(uri).log_batch(run_id, metrics=batch)


def log_artifacts(uri: str, run_id: str, local_dir: str, artifact_path: str | None = None) -> None:
    _client(uri).log_artifacts(run_id, local_dir, artifact_path)


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    _client(uri).log_text(run_id, text, artifact_file)


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status=status)


def get_run(uri: str, run_id: str):
    return _client(uri).get_run(run_id)
