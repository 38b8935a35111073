import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CG_RAY_PROGRESS", "0")
if not os.environ.get("CG_RAY_CACHE"):  # registry models fetched by tests: not into ~/.cache
    from tmpdirs import short_tmpdir

    os.environ["CG_RAY_CACHE"] = short_tmpdir("cg_ray-test-cache-")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# `make test` runs the files on several pytest-xdist workers: each has its own S3 server port and
# Ray temp dir (a worker inherits the controller's environment, so these are set, not defaulted).
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if WORKER:
    os.environ["CG_RAY_TEST_S3_PORT"] = str(_free_port())
    if os.environ.get("RAY_TMPDIR"):
        os.environ["RAY_TMPDIR"] = os.path.join(os.environ["RAY_TMPDIR"], WORKER)
        os.makedirs(os.environ["RAY_TMPDIR"], exist_ok=True)

# The S3-compatible test server's address and dummy keys are in the environment before anything
# starts Ray, so Ray's worker processes inherit them (see the `s3` fixture).
S3_PORT = int(os.environ.setdefault("CG_RAY_TEST_S3_PORT", str(_free_port())))
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{S3_PORT}"
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import pytest  # noqa: E402 (after the environment above, which Ray's processes inherit)

from cg_ray.taxonomy import Taxonomy  # noqa: E402

# Files that start Ray clusters of their own (multi-node, autoscaling, a fresh local Ray as a user's
# command does). `make test` runs two pytest-xdist workers: these files one after another on one,
# the other files on the other, then on whichever is free (whole files, so that a module's
# fixtures are built once). Two of these clusters at once overload 2 cores: Ray's node start-up and the
# autoscaler's scale-down time out.
OWN_CLUSTERS = {
    "test_autoscaling.py",
    "test_jobs_cluster.py",
    "test_readme_search.py",
    "test_resume_auto.py",
    "test_chaos.py",
    "test_console_output.py",  # each command starts a fresh local Ray, as a user's does
}


# The slow files that take longest (seconds of test time on 2 cores, `--durations` of a full run,
# December 2026), run first among the slow files: the worker that finishes the own-cluster files
# then takes short ones, not a five-minute file, and the two workers end together.
HEAVIEST = {
    "test_tracking_outage.py": 1046,
    "test_storage_faults.py": 451,
    "test_search_report.py": 418,
    "test_tune.py": 396,
    "test_resilience.py": 377,
    "test_pipeline.py": 313,
    "test_gpu_check.py": 258,
    "test_data_engine_e2e.py": 242,
    "test_serve.py": 119,
}


def pytest_collection_modifyitems(config, items):
    """The own-cluster files first, then the other slow files (the heaviest first), then the rest
    (whole files, in order), so that under xdist the long units start first and short files fill
    in at the end."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}

    def rank(item) -> tuple[int, int]:
        if item.path.name in OWN_CLUSTERS:
            return (0, 0)
        return (1, -HEAVIEST.get(item.path.name, 0)) if item.path in slow_files else (2, 0)

    items.sort(key=rank)  # stable: each file's tests stay together and in their order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Whole files to each xdist worker (as --dist loadfile), the own-cluster files as one unit.
    (pytest-xdist's own --dist loadgroup does not group under pytest 9.2: it renames items by a
    field that pytest no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class FilesOwnClustersTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return "own-clusters" if os.path.basename(path) in OWN_CLUSTERS else path

    return FilesOwnClustersTogether(config, log)


@pytest.fixture
def small_taxonomy() -> Taxonomy:
    """4 cities, 3 states, 2 countries, 2 continents (ids follow sorted names)."""
    rows = [
        {"city": "Lyon", "state": "Rhone", "country": "France", "continent": "Europe"},
        {"city": "Paris", "state": "IDF", "country": "France", "continent": "Europe"},
        {"city": "Versailles", "state": "IDF", "country": "France", "continent": "Europe"},
        {"city": "Austin", "state": "Texas", "country": "USA", "continent": "America"},
    ]
    return Taxonomy.from_rows(rows)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray for the whole session (starting one costs seconds), in its own temp dir
    so a stale cluster elsewhere on the machine is never joined."""
    from tmpdirs import short_tmpdir

    from cg_ray.ray_env import init_ray, shutdown_ray

    if not os.environ.get("RAY_TMPDIR"):  # made only when needed
        os.environ["RAY_TMPDIR"] = short_tmpdir("cgr-")
    os.environ.pop("RAY_ADDRESS", None)
    init_ray(min_cpus=4)
    yield
    shutdown_ray()


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A prepared synthetic world with scene labels and (random open_clip) text features."""
    from cg_ray.demo import synthetic_dataset

    root = tmp_path_factory.mktemp("world")
    return synthetic_dataset(str(root), cities=6, clips_per_city=10, frames=10, size=(32, 32), seed=1)


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (moto) on 127.0.0.1 at $AWS_ENDPOINT_URL; yields a function
    that creates a fresh bucket and returns its s3:// URI."""
    import itertools
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    counter = itertools.count()

    def bucket(name: str = "cg-ray-test") -> str:
        full = f"{name}-{next(counter)}"
        client.create_bucket(Bucket=full)
        return f"s3://{full}"

    yield bucket
    server.stop()
