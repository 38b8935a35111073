"""How a search schedules its trials: what a trial reports to Tune, the ASHA that stops the weak
ones (and records which), the search algorithm, and how many trials a search holds."""

from __future__ import annotations

import copy
import glob
import json
import os
import time

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from cg_ray import storage
from cg_ray.config import Config

# ASHA counts epochs done; Tune's own training_iteration restarts at 1 in a resumed trial.
TIME_ATTR = "epochs_done"
STOPPED = "stopped_early.json"
# The Ray Train run behind a trial's results (its autoscaling request is named after it).
TRAIN_RUN = "train_run_id"


class EpochReport(TuneReportCallback):
    """Forwards rank 0's metrics of every epoch to Tune, with `epochs_done` (epoch + 1) and the
    id of the Ray Train run (`train_run_id`)."""

    def after_report(self, run_context, metrics, checkpoint):
        first = dict(metrics[0], **{TIME_ATTR: int(metrics[0]["epoch"]) + 1, TRAIN_RUN: run_context.run_id})
        super().after_report(run_context, [first] + list(metrics[1:]), checkpoint)


class ReleaseEndedTrials(tune.Callback):
    """Withdraws the autoscaler request of each trial's training run once the trial has ended.

    Ray Train asks the autoscaler for a run's workers (renewed every 20 s, lapsing 180 s after
    the last renewal) and withdraws the request when the run's controller shuts down. A trial
    that Tune ends from outside (ASHA stops it, it fails and is retried, the search is
    interrupted) has its actor removed, and the controller dies with that actor without
    withdrawing it: for 3 minutes the autoscaler would keep, or even launch, nodes for a trial
    that no longer exists. The request is withdrawn when the trial ends and again after the
    controller's renewal interval (by then the controller is gone), and for every trial when
    the search ends."""

    AGAIN_AFTER_S = (0.0, 5.0, 25.0)

    def __init__(self):
        self._due: dict[str, list[float]] = {}  # Ray Train run id -> when to withdraw

    def _ended(self, trial) -> None:
        run_id = (trial.last_result or {}).get(TRAIN_RUN)
        if run_id:
            now = time.monotonic()
            self._due[run_id] = [now + s for s in self.AGAIN_AFTER_S]

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended(trial)
        self._withdraw()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended(trial)
        self._withdraw()

    def on_trial_recover(self, iteration, trials, trial, **info):
        self._ended(trial)  # the retry is a new training run with a request of its own
        self._withdraw()

    def on_step_end(self, iteration, trials, **info):
        self._withdraw()

    def on_experiment_end(self, trials, **info):
        # Tune has removed every trial actor by now, those of an interrupted search included
        # (their trials neither completed nor failed).
        for trial in trials:
            self._ended(trial)
        self._withdraw(everything=True)

    def _withdraw(self, everything: bool = False) -> None:
        now = time.monotonic()
        for run_id, times in list(self._due.items()):
            if not everything and times[0] > now:
                continue
            withdraw_train_request(run_id)
            while times and (everything or times[0] <= now):
                times.pop(0)
            if not times:
                del self._due[run_id]


def withdraw_train_request(run_id: str) -> None:
    """Withdraw the autoscaler request of Ray Train run `run_id` (a no-op when it has none).
    Ray 2.60's Train names it `train-<run id>` (ScalingPolicy.after_controller_start); the
    client logs a warning, never raises, when the coordinator cannot be reached."""
    from ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client import (
        TrainAutoscalingCoordinatorClient,
    )

    TrainAutoscalingCoordinatorClient(f"train-{run_id}").cancel_resource_request()


