"""The MLflow side of a search and its files: one parent run, one child run per trial (created by
the trial's own training run, tagged `mlflow.parentRunId`), the best trial's config as YAML."""

from __future__ import annotations

import json
import os

from cg_ray import storage, tracking
from cg_ray.config import Config, config_from_dict
from cg_ray.errors import UserError
from cg_ray.tracking_outbox import transient
from cg_ray.tune.space import apply_params

META = "cg_ray_search.json"
# What may change when a search resumes; anything else would make the restored trials and the
# scheduler's state belong to another search.
RESUMABLE = {
    "tune.max_concurrent",
    "tune.check_resources",
    "train.max_failures",
    "train.log_every",
    "data.path",
    "eval.batch_size",
    "run.tracking_uri",
    "run.storage_path",
    "storage.max_attempts",
}


def existing_search(cfg: Config, search_dir: str, resume: bool | str | None) -> dict | None:
    """The meta of the search in search_dir when continuing it (checked to be the same search),
    None for a new one; the errors of a wrong --resume or a taken run.name, before Ray starts.
    resume: None (a new search), "must" (or True: continue one) or "auto" (continue one if
    there is one, start otherwise)."""
    from cg_ray.train.driver import resume_mode

    mode = resume_mode(resume)
    meta_path = storage.join(search_dir, META)
    if storage.exists(meta_path):
        if mode is None:
            raise UserError(
                f"a search named '{cfg.run.name}' exists in {search_dir}: add --resume (or "
                f"--resume auto) to continue it, or give this one another run.name"
            )
        meta = _read_meta(meta_path, mode)
        if meta is not None:
            _check_same_search(meta["config"], cfg, search_dir)
        return meta
    if mode == "must":
        raise UserError(f"nothing to resume: no search under {search_dir}")
    if storage.is_dir(search_dir) and storage.list_dir(search_dir):
        raise UserError(
            f"{search_dir} already holds other files (a training run named "
            f"'{cfg.run.name}'?): give the search its own run.name"
        )
    return None


def _read_meta(path: str, mode: str) -> dict | None:
    """The search's meta file; None (a new search, with --resume auto) when it is cut short: its
    driver died while writing it, before any trial or Tune state existed."""
    try:
        meta = json.loads(storage.read_text(path))
        if isinstance(meta, dict) and {"parent_run_id", "config"} <= set(meta):
            return meta
    except json.JSONDecodeError:
        pass
    if mode != "auto":
        raise UserError(
            f"{path} is incomplete (its driver stopped while writing it): continue with "
            f"--resume auto, which starts the search anew"
        )
    print(f"{path} is incomplete (its driver stopped while writing it): starting the search anew", flush=True)
    return None


def open_parent(cfg: Config, search_dir: str, uri: str, meta: dict | None) -> str:
    """The parent MLflow run: a resumed search's, reopened, or a new one with its meta file."""
    if meta is not None:
        tracking.bind(meta["parent_run_id"], search_dir)
        tracking.reopen_run(uri, meta["parent_run_id"])
        print(f"resuming search {cfg.run.name} (MLflow parent run {meta['parent_run_id']})", flush=True)
        return meta["parent_run_id"]
    parent = tracking.start_run(
        uri,
        cfg.run.experiment,
        cfg.run.name,
        cfg.to_dict(),
        tags={"cg_ray.kind": "search", "cg_ray.data": cfg.data.path},
        run_dir=search_dir,
    )
    tracking.log_text(uri, parent, cfg.to_yaml(), "config.yaml")
    storage.write_text(
        storage.join(search_dir, META),
        json.dumps({"parent_run_id": parent, "tracking_uri": uri, "config": cfg.to_dict()}, indent=1),
    )
    return parent


def _check_same_search(saved: dict, cfg: Config, where: str) -> None:
    old, new = tracking.flatten(saved), tracking.flatten(cfg.to_dict())
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE)
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:4])
        raise UserError(
            f"cannot resume the search in {where} with a different config ({shown}); "
            f"use another run.name to start a new search"
        )


def error_line(error: BaseException | None) -> str | None:
    """The line of a trial's error that says what went wrong (Tune wraps it in actor noise)."""
    if error is None:
        return None
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    found = [line for line in lines if line.split(":", 1)[0].endswith(("Error", "Exception"))]
    line = found[-1] if found else lines[-1] if lines else type(error).__name__
    return line.removeprefix("cg_ray.errors.")


def _trial_id(result) -> str:
    return os.path.basename(str(result.path).rstrip("/")).removeprefix("trial_")


