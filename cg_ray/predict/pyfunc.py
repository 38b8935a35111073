"""The registered MLflow model: a checkpoint logged as a pyfunc that predicts as `cg-ray predict`
does (Predictor), with cg_ray's code inside (code_paths), pinned requirements, and a signature with
the params top_k and mode.

    register_checkpoint(uri, run_id, checkpoint_dir, name) -> version
    output_columns(row)    a Predictor row -> LEVEL, LEVEL_prob, LEVEL_top_k, LEVEL_top_k_probs
"""

from __future__ import annotations

import os

import numpy as np

from cg_ray.errors import UserError
from cg_ray.predict.registry import CHECKPOINT_ARTIFACT

# What the registered model needs to load and predict, pinned to the versions installed where it
# is logged (local build tags such as +cu128 dropped: the index has no such files). cg_ray itself
# travels inside the model (code_paths), so `mlflow models serve` rebuilds the environment from
# the package index alone.
INFERENCE_DEPS = (
    "torch",
    "torchvision",
    "transformers",
    "numpy",
    "pandas",
    "pyyaml",
    "pillow",
    "av",
    "simplejpeg",
    "pyarrow",
)
DEFAULT_PARAMS = {"top_k": 5, "mode": "codependent"}


def pinned_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for dist in INFERENCE_DEPS:
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except PackageNotFoundError:  # pragma: no cover - every one is a cg_ray dependency
            raise UserError(f"cannot register the model: {dist} is not installed") from None
    return pins


def output_columns(row: dict) -> dict:
    """One prediction (Predictor.describe's dict) as the model's output columns, per level:
    LEVEL (the pick), LEVEL_prob (its probability), LEVEL_top_k (labels, best first) and
    LEVEL_top_k_probs (their probabilities)."""
    from cg_ray.taxonomy import LEVELS

    out: dict = {}
    for level in LEVELS:
        top = row["top_k"][level]
        out[level] = row[level]
        out[f"{level}_prob"] = next((t["prob"] for t in top if t["label"] == row[level]), 0.0)
        out[f"{level}_top_k"] = [t["label"] for t in top]
        out[f"{level}_top_k_probs"] = [t["prob"] for t in top]
    return out


def _pyfunc_class():
    import mlflow.pyfunc

    class CityGuessrPyfunc(mlflow.pyfunc.PythonModel):
        """Input (B, T, H, W, 3) uint8 clips; params top_k and mode; output one row per clip
        (output_columns)."""

        def load_context(self, context):
            from cg_ray.train.checkpoint import load_model

            self.loaded = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

        # Typed input (a numpy array, for which MLflow infers nothing: the logged signature
        # stays the one register_checkpoint gives), or MLflow warns at every load.
        def predict(self, context, model_input: np.ndarray, params=None):
            import pandas as pd

            from cg_ray.predict.predictor import Predictor

            params = {**DEFAULT_PARAMS, **(params or {})}
            predictor = Predictor(self.loaded, str(params["mode"]), int(params["top_k"]))
            rows = predictor.predict(np.asarray(model_input, dtype=np.uint8))
            return pd.DataFrame([output_columns(row) for row in rows])

    return CityGuessrPyfunc


def register_checkpoint(uri: str, run_id: str, checkpoint_dir: str, name: str) -> int:
    """Log the checkpoint as a pyfunc model of the run and register it; returns the version.

    The model carries cg_ray's code (code_paths) and pinned requirements, a signature with the
    params top_k and mode, and an input example."""
    import mlflow
    import pandas as pd
    from mlflow.models import infer_signature

    import cg_ray
    from cg_ray.predict.predictor import Predictor
    from cg_ray.train.checkpoint import load_model

    loaded = load_model(checkpoint_dir)
    data = loaded.config.data
    example = np.zeros((1, data.num_frames, data.image_size, data.image_size, 3), np.uint8)
    output = pd.DataFrame([output_columns(row) for row in Predictor(loaded).predict(example)])
    signature = infer_signature(example, output, params=DEFAULT_PARAMS)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_pyfunc_class()(),
            artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir},
            input_example=example,
            signature=signature,
            registered_model_name=name,
            code_paths=[os.path.dirname(os.path.abspath(cg_ray.__file__))],
            pip_requirements=pinned_requirements(),
        )
    return int(info.registered_model_version)
