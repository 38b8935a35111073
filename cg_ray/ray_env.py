"""Starting (or joining) Ray the same way for every command."""

from __future__ import annotations

import atexit
import logging
import os
import re

from cg_ray import console
from cg_ray.errors import UserError

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


PREEMPTION_WATCHER = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Ray Train's controller polls its workers every 2 s by default, so a fit ended up to 4 s after
# its last epoch (the poll that sees the workers done, then the one after their shutdown): every
# run, and every trial of a search, paid it. Polling every 0.5 s costs the controller nothing
# measurable. Ray passes the driver's value on to the controller and its workers; a user's own
# setting stays.
TRAIN_POLL = ("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


# Ray Data's own progress bars: off unless CG_RAY_PROGRESS=1. cg_ray's lines (cg_ray.console)
# cover every long command. Ray Data's bars come from its coordinator actors, prefixed with
# "(pid=...)" and full of cursor codes, and even a local demo wrote 1,800 such lines.
# RAY_DATA_DISABLE_PROGRESS_BARS is read by Ray Data in each process, so the setting reaches
# every process of a run: the driver, Tune's trial actors, Ray Data's split coordinators.
RAY_DATA_BARS = "RAY_DATA_DISABLE_PROGRESS_BARS"


RETRIED_IO_ERRORS = (
    "AWS Error SLOW_DOWN",
    "AWS Error INTERNAL_FAILURE",
    "AWS Error SERVICE_UNAVAILABLE",
    "AWS Error NETWORK_CONNECTION",
    "AWS Error UNKNOWN (HTTP status 500)",
    "AWS Error UNKNOWN (HTTP status 502)",
    "AWS Error UNKNOWN (HTTP status 503)",
    "AWS Error UNKNOWN (HTTP status 504)",
)


# What Ray's worker processes print reaches the driver's terminal as it is (log_to_driver), so
# below WARNING Ray and MLflow are kept quiet in them, unless --verbose: Ray Data's logger (its
# "Starting execution" / "Execution plan" / "finished" lines) through RAY_DATA_LOG_LEVEL, MLflow's
# (the system-metrics monitor) through MLFLOW_LOGGING_LEVEL, Ray Train's through the RunConfig's
# LoggingConfig (cg_ray.train.driver), and the rest by `setup_worker_process`, Ray's setup hook
# for every worker process of a cg_ray job. Ray keeps its own logs of them in its session folder.
QUIET_WORKERS = {"RAY_DATA_LOG_LEVEL": "WARNING", "MLFLOW_LOGGING_LEVEL": "WARNING"}
SETUP_HOOK = "cg_ray.ray_env.setup_worker_process"
# Ray Train's own DataConfig passes ExecutionOptions.exclude_resources to Ray Data, which calls
# that deprecated: a warning about Ray's code, in every run, that no user can act on.
RAY_OWN_DEPRECATION = "`ExecutionOptions.exclude_resources` is deprecated"


class _OnlyErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _OurBarsAreOff(logging.Filter):
    """Ray Data's warning that its progress bars are off: cg_ray turned them off (RAY_DATA_BARS)
    and prints its own progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars disabled")


def hide_ray_notices() -> None:
    """In this process (after Ray is imported: it puts its own warning filter first), Ray's
    warnings about itself that need nothing of the user: the deprecation above and the note that
    Ray Data's bars are off. Nothing when verbose."""
    import warnings

    from ray.util.annotations import RayDeprecationWarning

    if console.verbose():
        return
    warnings.filterwarnings("ignore", re.escape(RAY_OWN_DEPRECATION), RayDeprecationWarning)
    bars = logging.getLogger("ray.data._internal.progress")  # a filter there outlives Ray Data's setup
    if not any(isinstance(f, _OurBarsAreOff) for f in bars.filters):
        bars.addFilter(_OurBarsAreOff())


# Ray Train modules whose logger is named after their file, not "ray.train...", so that Train's
# own log level misses them: the worker's "Reporting training result N: TrainingReport(...)" line
# with every metric, at INFO, in every epoch.
FILE_NAMED_LOGGERS = (
    ("train", "v2", "_internal", "execution", "context.py"),
    ("train", "collective", "collectives.py"),
)
# Ray Train's controller asks Ray's autoscaling coordinator for its workers' resources with a 5 s
# timeout; on a busy machine the ask times out and the controller logs a warning with a
# 20-line traceback that says itself it is "safe to ignore" (it asks again 20 s later): that
# logger's warnings are dropped unless --verbose (it logs nothing else). A filter, not a level:
# Train configures its loggers with dictConfig after this hook, which resets the level of every
# logger under "ray.train" but keeps their filters.
TRANSIENT_LOGGERS = ("ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",)


def setup_worker_process() -> None:
    """Ray's worker_process_setup_hook for every worker process of a cg_ray job."""
    import ray

    hide_ray_notices()
    if not console.verbose():
        for parts in FILE_NAMED_LOGGERS:
            logging.getLogger(os.path.join(os.path.dirname(ray.__file__), *parts)).setLevel(logging.WARNING)
        for name in TRANSIENT_LOGGERS:
            transient = logging.getLogger(name)
            if not any(isinstance(f, _OnlyErrors) for f in transient.filters):
                transient.addFilter(_OnlyErrors())


def worker_env() -> dict[str, str]:
    """How quiet Ray's worker processes are (see QUIET_WORKERS): variables for their runtime_env.
    A user's own settings of these variables stay."""
    env = {}
    if console.told_mlflow_not_to_configure():  # a local Ray's workers inherit the driver's
        env[console.MLFLOW_CONFIGURE] = "true"
    if console.verbose():
        env[console.VERBOSE_ENV] = "1"
    else:
        env.update({k: os.environ.get(k, v) for k, v in QUIET_WORKERS.items()})
    return env


def quiet_environment() -> None:
    for key, value in (*QUIET_ENV.items(), TRAIN_POLL):
        os.environ.setdefault(key, value)
    if RAY_DATA_BARS not in os.environ:  # a user's own setting stays
        os.environ[RAY_DATA_BARS] = "0" if os.environ.get("CG_RAY_PROGRESS") == "1" else "1"


def free_port() -> int:
    """A TCP port free on every interface now (taken by whoever binds it first)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def init_ray(min_cpus: float = 0, metrics_port: int | None = None) -> None:
    """Join $RAY_ADDRESS when set, else start a local Ray bound to 127.0.0.1.
    `metrics_port`: where a local Ray exports Prometheus metrics (default: a port Ray picks).

    Locally, Ray is given at least `min_cpus` logical CPUs: the training workers hold theirs for
    the whole run, and Ray Data's decode tasks need CPUs beside them or the pipeline stalls.
    """
    import ray

    quiet_environment()
    from ray.data import DataContext  # this process, where Ray Data may be imported already

    console.route_library_logs()  # Ray's and Ray Data's loggers exist now
    hide_ray_notices()
    console.open_default_log()  # unless the command named its own
    context = DataContext.get_current()
    context.enable_progress_bars = os.environ[RAY_DATA_BARS] == "0"
    # Ray Data retries its own reads on these messages; add the 5xx a HEAD request gets (no
    # body, so the SDK calls it UNKNOWN) and the other 5xx. Our own reads inside map_batches go
    # through cg_ray.storage, whose retry policy every process builds for itself.
    context.retried_io_errors = list(dict.fromkeys([*context.retried_io_errors, *RETRIED_IO_ERRORS]))
    if ray.is_initialized():
        return
    env_vars = {k: os.environ[k] for k in (*QUIET_ENV, RAY_DATA_BARS) if k in os.environ}
    for key in (
        "CG_RAY_QUIET",
        "CG_RAY_STORAGE_MAX_ATTEMPTS",
        PREEMPTION_WATCHER,  # a user's own setting, also for a driver that joins a Ray
        TRAIN_POLL[0],  # a search's trials are drivers of their trainers
        "CG_RAY_PROGRESS_EVERY",
        "MLFLOW_TRACKING_URI",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_EC2_METADATA_DISABLED",
    ):
        if key in os.environ:
            env_vars[key] = os.environ[key]
    for key, value in os.environ.items():  # the tracking outbox's timings, MLflow's HTTP retries
        if key.startswith(("CG_RAY_TRACKING_", "MLFLOW_HTTP_REQUEST_")):
            env_vars[key] = value
    env_vars.update(worker_env())
    runtime_env = {"env_vars": env_vars, "worker_process_setup_hook": SETUP_HOOK}
    # Ray's helpers in worker processes (Train V2's placement-group cleaner, which frees the
    # resources of a trial Tune stopped; the state API) find their cluster by RAY_ADDRESS, else
    # by scanning the machine, which fails when another Ray runs on it: tell every worker.
    if os.environ.get("RAY_ADDRESS"):
        if "://" not in os.environ["RAY_ADDRESS"] and os.environ["RAY_ADDRESS"] != "auto":
            env_vars["RAY_ADDRESS"] = os.environ["RAY_ADDRESS"]
        # In a submitted job these variables came from the job's own runtime_env, and Ray
        # refuses a driver runtime_env that names them again unless told to merge.
        os.environ.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
        ray.init(runtime_env=runtime_env, log_to_driver=True)
        keep_cluster_helpers_here()
        return
    num_cpus = max(os.cpu_count() or 1, int(min_cpus + 0.999))
    for attempt in range(3):
        try:
            _start_local(ray, num_cpus, runtime_env, metrics_port)
            break
        except RuntimeError as exc:
            # The GCS port was free when picked and taken by another process before Ray bound
            # it (seen under a test suite's parallel servers): pick another.
            if "Failed to start GCS" not in str(exc) or attempt == 2:
                raise
            ray.shutdown()
    atexit.register(shutdown_ray, exiting=True)  # runs before Ray's own (registered at import)


def _start_local(ray, num_cpus: int, runtime_env: dict, metrics_port: int | None) -> None:
    env_vars = runtime_env["env_vars"]
    port = free_port()
    env_vars["RAY_ADDRESS"] = f"{ray.util.get_node_ip_address()}:{port}"
    # Ray Train watches for nodes being drained (a spot node reclaimed) with an actor of its
    # own per run; nothing drains the one node of a local Ray, so that actor would only cost a
    # process per run. (On a cluster it stays.)
    env_vars[PREEMPTION_WATCHER] = os.environ.get(PREEMPTION_WATCHER, "0")
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)  # read by a local ray.init only
    # Ray prestarts a worker per CPU for the first driver, without its runtime_env; this
    # driver's tasks and actors all carry one, so those workers would never run anything.
    no_prestart = "RAY_prestart_worker_first_driver" not in os.environ  # unless the user set it
    if no_prestart:
        os.environ["RAY_prestart_worker_first_driver"] = "0"  # read by the raylet it starts
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            runtime_env=runtime_env,
            log_to_driver=True,
            **({"_metrics_export_port": metrics_port} if metrics_port else {}),
        )
    finally:
        os.environ.pop("RAY_GCS_SERVER_PORT", None)
        if no_prestart:
            os.environ.pop("RAY_prestart_worker_first_driver", None)


def shutdown_ray(exiting: bool = False) -> None:
    """ray.shutdown(); for a local Ray that this process started, also stop every worker process
    of it that is still there. (Ray 2.60: a worker can deadlock in its C++ exit handler after
    its actor ended, and would stay, orphaned, for good: 850 MB for a Train controller.)"""
    import psutil
    import ray
    from ray._private import ray_constants, worker

    node = worker._global_node
    raylets = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []) if node else []
    workers = []
    for info in raylets:
        try:
            workers += psutil.Process(info.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    ray.shutdown(_exiting_interpreter=exiting)
    for proc in workers:
        try:
            proc.kill()  # their Ray is gone: nothing of theirs is left to finish
        except psutil.NoSuchProcess:
            pass


def keep_cluster_helpers_here() -> None:
    """Start Ray's cluster-wide helper actors from this driver, so that they live on its node.

    Ray Data's stats actor and the autoscaling coordinator (Ray Train's and Ray Data's requests to
    the autoscaler) are detached 0-CPU actors that Ray pins to the node of whichever process
    first asks for them. In a search that is a trial on a worker node, and a node that hosts an
    actor is never idle: the autoscaler would keep it (a GPU node, say) for as long as the
    cluster lives. Asked for here first, they stay on the driver's node (the head, for a job);
    where they exist already, nothing changes."""
    from ray.data._internal.cluster_autoscaler.default_autoscaling_coordinator import (
        get_or_create_autoscaling_coordinator,
    )
    from ray.data._internal.stats import get_or_create_stats_actor

    get_or_create_stats_actor()
    get_or_create_autoscaling_coordinator()


def pool_plan(resources: dict, actors: int | None = None) -> dict:
    """How many inference actors (predictors, scene labellers) and what each holds, from the
    cluster's resources; `actors` overrides the count.

    With GPUs: one actor per GPU, and decoding runs in CPU tasks beside them. Without: one
    single-threaded actor per CPU; Ray Data fuses the decode step into these actors then, so
    each clip is decoded and predicted in one process and never crosses the object store.
    """
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if actors is not None and actors < 1:
        raise UserError(f"--actors must be at least 1, got {actors}")
    if gpus:
        return {"actors": min(actors or gpus, gpus), "num_gpus": 1, "use_gpu": True}
    return {"actors": actors or cpus, "num_gpus": 0, "use_gpu": False}
