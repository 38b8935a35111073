"""Logging a report to the MLflow run that trained the checkpoint, when there is one to reach."""

from __future__ import annotations

import os

from cg_ray import tracking
from cg_ray.errors import UserError
from cg_ray.secrets import MASK, redact


def run_uri(state: dict, config, given: str | None) -> str | None:
    """The tracking URI of the checkpoint's run: given > saved in the checkpoint > its config >
    $MLFLOW_TRACKING_URI > ./mlflow.db when that file exists (training's own default)."""
    for uri in (
        given,
        state.get("mlflow_tracking_uri"),
        config.run.tracking_uri,
        os.environ.get("MLFLOW_TRACKING_URI"),
    ):
        if uri:
            return uri
    default = tracking.tracking_uri(None)
    return default if os.path.exists(default[len("sqlite:///") :]) else None


def log_to_mlflow(folder: str, state: dict, config, given_uri: str | None, artifact_path: str) -> str:
    """Log `folder` as artifacts of the checkpoint's training run; returns what happened, in
    words. Never raises: the report on disk is the result, MLflow is a copy of it."""
    run_id = state.get("mlflow_run_id")
    if not run_id:
        return "not logged to MLflow: the checkpoint has no mlflow_run_id (not from a tracked run)"
    uri = run_uri(state, config, given_uri)
    if uri is None:
        return (
            f"not logged to MLflow: no tracking URI known for run {run_id} "
            f"(pass --tracking-uri or set MLFLOW_TRACKING_URI)"
        )
    if MASK in uri:
        return "not logged to MLflow: the checkpoint's tracking URI is redacted; pass --tracking-uri"
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///") :]):
        return f"not logged to MLflow: store {uri} does not exist here"
    try:
        tracking.check_reachable(uri)
        tracking.get_run(uri, run_id)
        tracking.log_artifacts(uri, run_id, folder, artifact_path)
        if tracking.flush():  # queued: delivered now (the command ends soon), or not at all
            return f"not logged to MLflow: {redact(uri)} went away while the report was uploaded"
    except UserError as exc:
        return f"not logged to MLflow: {exc}"
    except Exception as exc:  # MLflow raises many types for a missing run or a failing store
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"not logged to MLflow run {run_id} at {redact(uri)}: {redact(first)}"
    return f"logged to MLflow run {run_id} ({redact(uri)}) as artifacts {artifact_path}/"
