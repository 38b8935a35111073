"""The online endpoint: `cg-ray serve` as a Ray Serve application of two deployments.

Gateway   the HTTP ingress: token guard, body limits, request parsing (predict/http.py) and
          clip decoding in threads, so decoding runs beside the model, never in its replica
Model     one loaded checkpoint per replica (CPU or GPU); @serve.batch gathers the decoded
          clips of concurrent requests into one forward pass of up to --max-batch clips

POST /predict   a clip -> the `cg-ray predict --json` object + mode + latency_ms
GET  /          the page to try a video (page.html); GET /map.json: land and city points
GET  /healthz   liveness; GET /info: model, taxonomy sizes, config digest, batch sizes

serve_forever(options)    start Ray and Serve, deploy, block until Ctrl-C or SIGTERM
app_builder(args)         the same application for a Serve config file (KubeRay RayService)
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import resources

from ray import serve

from cg_ray.errors import UserError

log = logging.getLogger("cg_ray.serve")
APP_NAME = "cg_ray"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
TOKEN_ENV = "CG_RAY_SERVE_TOKEN"


@dataclass
class ServeOptions:
    checkpoint: str
    """A checkpoint folder or URI, or models:/NAME/VERSION."""
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    """Model replicas (fixed), unless `autoscale` is set."""
    autoscale: tuple[int, int] | None = None
    """(min, max) model replicas, scaled by Serve on ongoing requests."""
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    max_batch: int = 8
    batch_wait_ms: float = 10.0
    mode: str = "codependent"
    top_k: int = 5
    max_upload_mb: float = 200.0
    min_frames: int = 1
    token: str | None = field(default=None, repr=False)
    allow_local_paths: bool = False
    tracking_uri: str | None = None
    metrics_port: int | None = None


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
        (options.top_k >= 1, f"--top-k must be at least 1, got {options.top_k}"),
        (options.replicas >= 1, f"--replicas must be at least 1, got {options.replicas}"),
        (options.gpus_per_replica >= 0, "--gpus-per-replica must be 0 or more"),
        (options.max_upload_mb > 0, "--max-upload-mb must be more than 0"),
        (options.min_frames >= 1, "--min-frames must be at least 1"),
        (options.mode in MODES, f"unknown mode '{options.mode}' (known: {', '.join(MODES)})"),
        (0 < options.port < 65536, f"--port {options.port} is not a TCP port"),
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


def map_data(cities: list[str]) -> dict:
    """The page's world map: land as runs of cells per row of the shipped land mask, and the
    coordinates of the model's cities (those the shipped tables know)."""
    import numpy as np

    from cg_ray.geo import CityCoordinates, load_land_mask

    land, step = load_land_mask()
    runs = []
    for row in range(land.shape[0]):
        padded = np.concatenate([[False], land[row], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        runs.extend([row, int(a), int(b - a)] for a, b in zip(edges[::2], edges[1::2]))
    coordinates = CityCoordinates.load()
    known = {city: coordinates.get(city) for city in cities}
    return {
        "step": step,
        "rows": int(land.shape[0]),
        "cols": int(land.shape[1]),
        "land": runs,
        "cities": {c: [round(ll[0], 4), round(ll[1], 4)] for c, ll in known.items() if ll},
    }


def page_html() -> str:
    return resources.files("cg_ray.predict").joinpath("page.html").read_text("utf-8")


# -- the deployments ------------------------------------------------------------------------------


class Model:
    """One replica: the checkpoint on its device, answering batches of decoded clips."""

    def __init__(
        self,
        checkpoint: str,
        tracking_uri: str | None,
        mode: str,
        top_k: int,
        max_batch: int,
        batch_wait_s: float,
    ):
        import torch

        from cg_ray.predict.predictor import Predictor, open_checkpoint

        loaded, _ = open_checkpoint(checkpoint, tracking_uri)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = Predictor(loaded, mode, top_k, self.device)
        self.predict.set_max_batch_size(max_batch)
        self.predict.set_batch_wait_timeout_s(batch_wait_s)
        self.batch_sizes: collections.Counter[int] = collections.Counter()
        self.max_batch = max_batch

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)  # set from the options in __init__
    async def predict(self, clips: list) -> list[dict]:
        import numpy as np

        self.batch_sizes[len(clips)] += 1
        video = np.stack(clips)
        # The forward pass runs in a thread: the replica's event loop goes on queueing the next
        # batch meanwhile.
        return await asyncio.get_running_loop().run_in_executor(None, self.predictor.predict, video)

    def stats(self) -> dict:
        return {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "device": self.device,
            "max_batch": self.max_batch,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
        }


class Gateway:
    """The HTTP ingress. Routes by path; every refusal is a JSON {"error": message} with a 4xx."""

    def __init__(self, model, settings: dict):
        self.model = model
        self.settings = settings
        self.limit = int(settings["max_upload_mb"] * 2**20)
        self.page = page_html()
        self._map: bytes | None = None

    async def __call__(self, request):
        from starlette.responses import HTMLResponse, JSONResponse, Response

        from cg_ray.predict.http import RequestError, check_token

        path, method = request.url.path.rstrip("/") or "/", request.method
        try:
            if path == "/healthz" and method in ("GET", "HEAD"):
                return JSONResponse({"status": "ok"})
            if path == "/" and method in ("GET", "HEAD"):
                return HTMLResponse(self.page)
            if path == "/map.json" and method == "GET":
                if self._map is None:
                    self._map = json.dumps(map_data(self.settings["info"]["cities"])).encode()
                return Response(self._map, media_type="application/json")
            routes = {"/predict": "POST", "/info": "GET"}
            if path not in routes:
                raise RequestError(
                    404,
                    f"no such route {method} {path}: POST /predict, GET /info, "
                    f"GET /healthz, GET / (the page)",
                )
            if method != routes[path]:
                raise RequestError(405, f"{path} takes {routes[path]}, not {method}")
            check_token(request.headers.get("authorization"), self.settings.get("token"))
            if path == "/info":
                return JSONResponse(await self.info())
            try:
                return JSONResponse(await self.predict(request))
            except RequestError as exc:
                if exc.status == 413:
                    await self._drain(request)
                raise
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception as exc:  # a bug or a failed replica: one line for the client, all in the log
            log.exception("request %s %s failed", method, path)
            return JSONResponse(
                {
                    "error": f"internal error: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                },
                status_code=500,
            )

    async def info(self) -> dict:
        info = {k: v for k, v in self.settings["info"].items() if k != "cities"}
        stats = await self.model.stats.remote()
        return {
            **info,
            "mode": self.settings["mode"],
            "top_k": self.settings["top_k"],
            "max_batch": self.settings["max_batch"],
            "max_upload_mb": self.settings["max_upload_mb"],
            "auth": bool(self.settings.get("token")),
            "replica": stats,
            "batch_sizes": stats["batch_sizes"],
        }

    async def predict(self, request) -> dict:
        from cg_ray.predict.http import check_length, uri_upload

        start = time.perf_counter()
        check_length(request.headers.get("content-length"), self.limit)
        content_type = request.headers.get("content-type", "")
        workdir = None
        try:
            if content_type.split(";")[0].strip().lower() == "application/json":
                body = await self._read_small(request)
                upload = uri_upload(body, self.settings["allow_local_paths"])
            else:
                workdir = tempfile.mkdtemp(prefix="cg_ray-serve-")
                upload = await self._receive(request, content_type, workdir)
            clip = await asyncio.to_thread(self._decode, upload, workdir)
            row = await self.model.predict.remote(clip)
        finally:
            if workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        return {
            "input": upload.name,
            **row,
            "mode": self.settings["mode"],
            "latency_ms": round(1000 * (time.perf_counter() - start), 2),
        }

    def _decode(self, upload, workdir):
        from cg_ray.data.decode import decode_clip
        from cg_ray.data.sampling import Sampling
        from cg_ray.predict.http import RequestError, public_message

        info = self.settings["info"]
        sampling = Sampling(info["sampling"]["name"], info["num_frames"], info["sampling"]["views"])
        try:
            return decode_clip(
                upload.source,
                info["num_frames"],
                info["image_size"],
                min_frames=self.settings["min_frames"],
                sampling=sampling,
            )
        except UserError as exc:  # ClipError, and storage errors (unknown scheme, no such object)
            message = public_message(str(exc), upload, workdir)
            status = 404 if "does not exist" in message else 422
            raise RequestError(status, message) from None

    async def _drain(self, request) -> None:
        """Read (and drop) what is left of a refused body, up to the limit once more: a client
        still sending when the answer comes would see a broken pipe instead of the 413."""
        left = request.headers.get("content-length", "")
        if left.isdigit() and int(left) > 2 * self.limit:
            return
        seen = 0
        while seen <= self.limit:
            message = await request.receive()
            if message["type"] != "http.request":
                return
            seen += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    async def _read_small(self, request) -> bytes:
        from cg_ray.predict.http import capped

        return b"".join([chunk async for chunk in capped(request.stream(), min(self.limit, 1 << 20))])

    async def _receive(self, request, content_type: str, workdir: str):
        """The request's clip, written under `workdir`: a multipart field or the raw body."""
        from cg_ray.predict.http import HOW, RequestError, capped, materialize, safe_name

        stream = capped(request.stream(), self.limit)
        if content_type.lower().startswith("multipart/form-data"):
            from starlette.formparsers import MultiPartException, MultiPartParser

            try:
                form = await MultiPartParser(request.headers, stream, max_files=4, max_fields=16).parse()
            except MultiPartException as exc:
                raise RequestError(400, f"the multipart body does not parse ({exc}): {HOW}") from None
            try:
                video = form.get("video")
                if video is None or isinstance(video, str):
                    names = ", ".join(f"'{k}'" for k in form.keys()) or "none"
                    raise RequestError(400, f"the form has no file field 'video' (fields: {names}): {HOW}")
                name = safe_name(video.filename, "video")
                path = os.path.join(workdir, name)
                with open(path, "wb") as out:
                    while chunk := await video.read(1 << 20):
                        out.write(chunk)
                kind = video.content_type or ""
            finally:
                await form.close()
        else:
            name = safe_name(request.headers.get("x-filename") or request.query_params.get("name"), "upload")
            path = os.path.join(workdir, name)
            with open(path, "wb") as out:
                async for chunk in stream:
                    out.write(chunk)
            kind = content_type
        with open(path, "rb") as f:
            head = f.read(1024)
        return materialize(path, head, kind, name, workdir, self.limit)


# -- building and running the application ---------------------------------------------------------


def build_app(options: ServeOptions, replica_checkpoint: str, info: dict):
    """The Serve application: Gateway (ingress) -> Model, with the options' resources."""
    model_options: dict = {
        # Batching needs room for a batch of requests in flight on each replica.
        "max_ongoing_requests": max(2 * options.max_batch, 4),
        "ray_actor_options": {"num_cpus": options.cpus_per_replica, "num_gpus": options.gpus_per_replica},
    }
    gateway_options: dict = {
        "max_ongoing_requests": max(8 * options.max_batch, 32),
        "ray_actor_options": {"num_cpus": 1},
    }
    if options.autoscale:
        low, high = options.autoscale
        model_options["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": options.max_batch,
        }
        gateway_options["autoscaling_config"] = {
            "min_replicas": max(1, low),
            "max_replicas": high,
            "target_ongoing_requests": 4 * options.max_batch,
        }
    else:
        model_options["num_replicas"] = options.replicas
        gateway_options["num_replicas"] = options.replicas
    model = serve.deployment(Model, name="Model").options(**model_options)
    gateway = serve.deployment(Gateway, name="Gateway").options(**gateway_options)
    settings = {
        "info": info,
        "mode": options.mode,
        "top_k": options.top_k,
        "max_batch": options.max_batch,
        "max_upload_mb": options.max_upload_mb,
        "min_frames": options.min_frames,
        "allow_local_paths": options.allow_local_paths,
        "token": options.token,
    }
    return gateway.bind(
        model.bind(
            replica_checkpoint,
            options.tracking_uri,
            options.mode,
            options.top_k,
            options.max_batch,
            options.batch_wait_ms / 1000,
        ),
        settings,
    )


def app_builder(args: dict):
    """For a Serve config (`import_path: cg_ray.predict.serve:app_builder`, `args:` the
    ServeOptions fields): the token comes from $CG_RAY_SERVE_TOKEN, never from the config."""
    known = {f for f in ServeOptions.__dataclass_fields__} - {"token", "host", "port", "metrics_port"}
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
    return build_app(options, options.checkpoint, info)


def _check_port_free(host: str, port: int) -> None:
    import socket

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
    if not remote:
        _check_port_free(options.host, options.port)
    local_path, info = describe_checkpoint(options.checkpoint, options.tracking_uri)

    import ray

    from cg_ray.ray_env import init_ray, shutdown_ray

    replicas = options.autoscale[1] if options.autoscale else options.replicas
    init_ray(min_cpus=replicas * (1 + options.cpus_per_replica), metrics_port=options.metrics_port)
    stop = threading.Event()
    # Ctrl-C and SIGTERM (`ray job stop`, Kubernetes) both end the loop below; set here, since a
    # process started in the background may have been told to ignore SIGINT.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        serve.start(
            http_options={"host": options.host, "port": options.port}, logging_config={"log_level": "WARNING"}
        )
        app = build_app(options, options.checkpoint if remote else local_path, info)
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
            f", max batch {options.max_batch}; Prometheus metrics: "
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
    print("cg-ray serve: stopped", file=out, flush=True)


def options_dict(options: ServeOptions) -> dict:
    """The options without the token (for logs and reports)."""
    return {k: v for k, v in asdict(options).items() if k != "token"}
