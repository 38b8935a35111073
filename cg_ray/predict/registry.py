"""The MLflow model registry: register a checkpoint as a pyfunc model, and turn a
`models:/NAME/VERSION` reference back into a local checkpoint folder.

A registered cg_ray model is an MLflow pyfunc whose artifact is the checkpoint folder
(weights, config.yaml, taxonomy.json), so `mlflow.pyfunc.load_model("models:/NAME/1")` and
`mlflow models serve -m models:/NAME/1` predict too: input (B, T, H, W, 3) uint8 clips, params
top_k and mode, output one row per clip with the pick, its probability and the top-k with their
probabilities per level (output_columns). It carries cg_ray's code and pinned requirements.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import yaml

from cg_ray.errors import UserError

CHECKPOINT_ARTIFACT = "checkpoint"


# What the registered model needs to load and predict, pinned to the versions installed where it
# is logged (local build tags such as +cu128 dropped: the index has no such files). cg_ray itself
# travels inside the model (code_paths), so `mlflow models serve` rebuilds the environment from
# the package index alone.
INFERENCE_DEPS = ("torch", "torchvision", "transformers", "numpy", "pandas", "pyyaml", "pillow",
                  "av", "simplejpeg", "pyarrow")
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

        def predict(self, context, model_input, params=None):
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
            name="model", python_model=_pyfunc_class()(),
            artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir}, input_example=example,
            signature=signature, registered_model_name=name,
            code_paths=[os.path.dirname(os.path.abspath(cg_ray.__file__))],
            pip_requirements=pinned_requirements(),
        )
    return int(info.registered_model_version)


def resolve_checkpoint(reference: str, tracking_uri: str | None = None) -> str:
    """A local checkpoint folder for a path or a `models:/NAME/VERSION` (or `models:/NAME@alias`)."""
    if not reference.startswith("models:/"):
        return reference
    import mlflow

    from cg_ray.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    target = tempfile.mkdtemp(prefix="cg_ray-model-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=target,
                                                    tracking_uri=uri)
    except Exception as exc:  # MLflow raises its own and HTTP errors here
        raise UserError(f"cannot fetch {reference} from the registry at {uri}: "
                        f"{str(exc).splitlines()[0]}") from None
    # The MLmodel file maps the artifact's key to where it was stored inside the model.
    try:
        with open(os.path.join(local, "MLmodel")) as f:
            flavor = yaml.safe_load(f)["flavors"]["python_function"]
        folder = os.path.join(local, flavor["artifacts"][CHECKPOINT_ARTIFACT]["path"])
    except (OSError, KeyError, TypeError):
        folder = ""
    if not os.path.isdir(folder):
        raise UserError(f"{reference} is not a cg_ray model (no {CHECKPOINT_ARTIFACT} artifact)")
    return folder
