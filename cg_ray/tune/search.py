"""`cg-ray tune`: Ray Tune over the same training as `cg-ray train`.

    search(cfg)                 driver: checks, parent MLflow run, Tuner (or Tuner.restore), summary
      run_trial(params)         one trial (a Tune function trainable): its config, then train()
        train(cfg, callbacks=[EpochReport()])   the TorchTrainer; its reports go on to Tune

Ray 2.60 runs Train V2, where a TorchTrainer is not a Tune trainable: each trial is a function
that builds and fits the trainer, with a callback forwarding every epoch's metrics to Tune.
The search lives in `run.storage_path/run.name/`: Tune's state, `cg_ray_search.json` (the
parent MLflow run and the config), `trials/<name>-<n>/` (each trial's training run, whose
checkpoints a resumed search continues from), `best_config.yaml` and `report/` (the trials'
table, importances and pictures: cg_ray.tune.report).
"""

from __future__ import annotations

import os
import sys
import time

from cg_ray import console, storage, tracking
from cg_ray.config import Config, config_from_dict
from cg_ray.errors import UserError
from cg_ray.resources import (
    ClusterView,
    Need,
    PlacementWatch,
    Verdict,
    check,
    cluster_view,
    fmt_resources,
    resolve_use_gpu,
    training_need,
)
from cg_ray.tune import report as search_report
from cg_ray.tune.scheduling import (
    STOPPED,
    EpochReport,
    ReleaseEndedTrials,
    expected_trials,
    stopped_trials,
    tune_config,
)
from cg_ray.tune.space import apply_params, tune_space
from cg_ray.tune.trials import existing_search, open_parent, settle_children, trial_rows, write_best

# The trial function holds no training workers itself: a sliver of a CPU, as Tune refuses 0.
TRIAL_DRIVER_CPU = 0.01


class SearchInterrupted(KeyboardInterrupt):
    """Tune ended the search early (SIGINT, SIGUSR1); its state is saved for --resume."""


def trial_config(base: dict, params: dict, search_dir: str, name: str, trial_id: str, uri: str) -> Config:
    """The training config of one trial: the base with the sampled params, its run in
    search_dir/trials/<name>-<n>, logging to the search's MLflow store."""
    data = apply_params(base, params)
    index = trial_id.rsplit("_", 1)[-1]
    data["run"].update(
        storage_path=storage.join(search_dir, "trials"),
        name=f"{name}-{index}",
        tracking_uri=uri,
        register_as=None,
    )
    return config_from_dict(data)


def run_trial(params: dict, *, base: dict, search_dir: str, parent_run_id: str, uri: str) -> None:
    """One trial, in a Tune actor: train() with the trial's config; an MLflow child run."""
    from ray import tune

    from cg_ray.runs import train

    trial_id = tune.get_context().get_trial_id()
    name = base["run"]["name"]
    cfg = trial_config(base, params, search_dir, name, trial_id, uri)
    tags = {"mlflow.parentRunId": parent_run_id, "cg_ray.trial_id": trial_id, "cg_ray.search": name}
    train(cfg, callbacks=[EpochReport()], run_tags=tags, check_resources=False, in_search=True)


# -- resources -----------------------------------------------------------------------------------


def trial_needs(cfg: Config, use_gpu: bool) -> Need:
    """What one trial holds while it trains: its workers, whole CPUs for Ray Data decoding
    (tune.data_cpus) and the trial function's sliver of a CPU."""
    t = cfg.train
    return training_need(
        t.num_workers, t.cpus_per_worker, use_gpu, cfg.tune.data_cpus, TRIAL_DRIVER_CPU, unit="trial"
    )


def plan_concurrency(cfg: Config, use_gpu: bool, view: ClusterView) -> tuple[int, Verdict | None]:
    """Trials that can run at once on the cluster as it can grow (live nodes and the node types
    its autoscaler launches); a UserError at once when not even one trial could ever fit."""
    wanted = cfg.tune.max_concurrent or cfg.tune.num_samples
    if not cfg.tune.check_resources:
        return wanted, None
    need = trial_needs(cfg, use_gpu)
    verdict = check(need, view)
    fits = verdict.at_most
    if fits < wanted:
        print(
            f"running at most {fits} trials at once: each holds {fmt_resources(need.total())} "
            f"({need.what}); {view.describe()}",
            flush=True,
        )
    if not verdict.now:
        print(f"no trial fits the live nodes yet: waiting for {verdict.waits_for}", flush=True)
    return max(1, min(fits, wanted)), verdict


def _cluster(cfg: Config, wanted: int) -> tuple[bool, ClusterView]:
    """Start or join Ray; (use_gpu, what the cluster has and can launch)."""
    from cg_ray.ray_env import init_ray

    need = trial_needs(cfg, use_gpu=False).total()["CPU"]
    init_ray(min_cpus=need * max(wanted, 1))  # a local Ray fits `wanted` trials
    view = cluster_view()
    use_gpu, why = resolve_use_gpu(cfg.train.use_gpu, view)
    print(why, flush=True)
    return use_gpu, view


# -- the Tuner -------------------------------------------------------------------------------------


def restorable(experiment: str) -> bool:
    """Whether Tune can continue the search in `experiment`: Tune's own test (Tuner.can_restore:
    tuner.pkl, written when the Tuner is made) and an experiment state (experiment_state-*.json,
    written at the Tuner's first step, before any trial runs). A driver killed between the two
    leaves only tuner.pkl, from which Tune would log a failed restore and start over."""
    from ray import tune

    fs, path = storage.ray_storage(experiment)
    if not tune.Tuner.can_restore(path, storage_filesystem=fs):
        return False
    names = [entry.base_name for entry in storage.list_dir(experiment)]
    return any(n.startswith("experiment_state-") and n.endswith(".json") for n in names)


