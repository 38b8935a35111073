"""How cg_ray starts a local Ray (the session's, started by `init_ray` as every command does)."""

import logging
import os
import subprocess
import sys
import warnings

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


def test_ray_workers_are_quiet_below_warning_unless_verbose(monkeypatch):
    """What reaches Ray's worker processes (their runtime_env): Ray Data's and MLflow's loggers
    at WARNING, unless --verbose; a user's own levels stay. A command's own MLflow is told not to
    set its loggers up (its console routes them); the workers, which inherit that from a local
    Ray, are told to."""
    from cg_ray.console import command_console
    from cg_ray.ray_env import worker_env

    for name in ("RAY_DATA_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL", "CG_RAY_VERBOSE", "MLFLOW_CONFIGURE_LOGGING"):
        monkeypatch.delenv(name, raising=False)
    assert worker_env() == {"RAY_DATA_LOG_LEVEL": "WARNING", "MLFLOW_LOGGING_LEVEL": "WARNING"}
    monkeypatch.setenv("RAY_DATA_LOG_LEVEL", "DEBUG")
    assert worker_env()["RAY_DATA_LOG_LEVEL"] == "DEBUG"
    with command_console("train", verbose=True):
        assert os.environ["MLFLOW_CONFIGURE_LOGGING"] == "false"
        assert worker_env() == {"MLFLOW_CONFIGURE_LOGGING": "true", "CG_RAY_VERBOSE": "1"}
    assert "MLFLOW_CONFIGURE_LOGGING" not in os.environ


def test_rays_notices_about_itself_are_hidden_and_no_other():
    from ray.util.annotations import RayDeprecationWarning

    from cg_ray.ray_env import RAY_OWN_DEPRECATION, hide_ray_notices

    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("module", category=RayDeprecationWarning)  # Ray's own (pytest ignores them)
        hide_ray_notices()
        warnings.warn(
            f"{RAY_OWN_DEPRECATION} and will be removed after January 2027.",
            RayDeprecationWarning,
            stacklevel=1,
        )
        warnings.warn("`Dataset.foo` is deprecated", RayDeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["`Dataset.foo` is deprecated"]
    bars = logging.getLogger("ray.data._internal.progress")
    assert not bars.filter(logging.makeLogRecord({"msg": "Progress bars disabled. To enable, set ..."}))
    assert bars.filter(logging.makeLogRecord({"msg": "Progress bars for operators disabled. To enable, ..."}))


@pytest.mark.slow
def test_every_worker_process_of_a_cg_ray_job_is_set_up_quiet(ray_session):
    """Ray's setup hook and the runtime_env's variables reach the processes Ray starts for the
    job (Ray Train's and Ray Data's actors among them)."""

    @ray.remote(num_cpus=0)
    def inside():
        from ray.util.annotations import RayDeprecationWarning

        from cg_ray.ray_env import FILE_NAMED_LOGGERS, RAY_OWN_DEPRECATION, TRANSIENT_LOGGERS

        with warnings.catch_warnings(record=True) as caught:
            warnings.warn(f"{RAY_OWN_DEPRECATION} and will be removed.", RayDeprecationWarning, stacklevel=1)
            warnings.warn("a warning of our own", UserWarning, stacklevel=1)
        report = logging.getLogger(os.path.join(os.path.dirname(ray.__file__), *FILE_NAMED_LOGGERS[0]))
        levels = [os.environ.get(name) for name in ("RAY_DATA_LOG_LEVEL", "MLFLOW_LOGGING_LEVEL")]
        # the controller's "safe to ignore" traceback when a resource request times out, also
        # once Ray Train has configured its loggers as its controller does (dictConfig)
        from logging import config as logging_config

        logging_config.dictConfig(
            {"version": 1, "disable_existing_loggers": False, "loggers": {"ray.train": {"level": "DEBUG"}}}
        )
        transient = [
            (logging.getLogger(name).filter(logging.makeLogRecord({"levelno": level})) is not False)
            for name in TRANSIENT_LOGGERS
            for level in (logging.WARNING, logging.ERROR)
        ]
        return [str(w.message) for w in caught], report.level, levels, transient

    quiet = (["a warning of our own"], logging.WARNING, ["WARNING", "WARNING"], [False, True])
    assert ray.get(inside.remote()) == quiet


def test_ray_train_polls_its_workers_often_unless_the_user_says_otherwise(monkeypatch):
    """Ray Train's controller polls every 2 s by default, so every fit (and every trial of a
    search) ended up to 4 s after its last epoch; cg_ray's drivers ask for 0.5 s, which Ray
    passes on to the controller. A user's own setting stays."""
    from ray.train.v2._internal.constants import HEALTH_CHECK_INTERVAL_S_ENV_VAR, get_env_vars_to_propagate

    from cg_ray.ray_env import quiet_environment

    monkeypatch.delenv(HEALTH_CHECK_INTERVAL_S_ENV_VAR, raising=False)
    quiet_environment()
    assert get_env_vars_to_propagate()[HEALTH_CHECK_INTERVAL_S_ENV_VAR] == "0.5"
    monkeypatch.setenv(HEALTH_CHECK_INTERVAL_S_ENV_VAR, "3")
    quiet_environment()
    assert get_env_vars_to_propagate()[HEALTH_CHECK_INTERVAL_S_ENV_VAR] == "3"
