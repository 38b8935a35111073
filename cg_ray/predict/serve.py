"""The online endpoint: `cg-ray serve` as a Ray Serve application of one deployment, Endpoint
(predict/endpoint.py). Each replica holds the checkpoint (CPU or GPU) and is its own HTTP
ingress: token guard, body limits, request parsing (predict/http.py), clip decoding in a pool
of threads, and a Batcher (predict/batching.py) that gathers the decoded clips of concurrent
requests into one forward pass of up to --max-batch clips, waiting only for requests that are
still being received or decoded (at most --batch-wait-ms).

In front of the replicas, on a local Ray, sits HAProxy when it is installed (Ray Serve's HAProxy
ingress: each replica runs an HTTP server of its own and HAProxy forwards requests to them);
otherwise Serve's Python proxy, which relays every request to a replica over Ray calls and
costs about as much CPU as the replica's own work on a small model (--ingress).

POST /predict   a clip -> the `cg-ray predict --json` object + mode + latency_ms
GET  /          the page to try a video (page.html); GET /map.json: land and city points
GET  /healthz   liveness; GET /info: model, taxonomy sizes, config digest, batch sizes

serve_forever(options)    start Ray and Serve, deploy, block until Ctrl-C or SIGTERM
app_builder(args)         the same application for a Serve config file (KubeRay RayService)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass, field

from ray import serve

from cg_ray.errors import UserError

APP_NAME = "cg_ray"
DEPLOYMENT = "Endpoint"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "CG_RAY_SERVE_TOKEN"
INGRESSES = ("auto", "haproxy", "serve")
INGRESS_NAMES = {
    "haproxy": "HAProxy",
    "serve": "Serve's proxy",
    "cluster": "the cluster's",
}


@dataclass
class ServeOptions:
    checkpoint: str
    """A checkpoint folder or URI, or models:/NAME/VERSION."""
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    """Replicas (fixed), unless `autoscale` is set; each decodes and predicts."""
    autoscale: tuple[int, int] | None = None
    """(min, max) replicas, scaled by Serve on ongoing requests."""
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    """CPUs a replica holds; it decodes in as many threads (at least 2)."""
    max_batch: int = 8
    """Most clips in one forward pass (1: no batching)."""
    batch_wait_ms: float = 50.0
    """Longest a decoded clip waits for requests still being received or decoded to join its
    batch; a clip waits for none when no other request is on its way."""
    mode: str = "codependent"
    top_k: int = 5
    max_upload_mb: float = 200.0
    min_frames: int = 1
    token: str | None = field(default=None, repr=False)
    allow_local_paths: bool = False
    tracking_uri: str | None = None
    metrics_port: int | None = None
    ingress: str = "auto"
    """What receives HTTP in front of the replicas on a local Ray: `haproxy` (HAProxy forwards
    each request to a replica's own HTTP server), `serve` (Serve's Python proxy relays it over
    Ray calls), `auto`: haproxy when the `haproxy` binary is on PATH. On a cluster
    ($RAY_ADDRESS) the cluster's Serve setting decides."""


def parse_autoscale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    if not (sep and low.isdigit() and high.isdigit()) or not 0 <= int(low) <= int(high) or int(high) < 1:
        raise UserError(
            f"--autoscale '{text}' must look like MIN:MAX with 0 <= MIN <= MAX, MAX >= 1, e.g. 1:4"
        )
    return int(low), int(high)


