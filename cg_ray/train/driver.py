"""Training, the driver side: checks the inputs, opens (or reopens) the MLflow run, builds the
Ray Data inputs and fits a TorchTrainer whose workers run cg_ray.train.worker.train_loop.

    train()                 checks, resume or new run, datasets, TorchTrainer.fit()
      _finish()             artifacts, registration, the run's summary

Training knows nothing of the stages that use its output: the learning curves' drawing and the
model registry's registrar come in as `RunOutputs` (cg_ray.runs passes the standard ones).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from cg_ray import console, storage, tracking
from cg_ray.config import Config
from cg_ray.data.prepared import PreparedDataset
from cg_ray.errors import UserError
from cg_ray.secrets import redact_tree
from cg_ray.taxonomy import Taxonomy
from cg_ray.train.checkpoint import latest_checkpoint
from cg_ray.train.splits import ValSplitDataConfig
from cg_ray.train.worker import train_loop


@dataclass(frozen=True)
class RunOutputs:
    """What the stages above training make of a finished run. `draw_curves(history, title)`
    turns the MLflow history of `curve_metrics` ({name: [(epoch, value)]}) into PNG bytes,
    written as learning_curves.png; `register` is tracking.register_model's registrar for
    run.register_as. Without them a run draws no curves and cannot be registered."""

    curve_metrics: tuple[str, ...] = ()
    draw_curves: Callable[[dict, str], bytes] | None = None
    register: Callable | None = None


def check_inputs(cfg: Config) -> tuple[PreparedDataset, dict | None]:
    """Everything a run needs, checked before any worker starts: the dataset with its taxonomy,
    both splits, scene labels when the scene loss is on, text features when TLA is on (or when
    the graph head starts from them). Returns the opened dataset and the text tables."""
    if not cfg.data.path:
        raise UserError("no dataset: set data.path (e.g. --set data.path=DEST from `cg-ray prepare`)")
    dataset = PreparedDataset.open(cfg.data.path)
    dataset.taxonomy  # noqa: B018 (read now: a dataset without one fails before Ray starts)
    splits = dataset.splits
    for split in (cfg.data.train_split, cfg.data.val_split):
        if not splits.get(split):
            raise UserError(
                f"dataset '{dataset}' has no clips in split '{split}' (it has: {splits or 'none'})"
            )
    if splits[cfg.data.train_split] < cfg.train.num_workers:
        raise UserError(
            f"{splits[cfg.data.train_split]} training clips cannot feed "
            f"train.num_workers={cfg.train.num_workers} workers"
        )
    if cfg.model.sca.enabled and not dataset.has_scene_labels(cfg.data.train_split):
        raise UserError(
            f"dataset '{dataset}' has no scene labels for every training clip: run "
            f"`cg-ray scenes` on it, or switch the scene loss off with "
            f"--set model.sca.enabled=false"
        )
    tables = None
    # The graph head starts its node embeddings from the label names' text features when the
    # dataset has them (TLA off or not).
    graph_text = cfg.model.head == "graph" and cfg.model.graph.text_init and dataset.has_text_features()
    if cfg.model.tla.enabled or graph_text:
        tables = dataset.text_tables
    if cfg.data.decode == "gpu":  # before any run starts: GPU decoding needs a GPU and a pack
        _resolve_decode(cfg, dataset, cfg.train.use_gpu is not False)
    return dataset, tables


def _resolve_decode(cfg: Config, dataset: PreparedDataset, use_gpu: bool) -> str:
    """data.decode for this run: 'gpu' (workers decode the JPEG bytes) or 'cpu'."""
    from cg_ray.data.gpu_decode import resolve_decode
    from cg_ray.data.shards import REPORT

    d = cfg.data
    return resolve_decode(d.decode, use_gpu, bool(dataset.complete_packs(d.image_size, REPORT)))


# Keys that may change when a run resumes; any other difference means another experiment.
RESUMABLE_CHANGES = {
    "train.epochs",
    "train.max_failures",
    "train.log_every",
    "train.num_workers",
    "train.cpus_per_worker",
    "train.use_gpu",
    "train.keep_best",
    "data.path",
    "data.decode",
    "data.max_bad_fraction",
    "eval.batch_size",
    "eval.views",
    "run.tracking_uri",
    "run.register_as",
    "run.storage_path",
    "storage.max_attempts",
}


def check_resumable(state: dict, cfg: Config, taxonomy: Taxonomy, where: str) -> None:
    """Refuse to continue a checkpoint of another experiment, naming what differs."""
    differences = Taxonomy.from_dict(state["taxonomy"]).differences(taxonomy)
    if differences:
        raise UserError(f"cannot resume {where}: its taxonomy differs from the dataset's: {differences[0]}")
    old = tracking.flatten(state["config"])
    new = tracking.flatten(redact_tree(cfg.to_dict()))
    changed = sorted(
        k
        for k in set(old) | set(new)
        if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES and not k.startswith("tune.")
    )  # search settings: not the run's
    if changed:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise UserError(
            f"cannot resume {where} with a different config ({shown}); use another "
            f"run.name to start a new run"
        )


# The MLflow run of the run folder, written when the run starts: the checkpoints carry it too,
# but a driver that dies before its first checkpoint would otherwise leave it RUNNING forever.
RUN_MARKER = "cg_ray_run.json"


def _close_run_without_checkpoint(run_dir: str, uri: str) -> None:
    """A run folder without a complete checkpoint starts again in a new MLflow run; the one
    its dead driver opened is ended as KILLED rather than left RUNNING."""
    marker = storage.join(run_dir, RUN_MARKER)
    if not storage.exists(marker):
        return
    old = json.loads(storage.read_text(marker))["mlflow_run_id"]
    if tracking.close_orphan(uri, old, "its driver stopped before the first complete checkpoint"):
        print(
            f"MLflow run {old} of {run_dir} ended before its first checkpoint: marked KILLED; starting again",
            flush=True,
        )


def _steps_per_epoch(cfg: Config, train_clips: int) -> int:
    per_worker = train_clips // cfg.train.num_workers
    batches = -(-per_worker // cfg.train.batch_size)
    return max(-(-batches // cfg.train.grad_accum_steps), 1)


def _placement(cfg: Config, check_resources: bool):
    """Start or join Ray, resolve train.use_gpu (from the live nodes and the node types the
    autoscaler can launch) and refuse at once a run no node could ever host; returns use_gpu and
    a PlacementWatch that reports while the run's workers wait for the autoscaler."""
    from cg_ray import resources
    from cg_ray.ray_env import init_ray

    t = cfg.train
    init_ray(min_cpus=t.num_workers * t.cpus_per_worker + 2)
    view = resources.cluster_view()
    use_gpu, why = resources.resolve_use_gpu(t.use_gpu, view)
    print(why, flush=True)
    # Ray Data's tasks need one whole CPU beside the workers, or the pipeline never starts.
    need = resources.training_need(t.num_workers, t.cpus_per_worker, use_gpu, data_cpus=1.0)
    verdict = resources.Verdict(1, 1)
    if check_resources and cfg.tune.check_resources:
        verdict = resources.check(need, view)
        if not verdict.now:
            print(f"the run does not fit the live nodes yet: waiting for {verdict.waits_for}", flush=True)
    return use_gpu, resources.PlacementWatch(need, 1, verdict.waits_for)


