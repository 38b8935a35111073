"""`cg-ray serve`: an online endpoint and a page to try a video."""

from __future__ import annotations

import os

from cg_ray.cli.common import MODES, command, tracking_option
from cg_ray.errors import UserError


def register(sub) -> None:
    p = command(
        sub,
        "serve",
        "an online endpoint (Ray Serve) and a web page to try a video",
        """
Serve a checkpoint over HTTP with Ray Serve until Ctrl-C: POST /predict takes a clip (multipart
field `video`, raw video bytes, a zip of a frames folder, or JSON {"uri": "s3://..."}) and answers
the `cg-ray predict --json` object plus mode and latency_ms; GET / is a page to try a video;
GET /info, GET /healthz. Each replica receives requests, decodes them in threads and batches
their forward passes. Binds 127.0.0.1 unless --host says otherwise.""",
        """
cg-ray serve --checkpoint runs/demo/checkpoint_000002 --port 8000
cg-ray serve --checkpoint models:/cityguessr/1 --autoscale 1:4 --gpus-per-replica 1 --max-batch 16
CG_RAY_SERVE_TOKEN=... cg-ray serve --checkpoint CKPT --host 0.0.0.0""",
        serve,
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or URI, or models:/NAME/VERSION")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 exposes the endpoint to the network (use --token)",
    )
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument(
        "--replicas", type=int, help="replicas, each receiving, decoding and predicting (default: 1)"
    )
    p.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="autoscale the model replicas between "
        "MIN and MAX on ongoing requests (default: off, fixed --replicas)",
    )
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=0.0,
        help="GPUs each model replica holds (fractions share a GPU)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most clips per batched forward pass on a replica (1: no batching)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=50.0,
        help="longest a decoded clip waits for requests still being received or decoded in its "
        "replica; never for ones that come later; a lone request never waits",
    )
    p.add_argument(
        "--cpus-per-replica",
        type=float,
        default=1.0,
        help="CPUs each replica holds; it decodes with as many threads (at least 2)",
    )
    p.add_argument("--mode", choices=MODES, default="codependent", help="hierarchical evaluation mode")
    p.add_argument("--top-k", type=int, default=5, help="candidates answered per level")
    p.add_argument(
        "--max-upload-mb", type=float, default=200.0, help="largest accepted upload; larger bodies get 413"
    )
    p.add_argument("--min-frames", type=int, default=1, help="clips with fewer frames get 422")
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on /predict and /info "
        "(default: $CG_RAY_SERVE_TOKEN, else no authentication)",
    )
    p.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="let JSON requests name files on the server (default: object store URIs only)",
    )
    tracking_option(p, what="MLflow store for models:/ references")
    p.add_argument(
        "--ingress",
        choices=("auto", "haproxy", "serve"),
        default="auto",
        help="what receives HTTP in front of the replicas on a local Ray: haproxy (forwards each "
        "request to a replica's own HTTP server), serve (Serve's Python proxy, which relays it over "
        "Ray calls: about half the clips/s), auto: haproxy when it is on PATH",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="Ray's Prometheus metrics port (default: one Ray picks, printed at start)",
    )


def serve(args) -> None:
    from cg_ray.predict.serve import ServeOptions, parse_autoscale, serve_forever

    if args.replicas is not None and args.autoscale:
        raise UserError("give either --replicas N or --autoscale MIN:MAX, not both")
    serve_forever(
        ServeOptions(
            checkpoint=args.checkpoint,
            host=args.host,
            port=args.port,
            replicas=args.replicas or 1,
            autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
            gpus_per_replica=args.gpus_per_replica,
            cpus_per_replica=args.cpus_per_replica,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            mode=args.mode,
            top_k=args.top_k,
            max_upload_mb=args.max_upload_mb,
            min_frames=args.min_frames,
            token=args.token or os.environ.get("CG_RAY_SERVE_TOKEN") or None,
            allow_local_paths=args.allow_local_paths,
            tracking_uri=args.tracking_uri,
            metrics_port=args.metrics_port,
            ingress=args.ingress,
        )
    )
