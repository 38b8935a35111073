"""The MLflow model registry: register a checkpoint as a pyfunc model, and turn a
`models:/NAME/VERSION` reference back into a local checkpoint folder.

A registered cg_ray model is an MLflow pyfunc whose artifact is the checkpoint folder
(weights, config.yaml, taxonomy.json), so `mlflow.pyfunc.load_model("models:/NAME/1")` predicts
too: input (B, T, H, W, 3) uint8 clips, output one row per clip with the codependent prediction.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import yaml

from cg_ray.errors import UserError

CHECKPOINT_ARTIFACT = "checkpoint"


def _pyfunc_class():
    import mlflow.pyfunc

    class CityGuessrPyfunc(mlflow.pyfunc.PythonModel):
        def load_context(self, context):
            from cg_ray.train.checkpoint import load_model

            self.loaded = load_model(context.artifacts[CHECKPOINT_ARTIFACT])

        def predict(self, context, model_input, params=None):
            import pandas as pd
            import torch

            from cg_ray.evaluation import rank
            from cg_ray.taxonomy import LEVELS

            video = torch.as_tensor(np.asarray(model_input, dtype=np.uint8))
            with torch.no_grad():
                out = self.loaded.model(video)
            probs = {l: torch.softmax(out.logits[l].float(), -1) for l in LEVELS}
            top = rank(probs, self.loaded.taxonomy, "codependent", k=1)
            names = self.loaded.taxonomy.labels
            return pd.DataFrame({l: [names[l][i] for i in top[l][:, 0].tolist()] for l in LEVELS})

    return CityGuessrPyfunc


def register_checkpoint(uri: str, run_id: str, checkpoint_dir: str, name: str) -> int:
    """Log the checkpoint as a pyfunc model of the run and register it; returns the version."""
    import mlflow

    from cg_ray.train.checkpoint import read_checkpoint

    state = read_checkpoint(checkpoint_dir)
    data = state["config"]["data"]
    example = np.zeros((1, data["num_frames"], data["image_size"], data["image_size"], 3), np.uint8)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model", python_model=_pyfunc_class()(),
            artifacts={CHECKPOINT_ARTIFACT: checkpoint_dir}, input_example=example,
            registered_model_name=name,
            pip_requirements=["cg_ray", "torch", "transformers", "numpy", "pandas"],
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
