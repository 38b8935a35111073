"""`cg-ray serve` speed on this machine: latency of one clip and clips/s under a concurrent burst,
with batching on (--max-batch 8) and off (--max-batch 1).

    flock /tmp/cgray-ray.lock .venv/bin/python benchmarks/serve.py [--checkpoint CKPT --clip FILE]
        [--requests 64] [--concurrency 8] [--single 30]

Starts the real command twice (a local Ray each time) on 127.0.0.1 and sends real HTTP requests
(raw mp4 bytes): `--single` requests one after another (p50/p95 latency seen by the client, and
the server's own latency_ms), then `--requests` requests `--concurrency` at a time (clips/s, and
the batch sizes the replica formed). Without --checkpoint it trains the tests' tiny model
(VideoMAE 2 layers, 4x32x32) on synthetic mp4 clips, so the figures show the serving overhead
(HTTP, parsing, decoding, batching) more than the model.
"""

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from serve_helpers import running_server, tiny_model  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(checkpoint: str, clip: bytes, max_batch: int, args) -> dict:
    with running_server(
        checkpoint, "--max-batch", str(max_batch), "--batch-wait-ms", str(args.batch_wait_ms)
    ) as server:

        def ask(_):
            start = time.perf_counter()
            answer = server.request("/predict", clip, {"Content-Type": "video/mp4"})
            assert answer.status == 200, answer.body
            return 1000 * (time.perf_counter() - start), answer.body["latency_ms"]

        for _ in range(3):  # warm: first requests load code paths and allocate
            ask(0)
        single = [ask(i) for i in range(args.single)]
        before = server.request("/info").body["batch_sizes"]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            burst = list(pool.map(ask, range(args.requests)))
        seconds = time.perf_counter() - start
        after = server.request("/info").body["batch_sizes"]
    sizes = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    client = [c for c, _ in single]
    return {
        "max_batch": max_batch,
        "single_p50_ms": statistics.median(client),
        "single_p95_ms": percentile(client, 95),
        "server_p50_ms": statistics.median(s for _, s in single),
        "burst_clips_per_s": args.requests / seconds,
        "burst_p50_ms": statistics.median(c for c, _ in burst),
        "burst_p95_ms": percentile([c for c, _ in burst], 95),
        "mean_batch": sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())),
        "batch_sizes": dict(sorted(sizes.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a checkpoint folder (default: the tests' tiny model)")
    parser.add_argument("--clip", help="the video every request sends (default: a synthetic mp4)")
    parser.add_argument("--requests", type=int, default=64, help="requests in the burst")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--single", type=int, default=30, help="sequential requests for latency")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="--batch-wait-ms of serve")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    checkpoint, clip_path = args.checkpoint, args.clip
    if not checkpoint or not clip_path:
        model = tiny_model(tempfile.mkdtemp(prefix="cg_bench_serve-"))
        checkpoint = checkpoint or model["ckpt"]
        clip_path = clip_path or model["rows"][0]["path"]
    clip = Path(clip_path).read_bytes()
    print(
        f"cg-ray serve on {os.cpu_count()} CPUs; checkpoint {checkpoint}; clip {clip_path} "
        f"({len(clip) / 1024:.0f} KiB); burst {args.requests} requests, {args.concurrency} at a time"
    )
    rows = [measure(checkpoint, clip, max_batch, args) for max_batch in (8, 1)]
    print(
        f"{'batching':<16}{'1 clip p50':>12}{'p95':>8}{'server p50':>12}{'burst clips/s':>15}"
        f"{'burst p50':>11}{'p95':>8}{'mean batch':>12}"
    )
    for row in rows:
        name = f"on (max {row['max_batch']})" if row["max_batch"] > 1 else "off (max 1)"
        print(
            f"{name:<16}{row['single_p50_ms']:>10.1f}ms{row['single_p95_ms']:>6.1f}ms"
            f"{row['server_p50_ms']:>10.1f}ms{row['burst_clips_per_s']:>15.1f}"
            f"{row['burst_p50_ms']:>9.1f}ms{row['burst_p95_ms']:>6.1f}ms{row['mean_batch']:>12.2f}"
        )
        print(f"{'':<16}batch sizes in the burst: {row['batch_sizes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