def check_options(options: ServeOptions) -> None:
    from cg_ray.evaluation import MODES

    checks = [
        (options.max_batch >= 1, f"--max-batch must be at least 1, got {options.max_batch}"),
        (options.batch_wait_ms >= 0, f"--batch-wait-ms must be 0 or more, got {options.batch_wait_ms:g}"),
        (options.top_k >= 1, f"--top-k must be at least 1, got {options.top_k}"),
        (options.replicas >= 1, f"--replicas must be at least 1, got {options.replicas}"),
        (options.gpus_per_replica >= 0, "--gpus-per-replica must be 0 or more"),
        (options.max_upload_mb > 0, "--max-upload-mb must be more than 0"),
        (options.min_frames >= 1, "--min-frames must be at least 1"),
        (options.mode in MODES, f"unknown mode '{options.mode}' (known: {', '.join(MODES)})"),
        (0 < options.port < 65536, f"--port {options.port} is not a TCP port"),
        (options.ingress in INGRESSES, f"unknown --ingress '{options.ingress}' ({', '.join(INGRESSES)})"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


# -- what the endpoint tells about its model ------------------------------------------------------


def describe_checkpoint(reference: str, tracking_uri: str | None = None) -> tuple[str, dict]:
    """(a local checkpoint folder, the /info facts: model, taxonomy sizes, config digest, ...).
    Reads the checkpoint once on the driver, so a bad reference fails before Ray starts."""
    from cg_ray.config import config_from_dict
    from cg_ray.data.sampling import eval_sampling
    from cg_ray.predict.registry import resolve_checkpoint
    from cg_ray.taxonomy import LEVELS, Taxonomy
    from cg_ray.train.checkpoint import read_checkpoint

    path = resolve_checkpoint(reference, tracking_uri)
    state = read_checkpoint(path)
    config = state["config"]
    sampling = eval_sampling(config_from_dict(config))  # as `cg-ray predict` decodes
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]
    labels = Taxonomy.from_dict(state["taxonomy"]).labels
    backbone = config["model"]["backbone"]
    return path, {
        "checkpoint": reference,
        "model": {
            "backbone": backbone["name"],
            "pretrained": backbone.get("pretrained"),
            "hidden_size": backbone.get("hidden_size"),
            "layers": backbone.get("num_layers"),
            "epoch": state["epoch"],
            "run_name": config.get("run", {}).get("name"),
        },
        "taxonomy": {level: len(labels[level]) for level in LEVELS},
        "config_digest": f"sha256:{digest}",
        "num_frames": config["data"]["num_frames"],
        "image_size": config["data"]["image_size"],
        "sampling": {"name": sampling.name, "views": sampling.views},
        "cities": list(labels["city"]),
    }


# -- building and running the application ---------------------------------------------------------


def decode_threads(options: ServeOptions) -> int:
    """Decode threads of a replica: one per CPU it holds, and at least 2, so that one clip's
    upload or file reads overlap another's decoding."""
    return max(2, math.ceil(options.cpus_per_replica))


def build_app(options: ServeOptions, replica_checkpoint: str, info: dict):
    """The Serve application: one deployment (predict/endpoint.py), ingress and model in each
    replica, with the options' resources."""
    from cg_ray.predict.endpoint import Endpoint

    deployment_options: dict = {
        # Room for a full batch being decoded while the one before runs, plus /info, /healthz.
        "max_ongoing_requests": max(2 * options.max_batch, 8),
        "ray_actor_options": {"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
    }
    if options.autoscale:
        low, high = options.autoscale
        deployment_options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": options.max_batch,
        }
    else:
        deployment_options["num_replicas"] = options.replicas
    settings = {
        "info": info,
        "mode": options.mode,
        "top_k": options.top_k,
        "max_batch": options.max_batch,
        "batch_wait_ms": options.batch_wait_ms,
        "decode_threads": decode_threads(options),
        "max_upload_mb": options.max_upload_mb,
        "min_frames": options.min_frames,
        "allow_local_paths": options.allow_local_paths,
        "token": options.token,
        "tracking_uri": options.tracking_uri,
    }
    endpoint = serve.deployment(Endpoint, name=DEPLOYMENT).options(**deployment_options)
    return endpoint.bind(replica_checkpoint, settings)


def app_builder(args: dict):
    """For a Serve config (`import_path: cg_ray.predict.serve:app_builder`, `args:` the
    ServeOptions fields): the token comes from $CG_RAY_SERVE_TOKEN, never from the config."""
    local_only = {"token", "host", "port", "metrics_port", "ingress"}
    known = {f for f in ServeOptions.__dataclass_fields__} - local_only
    unknown = set(args) - known
    if unknown:
        raise UserError(f"unknown serve args {sorted(unknown)} (known: {sorted(known)})")
    values = dict(args)
    if values.get("autoscale"):
        values["autoscale"] = parse_autoscale(str(values["autoscale"]))
    options = ServeOptions(**values, token=os.environ.get(TOKEN_ENV) or None)
    check_options(options)
    _, info = describe_checkpoint(options.checkpoint, options.tracking_uri)
    # On a cluster every replica fetches the checkpoint itself (registry or object store).
    return build_app(options, options.checkpoint, {**info, "ingress": "cluster"})


# -- the ingress ----------------------------------------------------------------------------------


def choose_ingress(options: ServeOptions, remote: bool) -> str:
    """'haproxy' or 'serve' for a local Ray, 'cluster' on $RAY_ADDRESS's (whose own processes
    were started with, or without, Serve's HAProxy setting)."""
    if remote:
        if options.ingress == "haproxy":
            raise UserError(
                "--ingress haproxy is for a Ray that cg-ray serve starts; on a cluster, set "
                "RAY_SERVE_ENABLE_HA_PROXY=1 in every node's environment (with haproxy in the image)"
            )
        return "cluster"
    found = shutil.which("haproxy")
    if options.ingress == "haproxy" and not found:
        raise UserError(
            "--ingress haproxy: no haproxy on PATH: install it (Debian, Ubuntu: apt-get install "
            "haproxy) or use --ingress serve"
        )
    return "haproxy" if found and options.ingress != "serve" else "serve"


def haproxy_environment(workdir: str) -> dict[str, str]:
    """The variables that turn Ray Serve's HAProxy ingress on for a Ray started from this process
    (every Ray process reads them when it starts). Ray's defaults put HAProxy's files in
    /tmp/haproxy-serve and its stats page, its metrics and Serve's fallback proxy on fixed ports,
    where a second `cg-ray serve` on the machine would collide: here they go under `workdir`
    and on free ports."""
    from cg_ray.ray_env import free_port

    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": shutil.which("haproxy") or "",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": os.path.join(workdir, "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": os.path.join(workdir, "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": workdir,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": os.path.join(workdir, "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": os.path.join(workdir, "metrics.sock"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UserError(f"--host '{host}' does not resolve: {exc}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            raise UserError(f"port {port} on {host} is in use: pick another with --port") from None


def serve_forever(options: ServeOptions, out=sys.stdout) -> None:
    """Deploy the application on a local Ray (or $RAY_ADDRESS's cluster) and block until Ctrl-C
    or SIGTERM; then delete it and stop Serve (and the local Ray)."""
    check_options(options)
    if options.host not in LOOPBACK and not options.token:
        print(
            f"cg-ray serve: warning: listening on {options.host}:{options.port} with no "
            f"authentication: anyone who reaches this address can use the model; set --token "
            f"or ${TOKEN_ENV}",
            file=sys.stderr,
        )
    remote = bool(os.environ.get("RAY_ADDRESS"))
    ingress = choose_ingress(options, remote)
    if not remote:
        _check_port_free(options.host, options.port)
    local_path, info = describe_checkpoint(options.checkpoint, options.tracking_uri)

    # HAProxy's sockets live here: a short path (a unix socket's is at most 107 bytes), and
    # Ray adds the node's id (56 characters) to it.
    workdir = tempfile.mkdtemp(prefix="cgr-haproxy-", dir="/tmp") if ingress == "haproxy" else None
    if ingress == "serve" and options.ingress == "auto":
        print(
            "cg-ray serve: note: no haproxy on PATH, so Serve's Python proxy receives the requests, "
            "at about half the clips/s under load (Debian, Ubuntu: apt-get install haproxy)",
            file=sys.stderr,
        )
    added = haproxy_environment(workdir) if workdir else {}
    os.environ.update(added)
    try:
        _serve(options, ingress, local_path if not remote else options.checkpoint, info, remote, out)
    finally:
        for key in added:
            os.environ.pop(key, None)
        if workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    print("cg-ray serve: stopped", file=out, flush=True)


def _serve(options: ServeOptions, ingress: str, checkpoint: str, info: dict, remote: bool, out) -> None:
    import ray

    from cg_ray.ray_env import init_ray, shutdown_ray

    replicas = options.autoscale[1] if options.autoscale else options.replicas
    init_ray(min_cpus=replicas * options.cpus_per_replica + 1, metrics_port=options.metrics_port)
    stop = threading.Event()
    # Ctrl-C and SIGTERM (`ray job stop`, Kubernetes) both end the loop below; set here, since a
    # process started in the background may have been told to ignore SIGINT.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(
            http_options={"host": options.host, "port": options.port}, logging_config={"log_level": "WARNING"}
        )
        app = build_app(options, checkpoint, {**info, "ingress": ingress})
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        node = ray._private.worker.global_worker.node
        host = "127.0.0.1" if options.host in ("0.0.0.0", "::") else options.host
        scale = (
            f"autoscale {options.autoscale[0]}:{options.autoscale[1]}"
            if options.autoscale
            else f"{replicas} replica(s)"
        )
        print(
            f"cg-ray serve: http://{host}:{options.port}/ ready: {info['checkpoint']} "
            f"({info['model']['backbone']}, {info['taxonomy']['city']} cities), {scale}"
            f", max batch {options.max_batch}, ingress {INGRESS_NAMES[ingress]}; Prometheus metrics: "
            f"http://{node.node_ip_address}:{node.metrics_export_port}/metrics; Ctrl-C stops",
            file=out,
            flush=True,
        )
        while not stop.wait(1):
            pass
        print("cg-ray serve: stopping", file=out, flush=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        try:
            serve.delete(APP_NAME)
            if not remote:
                serve.shutdown()
        finally:
            shutdown_ray()


def options_dict(options: ServeOptions) -> dict:
    """The options without the token (for logs and reports)."""
    return {k: v for k, v in asdict(options).items() if k != "token"}
