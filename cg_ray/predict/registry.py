"""The MLflow model registry: turn a `models:/NAME/VERSION` reference back into a local
checkpoint folder (registering one is cg_ray/predict/pyfunc.py).

A registered cg_ray model is an MLflow pyfunc whose artifact is the checkpoint folder
(weights, config.yaml, taxonomy.json), so `mlflow.pyfunc.load_model("models:/NAME/1")` and
`mlflow models serve -m models:/NAME/1` predict too: input (B, T, H, W, 3) uint8 clips, params
top_k and mode, output one row per clip with the pick, its probability and the top-k with their
probabilities per level (output_columns). It carries cg_ray's code and pinned requirements.
"""

from __future__ import annotations

import os
import tempfile

import yaml

from cg_ray.errors import UserError

CHECKPOINT_ARTIFACT = "checkpoint"


def resolve_checkpoint(reference: str, tracking_uri: str | None = None) -> str:
    """A local checkpoint folder for a path or a `models:/NAME/VERSION` (or `models:/NAME@alias`)."""
    if not reference.startswith("models:/"):
        return reference
    import mlflow

    from cg_ray.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    target = tempfile.mkdtemp(prefix="cg_ray-model-")
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=reference, dst_path=target, tracking_uri=uri)
    except Exception as exc:  # MLflow raises its own and HTTP errors here
        raise UserError(
            f"cannot fetch {reference} from the registry at {uri}: {str(exc).splitlines()[0]}"
        ) from None
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
