"""cg_ray on a cluster that autoscales from zero, with Ray's real autoscaler (fake_multinode
provider: real raylets on this machine with the declared resources), started once per module:

- a 0-CPU head and one worker type of 2 CPUs (min 0, max 2), as cluster/kuberay/rayjob-tune.yaml
  and cluster/aws.yaml are shaped: a run that no node type could host is refused at once with
  the numbers (and no node is launched for it); the RayJob's entrypoint (its command line, on
  the tiny world) starts, the autoscaler adds workers, 2 trials finish under one MLflow parent,
  no resource request outlives the trial ASHA stopped, Ray's helper actors stay on the head, and
  the workers go away afterwards;
  then, from zero workers again, `cg-ray train` with 2 workers waits for the autoscaler, saying
  for what, and runs (in this order, the search's scale-down is the only wait for one);
- a head and a GPU worker type: `train.use_gpu: auto` asks for GPUs before any GPU node exists
  (the placement group asks for them; the fake node has no CUDA, so the test stops there).

The time from `ray job submit` to the first trial running is printed (run with -s)."""

import shlex
import time
from pathlib import Path

import pytest
import yaml
from autoscaling_cluster import AutoscalingHead, python
from mlflow.tracking import MlflowClient
from ray_cluster import submit

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
WORKER = {"worker": {"resources": {"CPU": 2}, "max_workers": 2}}
# The demo's tiny model on the tiny world, for configs that name the paper's model.
TINY = [
    "data.num_frames=8",
    "data.image_size=32",
    "model.backbone.name=videomae",
    "model.backbone.pretrained=null",
    "model.backbone.hidden_size=64",
    "model.backbone.num_layers=2",
    "model.backbone.num_heads=4",
    "model.backbone.intermediate_size=128",
    "model.backbone.patch_size=8",
    "model.backbone.tubelet_size=2",
]


def _sets(pairs: list[str]) -> list[str]:
    return [word for pair in pairs for word in ("--set", pair)]


@pytest.fixture(scope="module")
def cluster():
    with AutoscalingHead({"CPU": 0}, WORKER, idle_minutes=0.5) as head:
        yield head


def _train_args(data, out: Path, name: str, *extra: str) -> list[str]:
    return [
        "--config",
        str(ROOT / "configs/demo.yaml"),
        *_sets(
            [
                f"data.path={data}",
                "train.epochs=1",
                "train.batch_size=8",
                "train.use_gpu=false",
                f"run.storage_path={out}/runs",
                f"run.name={name}",
                f"run.tracking_uri=sqlite:///{out}/mlflow.db",
                *extra,
            ]
        ),
    ]


def test_a_run_no_node_type_can_host_is_refused_at_once(cluster, tiny_dataset, tmp_path):
    submit(
        cluster,
        "too-big",
        [
            python(),
            str(ROOT / "jobs/train.py"),
            *_train_args(tiny_dataset, tmp_path, "too-big", "train.cpus_per_worker=8"),
        ],
        cwd=str(ROOT),
    )
    assert cluster.wait_job("too-big", timeout=180) == "FAILED"
    logs = cluster.job_logs("too-big")
    assert "no node can host one training worker (8 CPUs): the largest node type has 2 CPUs" in logs
    assert "worker: 2 CPUs, up to 2" in logs  # the node types it read, from the autoscaler's file
    assert len(cluster.alive_nodes()) == 1  # nothing was launched for it