# --resume: "must" (there must be state to continue), "auto" (continue if there is, start
# otherwise: what a job that restarts itself runs); None: the command's default.
RESUME_MODES = ("must", "auto")


def resume_mode(resume: bool | str | None) -> str | None:
    """None, "must" or "auto" from a `resume` argument (True is "must", as before)."""
    if resume is True:
        return "must"
    if not resume:
        return None
    if resume not in RESUME_MODES:
        raise UserError(f"--resume {resume!r}: expected one of {', '.join(RESUME_MODES)}")
    return str(resume)


def train(
    cfg: Config,
    resume: bool | str | None = None,
    *,
    callbacks: list | None = None,
    run_tags: dict | None = None,
    check_resources: bool = True,
    in_search: bool = False,
    outputs: RunOutputs = RunOutputs(),
) -> dict:
    """Fit a model as the config says; returns the final metrics, checkpoint and MLflow run id.

    A run whose folder (run.storage_path/run.name) already holds checkpoints continues from the
    latest one, in the same MLflow run, and one without starts anew: that is `resume=None` and
    `resume="auto"` alike; `resume="must"` (or True) insists that there is one. `callbacks` go
    to the trainer's RunConfig and `run_tags` onto a new MLflow run (cg_ray.tune.search: a trial's
    TuneReportCallback and its parent run). `check_resources=False`: the caller checked what the
    run needs (a search, for all its trials). `in_search=True`: a search's trial, which goes on
    while the tracking server is away (even at its start) and leaves what it could not deliver
    to the search, which checked the server at its start and delivers it at its end.
    `outputs`: the learning curves' drawing and the registrar (see RunOutputs).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    from cg_ray.data.sampling import eval_sampling, training_sampling
    from cg_ray.data.stream import clip_dataset
    from cg_ray.train.checkpoint import read_checkpoint

    if cfg.run.register_as and outputs.register is None:
        raise ValueError("run.register_as needs RunOutputs.register (cg_ray.runs.train passes it)")
    storage.use_policy(cfg.storage.max_attempts)  # before Ray starts: its workers inherit it
    dataset, tables = check_inputs(cfg)
    taxonomy = dataset.taxonomy
    storage_path = cfg.run.storage_path
    if not storage.is_uri(storage_path):
        storage_path = os.path.abspath(storage_path)  # Ray Train refuses relative paths
    run_dir = storage.join(storage_path, cfg.run.name)
    uri = tracking.tracking_uri(cfg.run.tracking_uri)
    if not in_search:
        tracking.check_reachable(uri)
    tracking.adopt(run_dir, uri)  # records an earlier session of this run could not deliver
    wait = tracking.handoff_s() if in_search else None  # at the end, for an away server
    previous = latest_checkpoint(run_dir)
    if resume_mode(resume) == "must" and previous is None:
        raise UserError(f"nothing to resume: no checkpoint under {run_dir}")
    if not storage.is_uri(run_dir):  # the command's log (Ray's and MLflow's lines) beside its run
        console.open_log(os.path.join(run_dir, console.LOG_NAME))
    use_gpu, watch = _placement(cfg, check_resources)

    start_epoch = 0
    if previous is not None:
        state = read_checkpoint(previous)
        check_resumable(state, cfg, taxonomy, previous)
        run_id, start_epoch = state["mlflow_run_id"], state["epoch"] + 1
        tracking.bind(run_id, run_dir)
        tracking.reopen_run(uri, run_id, defer=in_search)
        tracking.log_epoch(uri, run_id, state["metrics"], state["epoch"])
        print(f"resuming {cfg.run.name} after epoch {state['epoch']} (MLflow run {run_id})", flush=True)
    else:
        _close_run_without_checkpoint(run_dir, uri)
        run_id = tracking.start_run(
            uri,
            cfg.run.experiment,
            cfg.run.name,
            cfg.to_dict(),
            tags={"cg_ray.data": cfg.data.path, **(run_tags or {})},
            run_dir=run_dir,
            defer=in_search,
        )
        storage.write_text(storage.join(run_dir, RUN_MARKER), json.dumps({"mlflow_run_id": run_id}))
        tracking.log_text(uri, run_id, cfg.to_yaml(), "config.yaml")
        tracking.log_text(uri, run_id, taxonomy.to_json(), "taxonomy.json")

    try:
        decode = _resolve_decode(cfg, dataset, bool(use_gpu))
    except UserError:
        tracking.end_run(uri, run_id, "FAILED", wait)
        raise
    d = cfg.data
    datasets = {
        # Decoded blocks of one batch each: the step's batches are then zero-copy views.
        "train": clip_dataset(
            dataset,
            d.train_split,
            taxonomy,
            d.num_frames,
            d.image_size,
            d.scene_labels,
            shuffle_seed=cfg.train.seed,
            decode_batch_size=cfg.train.batch_size,
            decode=decode,
            sampling=training_sampling(cfg),
        ),
        "val": clip_dataset(
            dataset,
            d.val_split,
            taxonomy,
            d.num_frames,
            d.image_size,
            d.scene_labels,
            decode_batch_size=cfg.eval.batch_size,
            decode=decode,
            sampling=eval_sampling(cfg),
        ),
    }
    # Ray Data re-seeds the shuffle on every execution (one per epoch) from a counter on the
    # dataset's context; starting it at the resumed epoch gives that epoch its own order again.
    datasets["train"].context._execution_idx = start_epoch
    clips = dataset.splits
    total_steps = _steps_per_epoch(cfg, clips[d.train_split]) * cfg.train.epochs
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "config": cfg.to_dict(),
            "taxonomy": taxonomy.to_dict(),
            "text_tables": tables,
            "tracking_uri": uri,
            "run_id": run_id,
            "total_steps": total_steps,
            "run_dir": run_dir,
            "epoch_clips": {"train": clips.get(d.train_split, 0), "val": clips.get(d.val_split, 0)},
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.train.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=storage.ray_storage(storage_path)[1],
            storage_filesystem=storage.ray_storage(storage_path)[0],  # s3: endpoint and keys from env
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            # The controller's worker-group lines and each report's TrainingReport(...): INFO.
            logging_config=ray.train.LoggingConfig(log_level="INFO" if console.verbose() else "WARNING"),
            callbacks=list(callbacks or []),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.keep_best,
                checkpoint_score_attribute="city_top1",
                checkpoint_score_order="max",
            ),
        ),
        datasets=datasets,
        dataset_config=ValSplitDataConfig(),
    )
    try:
        with watch:
            result = trainer.fit()
    except Exception as exc:
        tracking.adopt(run_dir, uri)  # what its workers could not deliver
        tracking.end_run(uri, run_id, "FAILED", wait)
        raise _user_error_from(exc) from None
    return _finish(cfg, result, uri, run_id, storage_path, wait, outputs)


def _finish(
    cfg: Config, result, uri: str, run_id: str, storage_path: str, wait: float | None, outputs: RunOutputs
) -> dict:
    """Artifacts, registration and the summary of a finished fit. While the tracking server is
    away, this waits for it (up to `wait`, default CG_RAY_TRACKING_WAIT_S), then keeps the
    records in the run folder for `cg-ray tracking sync` and says so in one line."""
    run_dir = storage.join(storage_path, cfg.run.name)
    # What the workers could not deliver goes first; then the server's chance to come back
    # before the learning curves are drawn from what it has.
    tracking.adopt(run_dir, uri)
    tracking.flush(wait)
    latest = storage.uri_of(storage_path, result.checkpoint.path)  # s3: the s3:// URI again
    best = result.get_best_checkpoint(metric="city_top1", mode="max")
    best_path = storage.uri_of(storage_path, best.path) if best is not None else latest
    _prune_unregistered(result, storage_path, cfg.run.name)
    summary = {**result.metrics, "checkpoint": latest, "best_checkpoint": best_path, "run_id": run_id}
    if outputs.draw_curves is not None:
        summary["learning_curves"] = _learning_curves(cfg, uri, run_id, storage_path, outputs)
    registration = None
    if not storage.is_uri(storage_path):
        tracking.log_artifacts(uri, run_id, latest, "checkpoint")
        if cfg.run.register_as:
            registration = tracking.register_model(
                uri, run_id, best_path, cfg.run.register_as, outputs.register
            )
    tracking.end_run(uri, run_id, wait=wait)
    summary["run_id"] = tracking.resolve(uri, run_id)  # a run created late: its id now
    if registration is not None and registration.get("version") is not None:
        summary["registered_version"] = registration["version"]
        summary["registered_model"] = f"models:/{cfg.run.register_as}/{registration['version']}"
    elif registration is not None:
        summary["registration_deferred"] = cfg.run.register_as  # replayed by `tracking sync`
    warning = tracking.kept_warning(uri, run_dir)
    if warning and wait is None:  # (a search's trial leaves the line to its search)
        print(warning, file=sys.stderr, flush=True)
    return summary


def _learning_curves(cfg: Config, uri: str, run_id: str, storage_path: str, outputs: RunOutputs) -> str:
    """learning_curves.png in the run folder and in the MLflow run; returns its path."""
    assert outputs.draw_curves is not None
    png = outputs.draw_curves(
        tracking.metric_history(uri, run_id, outputs.curve_metrics),
        f"{cfg.run.name} ({tracking.resolve(uri, run_id)[:8]})",
    )
    path = storage.join(storage_path, cfg.run.name, "learning_curves.png")
    storage.write_bytes(path, png)
    tracking.log_bytes(uri, run_id, png, "learning_curves.png")
    return path


def _prune_unregistered(result, storage_path: str, name: str) -> None:
    """Keep exactly what Ray Train retained (the best k and the latest): a checkpoint written
    just before a process was killed may have escaped its bookkeeping."""
    kept = {c.path.rstrip("/") for c, _ in result.best_checkpoints}
    kept.add(result.checkpoint.path.rstrip("/"))
    run_dir = storage.join(storage_path, name)
    fs, _ = storage.filesystem(run_dir)
    for entry in storage.list_dir(run_dir):  # entry.path: inside the filesystem, as Ray's paths
        if (
            entry.base_name.startswith("checkpoint_")
            and entry.type.name == "Directory"
            and entry.path.rstrip("/") not in kept
        ):
            fs.delete_dir(entry.path)


def _user_error_from(exc: Exception) -> Exception:
    """A training failure whose root is bad input becomes a one-line UserError."""
    text = str(exc)
    marker = f"{UserError.__name__}: "
    if marker in text:
        return UserError(text.split(marker, 1)[1].splitlines()[0])
    return exc
