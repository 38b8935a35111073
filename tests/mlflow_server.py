"""A real `mlflow server` that tests stop and start again, and a way to end a command and every
process it started (a local Ray included), by pid."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(predicate, timeout, what, every=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


class Server:
    """`mlflow server` on 127.0.0.1:port over folder's store; start() again: the same port and store."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True)
        self.folder, self.port, self.proc = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", f"sqlite:///{self.folder}/server.db"]
        command += ["--default-artifact-root", f"{self.folder}/artifacts", "--workers", "1"]
        self.proc = subprocess.Popen(
            command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(self.healthy, 240, f"mlflow server on port {self.port}")

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.uri}/health", timeout=1).status == 200
        except OSError:
            return False

    def stop(self) -> None:
        """Gone at once, as a crashed or rescheduled server is (its gunicorn/uvicorn workers too)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def kill_family(proc: subprocess.Popen) -> None:
    """A command started with start_new_session=True, and every process it started that is still
    there (those that left its process group too), killed by pid."""
    if proc.poll() is not None:
        return
    family = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
    os.killpg(proc.pid, signal.SIGKILL)
    for pid in family:
        if psutil.pid_exists(pid):
            psutil.Process(pid).kill()
    proc.wait()