def test_the_rayjob_search_scales_up_runs_its_trials_and_scales_down(cluster, tiny_dataset, tmp_path):
    rayjob = yaml.safe_load((ROOT / "cluster/kuberay/rayjob-tune.yaml").read_text())
    storage = tmp_path / "storage"
    # The entrypoint as the submitter pod runs it: its $CG_RAY_* expanded, the image's checkout
    # (/opt/cg_ray) being this one, `python` the venv's.
    text = rayjob["spec"]["entrypoint"].replace("/opt/cg_ray", str(ROOT))
    words = shlex.split(text.replace("$CG_RAY_DATA", tiny_dataset).replace("$CG_RAY_STORAGE", str(storage)))
    assert words[0] == "python" and "--best-config-out" in words
    words[0] = python()
    # Sized for this machine: the tiny model, CPUs (the fake nodes have no CUDA), 2 trials (one
    # at a time: a trial holds 2.01 CPUs of the two 2-CPU nodes).
    words += _sets(
        [
            *TINY,
            "train.use_gpu=false",
            "train.epochs=2",
            "train.batch_size=8",
            "tune.num_samples=2",
            "tune.data_cpus=1",
            "tune.grace_period=1",
        ]
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    cluster.wait_for(lambda nodes: len(nodes) == 1, timeout=240)  # from zero workers
    start = time.time()
    submit(cluster, "search", words, cwd=str(ROOT), env_vars={"MLFLOW_TRACKING_URI": uri})
    first_node = first_trial = None
    while time.time() - start < 300 and first_trial is None:
        if first_node is None and len(cluster.alive_nodes()) > 1:
            first_node = time.time() - start
        experiment = client.get_experiment_by_name("cityguessr-search")
        if experiment and any(
            "mlflow.parentRunId" in r.data.tags for r in client.search_runs([experiment.experiment_id])
        ):
            first_trial = time.time() - start
        if cluster.job_status("search") in ("FAILED", "STOPPED"):
            break
        time.sleep(1)
    status = cluster.wait_job("search", timeout=900)
    logs = cluster.job_logs("search")
    assert status == "SUCCEEDED", logs[-4000:]
    print(
        f"\nFIGURE ray job submit -> first worker node alive: {first_node:.1f} s, "
        f"-> first trial running (its MLflow run opened): {first_trial:.1f} s"
    )
    assert "no trial fits the live nodes yet: waiting for" in logs
    runs = client.search_runs([client.get_experiment_by_name("cityguessr-search").experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, logs[-8000:]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert (storage / "search-best.yaml").exists()
    # Ray's detached helper actors (Ray Data's stats, the autoscaling coordinator) live on the
    # head, where the driver asked for them first: on a worker node (where a trial would have
    # created them) they keep that node from ever idling out.
    head = next(node["node_id"] for node in cluster.alive_nodes() if node["is_head_node"])
    query = {"filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE", "detail": "true"}
    actors = cluster.api("/api/v0/actors", {**query, "limit": 1000})["data"]["result"]["result"]
    helpers = {
        actor["class_name"]: actor["node_id"]
        for actor in actors
        if actor["class_name"] in ("_StatsActor", "_AutoscalingCoordinatorActor")
    }
    assert len(helpers) == 2 and set(helpers.values()) == {head}, helpers
    # No resource request outlives its trial: Ray Train's own for a trial ASHA stopped would
    # last 180 s after its controller died with the trial; the search withdraws it (test_tune
    # has the trial that is always stopped).
    left = ""
    for _ in range(20):
        status = cluster.ray("status", "--address", cluster.gcs)
        left = [line for line in status.stdout.splitlines() if "from request_resources()" in line]
        if not left:
            break
        time.sleep(2)
    assert not left, status.stdout
    # The workers idle out (idle_timeout_minutes 0.5) and the autoscaler removes them.
    scaled_down = cluster.wait_for(lambda nodes: len(nodes) == 1, timeout=240)
    print(f"FIGURE search end -> workers removed: {scaled_down:.1f} s")


def test_training_waits_for_the_autoscaler_then_runs(cluster, tiny_dataset, tmp_path):
    cluster.wait_for(lambda nodes: len(nodes) == 1, timeout=240)  # from zero workers
    submit(
        cluster,
        "train-2",
        [
            python(),
            str(ROOT / "jobs/train.py"),
            *_train_args(tiny_dataset, tmp_path, "train-2", "train.num_workers=2"),
        ],
        cwd=str(ROOT),
    )
    status = cluster.wait_job("train-2", timeout=500)
    logs = cluster.job_logs("train-2")
    assert status == "SUCCEEDED", logs[-3000:]
    # 2 workers of 1 CPU and a whole CPU for Ray Data: two 2-CPU nodes, none alive at first.
    assert "the run does not fit the live nodes yet: waiting for 2 nodes with 2 CPUs (type worker)" in logs
    assert "epoch 1/1: train_loss=" in logs


def test_use_gpu_auto_asks_for_gpus_before_any_gpu_node_exists(tiny_dataset, tmp_path):
    gpu = {"gpu": {"resources": {"CPU": 2, "GPU": 1}, "max_workers": 1}}
    with AutoscalingHead({"CPU": 1}, gpu, idle_minutes=0.1) as cluster:
        assert all(n["resources_total"].get("GPU", 0) == 0 for n in cluster.alive_nodes())
        args = _train_args(tiny_dataset, tmp_path, "gpu", "train.use_gpu=auto", "train.num_workers=1")
        submit(cluster, "gpu", [python(), str(ROOT / "jobs/train.py"), *args], cwd=str(ROOT))
        bundles, deadline = [], time.time() + 240
        while time.time() < deadline and not bundles:
            try:  # an error before the first group
                groups = cluster.api("/api/v0/placement_groups", {"detail": "true", "limit": 1000})
                groups = groups["data"]["result"]["result"]
            except (OSError, KeyError, ValueError):
                groups = []
            for group in groups:
                bundles += [
                    b["unit_resources"]
                    for b in group.get("bundles") or []
                    if b.get("unit_resources", {}).get("GPU")
                ]
            time.sleep(2)
        logs = cluster.job_logs("gpu")
        cluster.ray("job", "stop", "gpu", "--address", cluster.dashboard, "--no-wait")
        assert "train.use_gpu=auto: GPUs (none alive yet; node type gpu has 1 GPU, 2 CPUs" in logs
        assert bundles and all(b == {"CPU": 1.0, "GPU": 1.0} for b in bundles), bundles
