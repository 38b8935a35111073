"""The Serve deployment behind `cg-ray serve`: one replica is the HTTP ingress and the model.

A request is received and parsed (predict/http.py) on the replica's event loop, its clip decoded
in the replica's pool of decode threads, concurrently with the other requests' and with the
model; only the forward pass is batched (predict/batching.py): one thread runs it on the clips
of all the requests that were decoded meanwhile, up to --max-batch. Decoding scales with the
replicas, and the batcher knows exactly which requests are still being received or decoded, so
it waits for them and for nothing else. (An ingress deployment in front of a model deployment
costs one more Ray call per clip, and the model's replica cannot see what is still decoding.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import shutil
import tempfile
import time

from cg_ray.errors import UserError

log = logging.getLogger("cg_ray.serve")


class Endpoint:
    """Routes by path; every refusal is a JSON {"error": message} with a 4xx."""

    def __init__(self, checkpoint: str, settings: dict):
        import numpy as np
        import torch

        from cg_ray.data.sampling import Sampling
        from cg_ray.predict.batching import Batcher
        from cg_ray.predict.page import page_html
        from cg_ray.predict.predictor import Predictor, open_checkpoint

        loaded, _ = open_checkpoint(checkpoint, settings["tracking_uri"])
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.predictor = Predictor(loaded, settings["mode"], settings["top_k"], self.device)
        self.settings = settings
        info = settings["info"]
        self.sampling = Sampling(info["sampling"]["name"], info["num_frames"], info["sampling"]["views"])
        self.limit = int(settings["max_upload_mb"] * 2**20)
        self.page = page_html()
        self._map: bytes | None = None
        self.decode_pool = concurrent.futures.ThreadPoolExecutor(
            settings["decode_threads"], thread_name_prefix="cg_ray-decode"
        )
        self.batcher = Batcher(
            lambda clips: self.predictor.predict(np.stack(clips)),
            settings["max_batch"],
            settings["batch_wait_ms"] / 1000,
            _batch_metrics(),
        )

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
                    from cg_ray.predict.page import map_data

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
                return JSONResponse(self.info())
            try:
                return JSONResponse(await self.predict(request))
            except RequestError as exc:
                if exc.status == 413:
                    await self._drain(request)
                raise
        except RequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        except Exception as exc:  # a bug or a failed model: one line for the client, all in the log
            log.exception("request %s %s failed", method, path)
            return JSONResponse(
                {
                    "error": f"internal error: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}"
                },
                status_code=500,
            )

    def info(self) -> dict:
        import torch
        from ray import serve

        info = {k: v for k, v in self.settings["info"].items() if k != "cities"}
        stats = {
            "replica": serve.get_replica_context().replica_id.unique_id,
            "device": self.device,
            "torch_threads": torch.get_num_threads(),
            "decode_threads": self.settings["decode_threads"],
            "batch_wait_ms": self.settings["batch_wait_ms"],
            **self.batcher.stats(),
        }
        return {
            **info,
            **{k: self.settings[k] for k in ("mode", "top_k", "max_batch", "max_upload_mb")},
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
        with self.batcher.expect() as ticket:
            try:
                if content_type.split(";")[0].strip().lower() == "application/json":
                    body = await self._read_small(request)
                    upload = uri_upload(body, self.settings["allow_local_paths"])
                else:
                    workdir = tempfile.mkdtemp(prefix="cg_ray-serve-")
                    upload = await self._receive(request, content_type, workdir)
                clip = await asyncio.get_running_loop().run_in_executor(
                    self.decode_pool, self._decode, upload, workdir
                )
            finally:
                if workdir:
                    shutil.rmtree(workdir, ignore_errors=True)
            row = await ticket.submit(clip)
        return {
            "input": upload.name,
            **row,
            "mode": self.settings["mode"],
            "latency_ms": round(1000 * (time.perf_counter() - start), 2),
        }

    def _decode(self, upload, workdir):
        from cg_ray.data.decode import decode_clip
        from cg_ray.predict.http import RequestError, public_message

        info = self.settings["info"]
        try:
            return decode_clip(
                upload.source,
                info["num_frames"],
                info["image_size"],
                min_frames=self.settings["min_frames"],
                sampling=self.sampling,
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


def _batch_metrics():
    """Prometheus metrics of the batches (Ray exports them as ray_cg_ray_serve_batch_size and
    ray_cg_ray_serve_batch_wait_ms, tagged by why the batch closed), as a Batcher.on_batch."""
    from ray.util.metrics import Histogram

    sizes = Histogram(
        "cg_ray_serve_batch_size",
        description="Clips in each forward pass of a cg-ray serve replica.",
        boundaries=[1, 2, 4, 8, 16, 32, 64, 128],
        tag_keys=("closed",),
    )
    waits = Histogram(
        "cg_ray_serve_batch_wait_ms",
        description="Milliseconds the first clip of a batch waited for the model or for others.",
        boundaries=[0.1, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        tag_keys=("closed",),
    )

    def record(size: int, waited_s: float, reason: str) -> None:
        sizes.observe(size, tags={"closed": reason})
        waits.observe(1000 * waited_s, tags={"closed": reason})

    return record
