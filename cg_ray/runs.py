"""A training run as users get it: the fit (cg_ray.train) and what the stages above it make of
the result, its learning curves (cg_ray.report) and its registered model (cg_ray.predict). The
training stage imports neither; this module hands them down."""

from __future__ import annotations

from cg_ray.config import Config
from cg_ray.train.driver import RunOutputs


def run_outputs() -> RunOutputs:
    """The learning curves' PNG and the MLflow pyfunc registrar."""
    from cg_ray.predict.pyfunc import register_checkpoint
    from cg_ray.report.curves import ACCURACY, LOSSES, learning_curves_png

    return RunOutputs(LOSSES + ACCURACY, learning_curves_png, register_checkpoint)


def train(cfg: Config, resume: bool | str | None = None, **options) -> dict:
    """cg_ray.train.driver.train with the standard outputs: what `cg-ray train` runs."""
    from cg_ray.train.driver import train as fit

    return fit(cfg, resume, outputs=run_outputs(), **options)
