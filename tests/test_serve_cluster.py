"""cluster/kuberay/rayservice.yaml against the KubeRay RayService CRD (ray.io/v1 fields of
KubeRay 1.5-1.7, by hand like the other manifests) and its serveConfigV2 against Ray Serve's own
config schema; the application builder it names; jobs/serve.py."""

from pathlib import Path

import yaml
from test_cluster_files import _check_cluster_spec, _docs

ROOT = Path(__file__).resolve().parent.parent
# RayServiceSpec of KubeRay v1.7 (ray-operator/apis/ray/v1/rayservice_types.go).
RAYSERVICE_SPEC = {
    "rayClusterDeletionDelaySeconds",
    "serviceUnhealthySecondThreshold",
    "deploymentUnhealthySecondThreshold",
    "serveService",
    "upgradeStrategy",
    "managedBy",
    "serveConfigV2",
    "rayClusterConfig",
    "excludeHeadPodFromServeSvc",
    "suspend",
}
UPGRADE_TYPES = {"NewCluster", "NewClusterWithIncrementalUpgrade", "None"}


def _service() -> dict:
    (doc,) = _docs(ROOT / "cluster/kuberay/rayservice.yaml")
    return doc


def test_rayservice_manifest_fields_and_safe_defaults():
    doc = _service()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    assert doc["metadata"]["namespace"] == "cg-ray"
    spec = doc["spec"]
    assert set(spec) <= RAYSERVICE_SPEC, set(spec) - RAYSERVICE_SPEC
    assert "rayClusterConfig" in spec and isinstance(spec["serveConfigV2"], str)
    assert spec["upgradeStrategy"]["type"] in UPGRADE_TYPES
    assert "serveService" not in spec  # KubeRay's default: a ClusterIP service
    _check_cluster_spec(spec["rayClusterConfig"])  # token auth, ClusterIP head, GPU and CPU groups
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"containerPort": 8000, "name": "serve"} in head["ports"]
    groups = {g["groupName"]: g for g in spec["rayClusterConfig"]["workerGroupSpecs"]}
    assert groups["gpu"]["minReplicas"] >= 1  # an endpoint answers from the start
    text = (ROOT / "cluster/kuberay/rayservice.yaml").read_text()
    assert "LoadBalancer" not in text.split("apiVersion")[1] and "Ingress" not in text.split("apiVersion")[1]


def test_serve_config_passes_ray_serve_schema_and_names_our_builder():
    from ray.serve.schema import ServeDeploySchema

    from cg_ray.predict import serve

    config = yaml.safe_load(_service()["spec"]["serveConfigV2"])
    schema = ServeDeploySchema(**config)
    (app,) = schema.applications
    assert app.import_path == "cg_ray.predict.serve:app_builder" and app.route_prefix == "/"
    assert schema.http_options.host == "0.0.0.0"
    module, name = app.import_path.split(":")
    assert callable(getattr(serve, name))
    args = dict(app.args)
    assert args["gpus_per_replica"] >= 1 and serve.parse_autoscale(args["autoscale"])[1] > 1
    assert set(args) <= set(serve.ServeOptions.__dataclass_fields__) - {"token", "host", "port"}
    assert "token" not in yaml.safe_dump(config).lower()


def test_app_builder_builds_the_application_from_config_args(tmp_path, monkeypatch):
    from predict_helpers import mp4_world, train_tiny_checkpoint
    from ray.serve import Application
    from ray.serve._private.build_app import build_app

    from cg_ray.predict.serve import app_builder

    rows = mp4_world(str(tmp_path / "mp4"), clips_per_city=1)
    train_tiny_checkpoint(str(tmp_path / "ckpt"), rows, steps=1)
    monkeypatch.setenv("CG_RAY_SERVE_TOKEN", "from-the-secret")
    app = app_builder(
        {"checkpoint": str(tmp_path / "ckpt"), "autoscale": "1:3", "max_batch": 4, "gpus_per_replica": 0}
    )
    assert isinstance(app, Application)
    (endpoint,) = build_app(app, name="cg_ray").deployments
    assert endpoint.name == "Endpoint"  # ingress, decoding and model in each replica
    settings = endpoint.init_args[1]
    assert settings["token"] == "from-the-secret" and settings["max_batch"] == 4
    assert settings["info"]["taxonomy"]["city"] == 6 and settings["decode_threads"] == 2
    config = endpoint._deployment_config
    assert config.autoscaling_config.max_replicas == 3
    assert config.autoscaling_config.target_ongoing_requests == 4
    assert config.max_ongoing_requests >= 2 * 4  # a batch decoding while the one before runs


def test_serve_job_entry_point():
    text = (ROOT / "jobs" / "serve.py").read_text()
    assert 'main(["serve", *sys.argv[1:]])' in text