def _tuner(cfg: Config, trainable, concurrency: int, search_root: str, restore: bool, callbacks: list):
    """A new Tuner for the search, or the interrupted one restored from its folder (with the
    callbacks it was created with: Tune keeps its RunConfig)."""
    from ray import tune

    fs, path = storage.ray_storage(search_root)
    experiment = storage.join(search_root, cfg.run.name)
    if restore and restorable(experiment):
        return tune.Tuner.restore(
            storage.ray_storage(experiment)[1],
            trainable,
            resume_unfinished=True,
            resume_errored=True,
            storage_filesystem=fs,
        )
    if restore:  # the search's meta and parent run, but no trial: its driver died first
        print(f"no Tune state in {experiment} yet: starting its trials under the same parent run", flush=True)
    return tune.Tuner(
        trainable,
        param_space=tune_space(cfg.tune.space),
        tune_config=tune_config(cfg, concurrency, experiment),
        run_config=tune.RunConfig(
            name=cfg.run.name,
            storage_path=path,
            storage_filesystem=fs,
            verbose=1 if console.verbose() else 0,  # Tune's status tables: cg_ray prints its own
            callbacks=[ReleaseEndedTrials(), *callbacks],
            # A trial whose node went away (spot, scale-down) starts again and
            # resumes its training run from its latest checkpoint.
            failure_config=tune.FailureConfig(max_failures=cfg.train.max_failures),
        ),
    )


def search(
    cfg: Config,
    resume: bool | str | None = None,
    best_config_out: str | None = None,
    callbacks: list | None = None,
) -> dict:
    """Run (or with resume, continue) the search of cfg.tune; returns its summary. resume:
    None (a new search), "must" (or True: continue the search of run.name, an error if there is
    none) or "auto" (continue it if there is one, start it otherwise). callbacks:
    ray.tune.Callback objects the Tuner calls in this process (a new search's only)."""
    from ray import tune

    from cg_ray.train.driver import check_inputs

    if not cfg.tune.space:
        raise UserError(
            "tune.space is empty: give the config a search space, e.g. tune: {space: "
            "{optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}} (see configs/demo.yaml)"
        )
    storage.use_policy(cfg.storage.max_attempts)  # before Ray starts: its workers inherit it
    check_inputs(cfg)
    if not storage.is_uri(cfg.data.path):  # trials run in their own working directories
        cfg.data.path = os.path.abspath(cfg.data.path)
    root = (
        cfg.run.storage_path
        if storage.is_uri(cfg.run.storage_path)
        else os.path.abspath(cfg.run.storage_path)
    )
    search_dir = storage.join(root, cfg.run.name)
    meta = existing_search(cfg, search_dir, resume)
    uri = tracking.tracking_uri(cfg.run.tracking_uri)
    tracking.check_reachable(uri)
    if not storage.is_uri(search_dir):  # the command's log (Ray's and MLflow's lines)
        console.open_log(os.path.join(search_dir, console.LOG_NAME))
    use_gpu, view = _cluster(cfg, cfg.tune.max_concurrent or 1)
    concurrency, verdict = plan_concurrency(cfg, use_gpu, view)
    parent_run_id, resumed = open_parent(cfg, search_dir, uri, meta), meta is not None
    base = cfg.to_dict()
    base["train"]["use_gpu"] = use_gpu  # resolved once, from what the cluster can launch
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=base, search_dir=search_dir, parent_run_id=parent_run_id, uri=uri
        ),
        {"cpu": TRIAL_DRIVER_CPU},
    )
    start = time.perf_counter()
    watch = PlacementWatch(
        trial_needs(cfg, use_gpu), expected_trials(cfg), verdict.waits_for if verdict else ""
    )
    try:
        with watch:
            results = _tuner(cfg, trainable, concurrency, root, resumed, list(callbacks or [])).fit()
    except BaseException:
        tracking.end_run(uri, parent_run_id, "KILLED")  # --resume reopens it
        raise
    seconds = time.perf_counter() - start
    rows = trial_rows(cfg, results, stopped_trials(storage.join(search_dir, STOPPED)))
    # Tune ends early on SIGINT or SIGUSR1 and returns what it has: trials neither finished nor
    # stopped nor failed, or trials it never made.
    if any(row["status"] == "interrupted" for row in rows) or len(rows) < expected_trials(cfg):
        tracking.end_run(uri, parent_run_id, "KILLED")
        print(f"search interrupted; continue it with --resume (state in {search_dir})", flush=True)
        raise SearchInterrupted(search_dir)
    # What the trials could not deliver while the tracking server was away, then its chance to
    # come back (CG_RAY_TRACKING_WAIT_S) before the search reads its children from it.
    tracking.adopt(search_dir, uri, recursive=True)
    tracking.flush()
    settle_children(uri, parent_run_id, rows, search_dir)
    search_report.at_search_end(search_dir, uri, parent_run_id, rows)  # before the parent run ends
    summary = write_best(cfg, uri, parent_run_id, results, rows, search_dir, best_config_out)
    warning = tracking.kept_warning(uri, search_dir)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    return {
        **summary,
        "search_dir": search_dir,
        "parent_run_id": parent_run_id,
        "concurrency": concurrency,
        "seconds": round(seconds, 1),
        "resumed": resumed,
    }
