"""How a search schedules its trials: what a trial reports to Tune, the ASHA that stops the weak
ones (and records which), the search algorithm, and how many trials a search holds."""

from __future__ import annotations

import json

from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from cg_ray import storage
from cg_ray.config import Config

# ASHA counts epochs done; Tune's own training_iteration restarts at 1 in a resumed trial.
TIME_ATTR = "epochs_done"
STOPPED = "stopped_early.json"


class EpochReport(TuneReportCallback):
    """Forwards rank 0's metrics of every epoch to Tune, with `epochs_done` (epoch + 1)."""

    def after_report(self, run_context, metrics, checkpoint):
        first = dict(metrics[0], **{TIME_ATTR: int(metrics[0]["epoch"]) + 1})
        super().after_report(run_context, [first] + list(metrics[1:]), checkpoint)


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


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # the default name holds every param: too long for a path


def tune_config(cfg: Config, concurrency: int, search_dir: str):
    """Tune's TuneConfig for the search: metric, scheduler, search algorithm, concurrency."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

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
        search_alg = BasicVariantGenerator(random_state=t.seed, max_concurrent=concurrency)
    return tune.TuneConfig(
        metric=t.metric,
        mode=t.mode,
        scheduler=scheduler,
        search_alg=search_alg,
        num_samples=t.num_samples,
        max_concurrent_trials=concurrency if t.search == "optuna" else None,
        trial_dirname_creator=_trial_dirname,
    )
