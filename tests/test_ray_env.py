"""How cg_ray starts a local Ray (the session's, started by `init_ray` as every command does)."""

import os
import subprocess
import sys

import psutil
import pytest
import ray
from tmpdirs import short_tmpdir


@pytest.mark.slow
def test_a_local_ray_prestarts_no_workers_for_its_driver(ray_session):
    """Ray prestarts a worker per CPU for the first driver, without the driver's runtime_env:
    cg_ray's tasks and actors all carry one, so those workers never ran anything (two idle
    Python processes, each a CPU-second and 150 MB, on every `cg-ray` command)."""
    node = ray._private.worker._global_node
    raylet = node.all_processes[ray._private.ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    assert psutil.Process(raylet).environ().get("RAY_prestart_worker_first_driver") == "0"
    assert "RAY_prestart_worker_first_driver" not in os.environ  # only for the raylet


# A worker whose process never ends after its actor did, as Ray 2.60's workers sometimes do (a
# deadlock in the C++ exit handler; seen on Ray Train controllers): here a Python exit hook that
# sleeps. The driver is a `cg-ray` command's, in short: init_ray(), work, exit.
STUCK_AT_EXIT = """
import atexit, os, time
import ray
from cg_ray.ray_env import init_ray

init_ray()


@ray.remote(num_cpus=0)
class Stuck:
    def pid(self):
        atexit.register(time.sleep, 3600)
        return os.getpid()


actor = Stuck.remote()
print(ray.get(actor.pid.remote()), flush=True)
actor.__ray_terminate__.remote()  # the actor ends; its process runs the hook and stays
time.sleep(2)
"""


@pytest.mark.slow
def test_a_worker_stuck_at_exit_goes_with_its_local_ray():
    env = dict(os.environ, RAY_TMPDIR=short_tmpdir("cgr-"))
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(
        [sys.executable, "-c", STUCK_AT_EXIT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pid = int(done.stdout.split()[0])
    try:
        gone = psutil.wait_procs([psutil.Process(pid)], timeout=5)[0] if psutil.pid_exists(pid) else [pid]
        # (a killed orphan may linger as a zombie where nothing reaps it: gone all the same)
        assert gone or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, "the worker outlived its Ray"
    finally:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
