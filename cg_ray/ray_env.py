"""Starting (or joining) Ray the same way for every command."""

from __future__ import annotations

import os

QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_environment() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(min_cpus: float = 0) -> None:
    """Join $RAY_ADDRESS when set, else start a local Ray bound to 127.0.0.1.

    Locally, Ray is given at least `min_cpus` logical CPUs: the training workers hold theirs for
    the whole run, and Ray Data's decode tasks need CPUs beside them or the pipeline stalls.
    """
    import ray

    quiet_environment()
    if ray.is_initialized():
        return
    env_vars = {k: os.environ[k] for k in QUIET_ENV if k in os.environ}
    for key in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION"):
        if key in os.environ:
            env_vars[key] = os.environ[key]
    runtime_env = {"env_vars": env_vars}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(runtime_env=runtime_env, log_to_driver=True)
        return
    num_cpus = max(os.cpu_count() or 1, int(min_cpus + 0.999))
    ray.init(num_cpus=num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             runtime_env=runtime_env, log_to_driver=True)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = os.environ.get("CG_RAY_PROGRESS", "1") == "1"