def _client(uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def children(uri: str, parent_run_id: str) -> list:
    """The child runs of a search's parent run."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'"
    )


def trial_rows(cfg: Config, results, stopped: set[str]) -> list[dict]:
    """One row per trial of Tune's results: its status (completed, stopped_early by ASHA,
    failed, or interrupted: none of those), epochs, metric, params and error."""
    rows = []
    for result in results:
        trial_id, metrics = _trial_id(result), result.metrics or {}
        epochs = int(metrics.get("epochs_done", 0))
        status = (
            "failed"
            if result.error
            else "completed"
            if epochs >= cfg.train.epochs
            else "stopped_early"
            if trial_id in stopped
            else "interrupted"
        )
        rows.append(
            {
                "trial_id": trial_id,
                "status": status,
                "epochs": epochs,
                cfg.tune.metric: metrics.get(cfg.tune.metric),
                "params": dict(result.config or {}),
                "error": error_line(result.error),
            }
        )
    return sorted(rows, key=lambda row: row["trial_id"])


def settle_children(uri: str, parent_run_id: str, rows: list[dict], search_dir: str | None = None) -> None:
    """Close each trial's child run as the search judged the trial, tag it cg_ray.trial_status,
    and add its run_id to its row: a failed trial's run FAILED, any other FINISHED.

    The search's verdict wins over what the trial's own code left: a trial ASHA stopped had
    its training cut off, so its run is still RUNNING, or, when the stop reached the trainer
    while it was fitting, already ended FAILED by train()'s error path. While the tracking server
    is away (records wait), each trial's run is found in its run folder instead."""
    runs = None
    if not (search_dir and tracking.waiting()):
        try:
            # Not a run that a resumed trial ended as an orphan (its driver died before the trial's
            # first checkpoint, so the trial started again in a new run): that one has the same
            # trial_id.
            runs = {
                r.data.tags.get("cg_ray.trial_id"): r
                for r in children(uri, parent_run_id)
                if "cg_ray.ended_because" not in r.data.tags
            }
        except Exception as exc:
            if not (search_dir and transient(exc)):
                raise
    for row in rows:
        status = "FAILED" if row["status"] == "failed" else "FINISHED"
        if runs is not None:
            run = runs.get(row["trial_id"])
            row["run_id"] = run.info.run_id if run else None
            if run is not None and run.info.status != status:
                tracking.set_status(uri, run.info.run_id, status)
        else:
            row["run_id"] = _trial_run(str(search_dir), row["trial_id"])
            if row["run_id"] is not None:
                tracking.set_status(uri, row["run_id"], status)
        if row["run_id"] is not None:
            tracking.set_tags(uri, row["run_id"], {"cg_ray.trial_status": row["status"]})
    if runs is not None:
        tracking.flush()  # the server just answered


def _trial_run(search_dir: str, trial_id: str) -> str | None:
    """A trial's MLflow run from its run folder (search_dir/trials/NAME-N, as
    cg_ray.tune.search.trial_config names it), its records journaled there; None if it has none."""
    from cg_ray.train.driver import RUN_MARKER

    name = search_dir.rstrip("/").rsplit("/", 1)[-1]
    folder = storage.join(search_dir, "trials", f"{name}-{trial_id.rsplit('_', 1)[-1]}")
    marker = storage.join(folder, RUN_MARKER)
    if not storage.exists(marker):
        return None
    run_id = json.loads(storage.read_text(marker))["mlflow_run_id"]
    tracking.bind(run_id, folder)
    return run_id


def write_best(
    cfg: Config, uri: str, parent_run_id: str, results, rows: list[dict], search_dir: str, out: str | None
) -> dict:
    """The best trial's config as a ready-to-train YAML (in the search folder, and at `out`),
    recorded on the parent run, which is then closed."""
    metric = cfg.tune.metric
    scored = [row for row in rows if row[metric] is not None]
    if not scored:
        tracking.end_run(uri, parent_run_id, "FAILED")
        first = next((row["error"] for row in rows if row["error"]), "no trial reported it")
        raise UserError(f"none of the {len(rows)} trials reported {metric}: {first}")
    best = results.get_best_result(metric=metric, mode=cfg.tune.mode, scope="last")
    row = next(r for r in rows if r["trial_id"] == _trial_id(best))
    data = apply_params(cfg.to_dict(), best.config)
    data["run"]["name"] = f"{cfg.run.name}-best"
    text = (
        f"# Best trial {row['trial_id']} of search '{cfg.run.name}' ({metric}="
        f"{row[metric]:.4g} after {row['epochs']} epochs; MLflow run {row['run_id']}).\n"
        f"# Train it: cg-ray train --config THIS_FILE\n" + config_from_dict(data).to_yaml()
    )
    paths = [storage.join(search_dir, "best_config.yaml")] + ([out] if out else [])
    for path in paths:
        storage.write_text(path, text)
    tracking.log_text(uri, parent_run_id, text, "best_config.yaml")
    tracking.log_metrics(uri, parent_run_id, {f"best_{metric}": row[metric]}, step=0)
    tags = {"cg_ray.best_trial": row["trial_id"], "cg_ray.best_run_id": str(row["run_id"])}
    tracking.set_tags(uri, parent_run_id, tags)
    tracking.end_run(uri, parent_run_id)
    count = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped_early", "failed")}
    return {"trials": len(rows), **count, "best": row, "best_config": paths[-1]}
