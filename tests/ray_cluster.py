"""A real two-node Ray cluster on this machine for tests: `ray start --block` processes (a head and
a worker node), each with its own resources, temp dir and ports; the dashboard and job server on
127.0.0.1 (Ray advertises the machine's address for the nodes themselves, whatever
--node-ip-address says); token authentication on, with a token of the test's own (not
~/.ray/auth_token). Stopped by the pids this module started, never
with `ray stop`, which would stop every Ray on the machine.

Tests poll the cluster (nodes, a job's status and logs) through the dashboard's REST API from
the test's own process, with the token as `ray` sends it: a `ray` CLI call is a new Python
process of over a CPU-second, and a loop of them took a whole core of two from the cluster
under test."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

from tmpdirs import short_tmpdir

BIN = os.path.dirname(sys.executable)  # the venv's bin: ray, python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ports() -> list[str]:
    names = (
        "node-manager-port",
        "object-manager-port",
        "dashboard-agent-listen-port",
        "dashboard-agent-grpc-port",
        "runtime-env-agent-port",
        "metrics-export-port",
    )
    return [f"--{name}={free_port()}" for name in names]


class LocalCluster:
    """`with LocalCluster(head_cpus=3, worker_cpus=3) as c:` c.gcs, c.dashboard, c.env."""

    def __init__(self, head_cpus: int, worker_cpus: int, root: str | None = None):
        self.root = root or short_tmpdir("r7c-")
        token_path = os.path.join(self.root, "auth_token")
        self.token = secrets.token_hex(32)
        with open(token_path, "w") as f:
            f.write(self.token)
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=token_path,
            PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
            RAY_USAGE_STATS_ENABLED="0",
        )
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_GCS_SERVER_PORT"):
            self.env.pop(key, None)
        self.head_cpus, self.worker_cpus = head_cpus, worker_cpus
        self.gcs = f"127.0.0.1:{free_port()}"
        self.dashboard = f"http://127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, args: list[str], name: str, tmpdir: str) -> None:
        os.makedirs(tmpdir, exist_ok=True)
        log = open(os.path.join(self.root, f"{name}.log"), "w")
        env = dict(self.env, RAY_TMPDIR=tmpdir)
        self.procs.append(
            subprocess.Popen(
                # Each node its own --temp-dir: a joining node otherwise takes the head's, and the
                # two runtime-env agents unpack the job's working_dir into the same folder at once
                # (a driver then fails to import a module that is being re-extracted under it).
                [os.path.join(BIN, "ray"), "start", "--block", *_ports(), f"--temp-dir={tmpdir}", *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def __enter__(self) -> LocalCluster:
        self._started()
        return self

    def _started(self) -> None:
        """Start the nodes; once more, on fresh ports, when a `ray start` exits on the way: a
        port found free may be taken before Ray binds it (every Ray worker on the machine binds
        ports of its own). A node that fails to start raises here, where `with` calls no
        __exit__: what did start is stopped (a head left behind loads the machine for the rest
        of the suite)."""
        for attempt in (1, 2):
            try:
                self._start_nodes()
                return
            except NodeExited as exc:
                stop(self.procs, self.root)
                self.procs = []
                if attempt == 2:
                    raise
                print(f"ray_cluster: starting again on fresh ports: {exc}", file=sys.stderr)
                self.gcs, self.dashboard = f"127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
                self._ports_changed()
            except BaseException:
                stop(self.procs, self.root)
                raise

    def _ports_changed(self) -> None:
        """For subclasses whose files name the GCS address."""

    def _start_nodes(self) -> None:
        port = self.gcs.rsplit(":", 1)[1]
        dash_port = self.dashboard.rsplit(":", 1)[1]
        self._start(
            [
                "--head",
                f"--port={port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dash_port}",
                f"--ray-client-server-port={free_port()}",
                f"--num-cpus={self.head_cpus}",
                "--resources",
                json.dumps({"head": 1}),
            ],
            "head",
            os.path.join(self.root, "head"),
        )
        self.wait_nodes(1)
        self._start(
            [
                f"--address={self.gcs}",
                f"--num-cpus={self.worker_cpus}",
                "--resources",
                json.dumps({"second": 1}),
            ],
            "worker",
            os.path.join(self.root, "worker"),
        )
        self.wait_nodes(2)

    def ray(self, *args: str, timeout: float = 120, cwd: str | None = None) -> subprocess.CompletedProcess:
        """A `ray` CLI call against this cluster (its token, its address)."""
        return subprocess.run(
            [os.path.join(BIN, "ray"), *args],
            env=self.env,
            text=True,
            capture_output=True,
            timeout=timeout,
            cwd=cwd,
        )

    def api(self, path: str, params: dict | None = None):
        """GET the dashboard's REST API (what the `ray` CLI asks, in this process); its JSON."""
        url = self.dashboard + path + (f"?{urllib.parse.urlencode(params, doseq=True)}" if params else "")
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        """The alive nodes as `ray list nodes --filter state=ALIVE` lists them ([] before the
        dashboard answers)."""
        query = {"filter_keys": "state", "filter_predicates": "=", "filter_values": "ALIVE", "limit": 1000}
        try:
            return self.api("/api/v0/nodes", query)["data"]["result"]["result"]
        except (OSError, KeyError, ValueError):  # not up yet (URLError is an OSError)
            return []

    def job_status(self, job_id: str) -> str:
        """PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED; UNKNOWN while the server does not know
        the job (yet) or does not answer."""
        try:
            return self.api(f"/api/jobs/{job_id}")["status"]
        except (OSError, KeyError, ValueError):
            return "UNKNOWN"

    def wait_job(self, job_id: str, timeout: float = 400) -> str:
        """The job's end status, or TIMEOUT."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.job_status(job_id)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(2)
        return "TIMEOUT"

    def job_logs(self, job_id: str) -> str:
        return self.api(f"/api/jobs/{job_id}/logs")["logs"]

    def wait_nodes(self, count: int, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise NodeExited(f"a ray start process exited:\n{self._log_tails()}")
            if len(self.alive_nodes()) >= count:
                return
            time.sleep(2)
        raise TimeoutError(f"{count} Ray nodes not up in {timeout} s:\n{self._log_tails()}")

    def _log_tails(self, lines: int = 15) -> str:
        """The last lines of each `ray start` log (the folder is removed with the cluster)."""
        tails = []
        for name in sorted(os.listdir(self.root)):
            if name.endswith(".log"):
                with open(os.path.join(self.root, name), errors="replace") as f:
                    tails.append(f"--- {name}\n" + "".join(f.readlines()[-lines:]))
        return "\n".join(tails)

    def __exit__(self, *exc) -> None:
        stop(self.procs, self.root)


class NodeExited(RuntimeError):
    """A `ray start` process of the cluster exited while its nodes were starting."""


def stop(procs: list[subprocess.Popen], root: str, grace: float = 3) -> None:
    """Stop `ray start --block` processes and their nodes: SIGTERM, `grace` seconds (their own
    graceful stop takes over 10 s, for clusters thrown away), then SIGKILL to each process group
    and to every process whose command line names this cluster's folder (raylets, GCS,
    dashboards, the nodes an autoscaler launched)."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.time() + grace
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(deadline - time.time(), 0.1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    _kill_leftovers(root)


def submit(
    cluster: LocalCluster,
    job_id: str,
    command: list[str],
    cwd: str,
    env_vars: dict | None = None,
    runtime_env_file: str | None = None,
) -> None:
    """`ray job submit --no-wait` of a command: with `runtime_env_file` (as users submit, e.g.
    jobs/runtime_env.dev.yaml), else with a runtime_env of the quiet variables and `env_vars`."""
    if runtime_env_file:
        runtime_env = ["--runtime-env", runtime_env_file]
    else:
        quiet = {"CG_RAY_PROGRESS": "0", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
        runtime_env = ["--runtime-env-json", json.dumps({"env_vars": {**quiet, **(env_vars or {})}})]
    out = cluster.ray(
        "job",
        "submit",
        "--address",
        cluster.dashboard,
        "--no-wait",
        "--submission-id",
        job_id,
        *runtime_env,
        "--",
        *command,
        cwd=cwd,
    )
    assert out.returncode == 0, out.stderr


def _kill_leftovers(root: str) -> None:
    import psutil

    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(root in part for part in proc.info["cmdline"] or []):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
