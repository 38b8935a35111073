"""A real `cg-ray serve` for the serve tests: the command itself in a subprocess, on a tiny
checkpoint, on 127.0.0.1, with its own RAY_TMPDIR; stopped with SIGINT (Ctrl-C) at the end, when
the process that received HTTP on its port (HAProxy, or Serve's proxy) must be gone too."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

import psutil
from predict_helpers import CITIES, mp4_world, train_tiny_checkpoint
from tmpdirs import short_tmpdir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Answer:
    status: int
    body: dict


@dataclass
class Server:
    url: str
    token: str | None
    log_path: str
    metrics_url: str | None = None
    pid: int = 0
    """The command's process (Ray's below it)."""
    ingress: psutil.Process | None = None
    """The process listening on the server's port."""

    def request(
        self,
        path: str,
        data: bytes | None = None,
        headers: dict | None = None,
        token: str | None = "default",
        method: str | None = None,
        timeout: float = 120,
    ) -> Answer:
        """One HTTP request; the server's token unless `token` says otherwise (None: none)."""
        headers = dict(headers or {})
        token = self.token if token == "default" else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                raw, status = response.read(), response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"text": raw.decode("utf-8", "replace")}
        return Answer(status, body)

    def upload(self, path: str, field: str = "video", content_type: str = "video/mp4", **kwargs) -> Answer:
        """A multipart/form-data POST /predict with the file in `field`."""
        boundary = "cgray" + os.urandom(8).hex()
        with open(path, "rb") as f:
            content = f.read()
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
                f'filename="{os.path.basename(path)}"\r\nContent-Type: {content_type}\r\n\r\n'
            ).encode()
            + content
            + f"\r\n--{boundary}--\r\n".encode()
        )
        return self.request(
            "/predict", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}, **kwargs
        )

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def replica(self) -> dict:
        """The replica's own figures from /info: batch sizes, why batches closed, coming, queued."""
        answer = self.request("/info")
        assert answer.status == 200, answer.body
        return answer.body["replica"]

    @contextmanager
    def held(self, bodies: list[bytes], content_type: str = "video/mp4", timeout: float = 120):
        """POST /predict each body, all but its last bytes, and hold them until the replica
        counts every one as on its way (`coming` in /info); yields `release()`, which sends
        the rest of every body, in order, and returns the answers. So that many requests are in
        flight together however fast or slow the machine is."""
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        auth = f"Authorization: Bearer {self.token}\r\n" if self.token else ""
        socks = []
        try:
            for body in bodies:
                sock = socket.create_connection((host, int(port)), timeout=timeout)
                socks.append(sock)
                head = (
                    f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(body)}\r\n{auth}\r\n"
                )
                sock.sendall(head.encode() + body[:-16])
            deadline = time.monotonic() + timeout
            while (coming := self.replica()["coming"]) < len(bodies):
                assert time.monotonic() < deadline, f"{coming} of {len(bodies)} requests reached the replica"
                time.sleep(0.1)

            def release() -> list[Answer]:
                for sock, body in zip(socks, bodies):
                    sock.sendall(body[-16:])
                answers = []
                for sock in socks:
                    response = http.client.HTTPResponse(sock)
                    response.begin()
                    answers.append(Answer(response.status, json.loads(response.read())))
                return answers

            yield release
        finally:
            for sock in socks:
                sock.close()


def tiny_model(root: str) -> dict:
    """mp4 clips of the synthetic world, frame-folder clips of it, and a checkpoint trained on them."""
    from cg_ray.data.synthetic import make_world

    rows = mp4_world(os.path.join(root, "mp4"), clips_per_city=2)
    train_tiny_checkpoint(os.path.join(root, "ckpt"), rows, steps=8)
    make_world(os.path.join(root, "frames"), cities=CITIES, clips_per_city=1, frames=8, size=(32, 32), seed=5)
    return {"rows": rows, "ckpt": os.path.join(root, "ckpt"), "root": root}


@contextmanager
def running_server(ckpt: str, *args: str, token: str | None = None, timeout: float = 300):
    """`cg-ray serve --checkpoint CKPT ARGS` until it answers /healthz; SIGINT and a clean exit
    (status 0, "stopped" printed) at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "CG_RAY_SERVE_TOKEN")}
    env["RAY_TMPDIR"] = short_tmpdir("cgr-serve-")
    env["PYTHONUNBUFFERED"] = "1"
    log_path = os.path.join(env["RAY_TMPDIR"], "serve.log")
    command = [
        sys.executable,
        "-m",
        "cg_ray",
        "serve",
        "--checkpoint",
        ckpt,
        "--port",
        str(port),
        *args,
        *(["--token", token] if token else []),
    ]
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = Server(f"http://127.0.0.1:{port}", token, log_path, pid=process.pid)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise AssertionError(
                    f"cg-ray serve exited with {process.returncode}:\n{server.log()[-3000:]}"
                )
            try:
                # our own ready line (it names the metrics URL), not Ray Serve's "Application 'cg_ray' is
                # ready", which comes before it
                ready = re.search(r"cg-ray serve: \S+ ready", server.log())
                if ready and server.request("/healthz", timeout=5).status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"cg-ray serve did not come up:\n{server.log()[-3000:]}")
            time.sleep(1)
        server.ingress = listener(port)
        found = re.search(r"Prometheus metrics: (\S+)", server.log())
        server.metrics_url = found.group(1).rstrip(";") if found else None
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise AssertionError(
                    f"cg-ray serve did not stop on SIGINT:\n{server.log()[-3000:]}"
                ) from None
    assert process.returncode == 0, server.log()[-3000:]
    assert "cg-ray serve: stopped" in server.log()
    if server.ingress is not None:
        _, alive = psutil.wait_procs([server.ingress], timeout=30)
        assert not alive, f"{server.ingress.name()} (pid {server.ingress.pid}) outlived cg-ray serve"


def listener(port: int) -> psutil.Process | None:
    """The process that listens on TCP `port` (None if none does)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None
