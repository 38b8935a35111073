"""The MLflow model registry: turn a `models:/NAME/VERSION` reference back into a local
checkpoint folder (registering one is cg_ray/predict/pyfunc.py).

A registered cg_ray model is an MLflow pyfunc whose artifact is the checkpoint folder
(weights, config.yaml, taxonomy.json), so `mlflow.pyfunc.load_model("models:/NAME/1")` and
`mlflow models serve -m models:/NAME/1` predict too: input (B, T, H, W, 3) uint8 clips, params
top_k and mode, output one row per clip with the pick, its probability and the top-k with their
probabilities per level (output_columns). It carries cg_ray's code and pinned requirements.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile

import yaml

from cg_ray.errors import UserError
from cg_ray.secrets import redact

CHECKPOINT_ARTIFACT = "checkpoint"
CACHE_ENV = "CG_RAY_CACHE"


def cache_root() -> str:
    """Where registry models are kept once fetched: $CG_RAY_CACHE, else ~/.cache/cg_ray
    ($XDG_CACHE_HOME/cg_ray)."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cg_ray")


def resolve_checkpoint(reference: str, tracking_uri: str | None = None) -> str:
    """A local checkpoint folder for a path or a registry reference (`models:/NAME/VERSION`,
    `models:/NAME@alias`, `models:/NAME/latest`). A model version never changes, so each one is
    fetched once per machine into the cache (cache_root()/models/) and read from there after:
    a second `cg-ray predict`, or a second replica on the node, downloads nothing."""
    if not reference.startswith("models:/"):
        return reference
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    from cg_ray.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    try:  # an alias or `latest` names a version only at this moment
        name, version = get_model_name_and_version(MlflowClient(uri), reference)
    except Exception as exc:  # MLflow raises its own and HTTP errors here
        raise _error(f"cannot find {reference} in", uri, exc) from None
    key = hashlib.sha256(f"{uri}\n{name}\n{version}".encode()).hexdigest()[:16]
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    local = os.path.join(cache_root(), "models", f"{slug}-v{version}-{key}")
    if not os.path.isfile(os.path.join(local, "MLmodel")):
        _fetch(f"models:/{name}/{version}", uri, local, reference)
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


def _fetch(version_uri: str, uri: str, local: str, reference: str) -> None:
    """Download a model version into `local` whole or not at all: into a folder beside it, then
    renamed (a process that fetched the same version meanwhile wins; ours is dropped)."""
    import mlflow

    try:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".fetching-", dir=os.path.dirname(local))
    except OSError as exc:
        raise UserError(
            f"cannot keep {reference} in the model cache: {exc}; set ${CACHE_ENV} to a writable folder"
        ) from None
    try:
        mlflow.artifacts.download_artifacts(artifact_uri=version_uri, dst_path=staging, tracking_uri=uri)
        if not os.path.isfile(os.path.join(staging, "MLmodel")):  # MLflow fetches nothing quietly
            why = "it has no MLmodel file (not an MLflow model, or its artifacts are gone)"
            raise _error(f"cannot fetch {reference} from", uri, why)
        try:
            os.rename(staging, local)
        except OSError:  # already there (another process), or a broken copy in the way
            if not os.path.isfile(os.path.join(local, "MLmodel")):
                shutil.rmtree(local, ignore_errors=True)
                os.rename(staging, local)
    except UserError:
        raise
    except Exception as exc:  # MLflow raises its own and HTTP errors here
        raise _error(f"cannot fetch {reference} from", uri, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _error(action: str, uri: str, why: Exception | str) -> UserError:
    """`ACTION the registry at URI: WHY`, with credentials masked (the URI may carry them)."""
    text = why if isinstance(why, str) else (str(why).splitlines() or [type(why).__name__])[0]
    return UserError(f"{action} the registry at {redact(uri)}: {redact(text)}")
