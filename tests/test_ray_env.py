"""How cg_ray starts a local Ray (the session's, started by `init_ray` as every command does)."""

import os

import psutil
import pytest
import ray


@pytest.mark.slow
def test_a_local_ray_prestarts_no_workers_for_its_driver(ray_session):
    """Ray prestarts a worker per CPU for the first driver, without the driver's runtime_env:
    cg_ray's tasks and actors all carry one, so those workers never ran anything (two idle
    Python processes, each a CPU-second and 150 MB, on every `cg-ray` command)."""
    node = ray._private.worker._global_node
    raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    assert psutil.Process(raylet).environ().get("RAY_prestart_worker_first_driver") == "0"
    assert "RAY_prestart_worker_first_driver" not in os.environ  # only for the raylet
