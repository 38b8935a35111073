"""cg_ray.resources without a cluster: what a run needs, which node shapes host it, the node
types of an autoscaling config, train.use_gpu auto, and the waiting line."""

from pathlib import Path

import pytest
import yaml

from cg_ray.errors import UserError
from cg_ray.resources import (
    ClusterView,
    Need,
    NodeType,
    PlacementWatch,
    _units,
    check,
    declared_types,
    resolve_use_gpu,
    training_need,
    types_from_config,
)

ROOT = Path(__file__).resolve().parent.parent


def test_a_trial_keeps_a_whole_cpu_for_ray_data():
    """The README search's trial (2 workers of 1 CPU, 1 data CPU, the trial's 0.01): on 3 CPUs
    its data tasks would find 0.99 free CPUs and never start; 4 CPUs host it, 8 host two."""
    need = training_need(2, 1, False, data_cpus=1, driver_cpus=0.01, unit="trial")
    assert need.total() == {"CPU": 3.01, "GPU": 0.0}
    assert [_units(need, [{"CPU": c}]) for c in (3, 4, 8)] == [0, 1, 2]
    # Data CPUs may be on another node than the workers.
    assert _units(need, [{"CPU": 2.0}, {"CPU": 2.0}]) == 1


def test_node_types_of_an_autoscaling_config_and_of_the_environment():
    config = yaml.safe_load((ROOT / "cluster/aws.yaml").read_text())
    types = {t.name: (t.resources, t.max_workers) for t in types_from_config(config)}
    assert types == {"worker.gpu": ({"CPU": 8.0, "GPU": 1.0}, 4), "worker.cpu": ({"CPU": 16.0}, 8)}
    (gpu,) = declared_types('{"gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 4}}')
    assert (gpu.name, gpu.resources, gpu.max_workers) == ("gpu", {"CPU": 8.0, "GPU": 1.0}, 4)
    with pytest.raises(UserError, match=r"\$CG_RAY_NODE_TYPES is not JSON"):
        declared_types("gpu: 1")
    with pytest.raises(UserError, match="must map node type names"):
        declared_types("[1, 2]")


def test_use_gpu_auto_counts_the_types_the_autoscaler_can_launch():
    head = [{"CPU": 0.0, "GPU": 0.0}]
    gpu = NodeType("worker.gpu", {"CPU": 8.0, "GPU": 1.0}, 4)
    assert resolve_use_gpu(None, ClusterView(head, [gpu], True, "aws.yaml")) == (
        True,
        "train.use_gpu=auto: GPUs (none alive yet; node type worker.gpu has 1 GPU, 8 CPUs, "
        "up to 4, from aws.yaml)",
    )
    assert resolve_use_gpu(None, ClusterView([{"CPU": 4.0, "GPU": 2.0}]))[0] is True
    assert resolve_use_gpu(None, ClusterView(head, [NodeType("cpu", {"CPU": 16.0}, 8)], True))[0] is False
    assert resolve_use_gpu(False, ClusterView(head, [gpu], True)) == (False, "train.use_gpu=false")
    # A GPU type that may launch no node does not count.
    assert resolve_use_gpu(None, ClusterView(head, [NodeType("g", {"GPU": 1.0}, 0)], True))[0] is False


def test_what_fits_a_type_waits_what_fits_none_is_refused_with_the_numbers():
    view = ClusterView(
        [{"CPU": 0.0}], [NodeType("worker.gpu", {"CPU": 8.0, "GPU": 1.0}, 4)], True, "aws.yaml"
    )
    need = training_need(2, 1, True, data_cpus=6, driver_cpus=0.01, unit="trial")
    verdict = check(need, view)
    assert (verdict.now, verdict.at_most) == (0, 2)
    assert verdict.waits_for == "2 nodes with 1 GPU, 8 CPUs (type worker.gpu)"
    watch = PlacementWatch(need, 2, verdict.waits_for)
    assert watch.line(0, 3.2) == (
        "waiting for 2 nodes with 1 GPU, 8 CPUs (type worker.gpu): 0 of 2 trials placed, 3 min"
    )
    with pytest.raises(
        UserError,
        match=r"one trial needs 2 GPUs, 32.01 CPUs .* can grow to "
        r"4 GPUs, 32 CPUs",
    ):
        check(training_need(2, 1, True, data_cpus=30, driver_cpus=0.01, unit="trial"), view)
    with pytest.raises(UserError, match=r"no node can host one training worker \(2 GPUs, 1 CPU\)"):
        check(Need([{"CPU": 1.0, "GPU": 2.0}], 1, 0, "one worker of 2 GPUs"), view)
    # An autoscaler whose node types cannot be read: wait, never refuse.
    unknown = ClusterView([{"CPU": 0.0}], [], True)
    assert check(need, unknown).now == 0 and "node types are unknown" in check(need, unknown).waits_for