class LastEpochASHA(ASHAScheduler):
    """ASHA that never stops a trial at its last epoch: the trial ends by itself there, after its
    training run closes (checkpoint logged, MLflow run ended); Tune's ASHA stops every trial that
    reaches max_t, which would kill that. Every trial it stops is recorded in `record` (a JSON
    list of trial ids), so that a stopped trial is told from an interrupted one afterwards."""

    def __init__(self, record: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self._record = record

    def on_trial_result(self, tune_controller, trial, result):
        if result.get(self._time_attr, 0) >= self._max_t:
            return self.CONTINUE  # on_trial_complete records the result for the rungs
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP and self._record:
            storage.write_text(
                self._record, json.dumps(sorted(stopped_trials(self._record) | {trial.trial_id}))
            )
        return decision


def stopped_trials(record: str) -> set[str]:
    return set(json.loads(storage.read_text(record))) if storage.exists(record) else set()


def expected_trials(cfg: Config) -> int:
    """Trials the search makes: num_samples, times the size of each grid."""
    count = cfg.tune.num_samples
    for spec in cfg.tune.space.values():
        if isinstance(spec, dict) and "grid" in spec:
            count *= len(spec["grid"])
    return count


class ReplayedVariantGenerator(BasicVariantGenerator):
    """Tune's random and grid search, restored from the trials Tune saved rather than from its
    own saved state.

    Tune saves the trials (experiment_state-*.json) and this generator (basic-variant-state-*)
    as two files and copies them to storage in parallel: a driver killed during a copy leaves a
    pair that disagrees. Restored from such a pair, the generator waits forever on a trial that
    had ended (its max_concurrent slot stays taken), makes a trial again under an id Tune has,
    or never makes one that Tune lost. The trials are what counts: the generator starts again
    from its first state (kept in its own state) and makes, and drops, as many trials as Tune
    restored, so the next one it makes is the first one that Tune has not seen. (Optuna's
    searcher is restored as Tune saved it.)"""

    def add_configurations(self, experiments) -> None:
        super().add_configurations(experiments)
        first = self.get_state()
        first.pop("_first", None)
        self._first = copy.deepcopy(first)

    def restore_from_dir(self, dirpath: str) -> None:
        super().restore_from_dir(dirpath)
        saved = _saved_trials(dirpath)
        first = getattr(self, "_first", None)
        if first is None or not all(t.startswith(self._uuid_prefix) for t in saved):
            return  # another generator's trials: Tune's own state
        self.set_state(copy.deepcopy(first))
        self._first = first
        trials = iter(self._trial_generator)
        for _ in saved:
            next(trials, None)
        self._trial_iter = trials  # type: ignore[assignment]  # None until the first trial
        self._live_trials = {t for t, status in saved.items() if status != "TERMINATED"}


def _saved_trials(dirpath: str) -> dict[str, str]:
    """{trial id: status} of the newest experiment state in dirpath (the one Tune restores)."""
    states = sorted(glob.glob(os.path.join(dirpath, "experiment_state-*.json")))
    if not states:
        return {}
    with open(states[-1]) as f:
        trials = [json.loads(state) for state, _ in json.load(f)["trial_data"]]
    return {t["trial_id"]: t["status"] for t in trials}


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # the default name holds every param: too long for a path


def tune_config(cfg: Config, concurrency: int, search_dir: str):
    """Tune's TuneConfig for the search: metric, scheduler, search algorithm, concurrency."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler

    t = cfg.tune
    if t.scheduler == "asha":
        scheduler = LastEpochASHA(
            record=storage.join(search_dir, STOPPED),
            time_attr=TIME_ATTR,
            max_t=cfg.train.epochs,
            grace_period=min(t.grace_period, cfg.train.epochs),
            reduction_factor=t.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    if t.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(seed=t.seed)
    else:
        # A SearchGenerator ignores TuneConfig.max_concurrent_trials: it takes its own limit.
        search_alg = ReplayedVariantGenerator(random_state=t.seed, max_concurrent=concurrency)
    return tune.TuneConfig(
        metric=t.metric,
        mode=t.mode,
        scheduler=scheduler,
        search_alg=search_alg,
        num_samples=t.num_samples,
        max_concurrent_trials=concurrency if t.search == "optuna" else None,
        trial_dirname_creator=_trial_dirname,
    )
