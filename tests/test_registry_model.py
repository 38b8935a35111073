"""The registered MLflow model as a new user meets it: loaded with mlflow.pyfunc and served with
`mlflow models serve`, it answers top-k and probabilities per level; its environment is pinned
and carries cg_ray's code."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

import numpy as np
import pytest
from predict_helpers import mp4_world, train_tiny_checkpoint
from serve_helpers import free_port

from cg_ray.data.decode import decode_clip
from cg_ray.predict.predictor import Predictor
from cg_ray.predict.pyfunc import register_checkpoint
from cg_ray.taxonomy import LEVELS
from cg_ray.train.checkpoint import load_model

COLUMNS = {c for level in LEVELS for c in (level, f"{level}_prob", f"{level}_top_k", f"{level}_top_k_probs")}


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    rows = mp4_world(str(root / "mp4"), clips_per_city=2)
    train_tiny_checkpoint(str(root / "ckpt"), rows, steps=8)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("serve", artifact_location=(root / "artifacts").as_uri())
    run_id = client.create_run(experiment).info.run_id
    # MLflow warned at every registration that the model's predict has no type hints. (It shows
    # its warnings "once" per process, hence the registry cleared first.)
    warnings.onceregistry.clear()
    with warnings.catch_warnings(record=True) as caught:
        assert register_checkpoint(uri, run_id, str(root / "ckpt"), "geo") == 1
    assert not [w for w in caught if "`predict`" in str(w.message)]
    clips = np.stack([decode_clip(r["path"], 4, 32) for r in rows[:3]])
    return {"uri": uri, "rows": rows[:3], "clips": clips, "ckpt": str(root / "ckpt"), "root": root}


@pytest.mark.slow
def test_the_pyfunc_answers_top_k_and_probabilities(registered, monkeypatch):
    import mlflow

    mlflow.set_tracking_uri(registered["uri"])
    model = mlflow.pyfunc.load_model("models:/geo/1")
    out = model.predict(registered["clips"], params={"top_k": 3})
    assert set(out.columns) == COLUMNS and len(out) == 3
    expected = Predictor(load_model(registered["ckpt"]), top_k=3).predict(registered["clips"])
    for (_, row), want in zip(out.iterrows(), expected):
        for level in LEVELS:
            assert row[level] == want[level] == row[f"{level}_top_k"][0]
            assert len(row[f"{level}_top_k"]) == 3
            assert list(row[f"{level}_top_k_probs"]) == [t["prob"] for t in want["top_k"][level]]
            assert 0 < row[f"{level}_prob"] <= 1
    assert list(out["city"]) == [r["city"] for r in registered["rows"]]
    # The environment: every requirement pinned, torch/torchvision at the project's pins,
    # cg_ray's code inside the model.
    local = Path(
        mlflow.artifacts.download_artifacts("models:/geo/1", dst_path=str(registered["root"] / "dl"))
    )
    requirements = [
        line.strip()
        for line in (local / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert all("==" in line for line in requirements), requirements
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= set(requirements)
    assert any(line.startswith("mlflow==") for line in requirements)
    assert (local / "code" / "cg_ray" / "predict" / "predictor.py").exists()
    assert (local / "code" / "cg_ray" / "geodata" / "land_mask.npz").exists()
    assert "top_k" in (local / "MLmodel").read_text()  # the params are in the signature


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_probabilities(registered):
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registered["uri"],
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # mlflow runs `uvicorn` from PATH: the one installed beside this interpreter
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    }
    mlflow_cli = [sys.executable, "-m", "mlflow"]
    server = subprocess.Popen(
        [
            *mlflow_cli,
            "models",
            "serve",
            "-m",
            "models:/geo/1",
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "--env-manager",
            "local",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
        cwd=registered["root"],
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not come up"
                time.sleep(1)
        body = json.dumps({"inputs": registered["clips"][:2].tolist(), "params": {"top_k": 2}}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
        )
        answer = json.load(urllib.request.urlopen(request, timeout=60))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)
    predictions = answer["predictions"]
    assert len(predictions) == 2 and set(predictions[0]) == COLUMNS
    for prediction, row in zip(predictions, registered["rows"]):
        assert prediction["city"] == row["city"]
        for level in LEVELS:
            assert len(prediction[f"{level}_top_k"]) == 2
            probs = prediction[f"{level}_top_k_probs"]
            assert all(0 <= p <= 1 for p in probs) and prediction[f"{level}_prob"] > 0


def test_a_registry_model_is_fetched_once_into_the_cache(registered, tmp_path, monkeypatch):
    """`models:/geo/1`, `models:/geo@champion` and `models:/geo/latest` name one version: it is
    downloaded once into $CG_RAY_CACHE and read from there after (here with the run's artifacts
    moved away), and nothing half-fetched is left behind by a reference that fails."""
    from mlflow import MlflowClient

    from cg_ray.errors import UserError
    from cg_ray.predict.registry import resolve_checkpoint
    from cg_ray.train.checkpoint import read_checkpoint

    cache = tmp_path / "cache"
    monkeypatch.setenv("CG_RAY_CACHE", str(cache))
    uri = registered["uri"]
    MlflowClient(uri).set_registered_model_alias("geo", "champion", "1")
    folder = resolve_checkpoint("models:/geo/1", uri)
    assert folder.startswith(str(cache / "models"))
    assert read_checkpoint(folder)["epoch"] == read_checkpoint(registered["ckpt"])["epoch"]
    assert (Path(folder) / "checkpoint.pt").read_bytes() == (
        Path(registered["ckpt"]) / "checkpoint.pt"
    ).read_bytes()
    artifacts = registered["root"] / "artifacts"
    artifacts.rename(artifacts.with_name("away"))
    try:
        assert resolve_checkpoint("models:/geo@champion", uri) == folder
        assert resolve_checkpoint("models:/geo/latest", uri) == folder
        monkeypatch.setenv("CG_RAY_CACHE", str(tmp_path / "cold"))  # a machine without the copy
        with pytest.raises(UserError, match=r"cannot fetch models:/geo@champion from the registry"):
            resolve_checkpoint("models:/geo@champion", uri)
        assert not list((tmp_path / "cold" / "models").iterdir())  # no half-fetched copy
        monkeypatch.setenv("CG_RAY_CACHE", str(cache))
    finally:
        artifacts.with_name("away").rename(artifacts)
    with pytest.raises(UserError, match=r"cannot find models:/nope@x in the registry at sqlite:///"):
        resolve_checkpoint("models:/nope@x", uri)
    with pytest.raises(UserError, match=r"cannot fetch models:/geo/7 from the registry"):
        resolve_checkpoint("models:/geo/7", uri)
    assert len(list((cache / "models").iterdir())) == 1  # the one version, no staging folder
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("CG_RAY_CACHE", str(tmp_path / "file"))
    with pytest.raises(UserError, match=r"model cache: .*set \$CG_RAY_CACHE to a writable folder"):
        resolve_checkpoint("models:/geo/1", uri)
