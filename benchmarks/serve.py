"""`cg-ray serve` speed on this machine: one clip's latency and clips/s under a concurrent burst,
with batching on (--max-batch 8) and off (--max-batch 1), against the same clips through decode
and the predictor in this process.

    flock /tmp/cgray-ray.lock .venv/bin/python benchmarks/serve.py [--checkpoint CKPT --clip FILE]
        [--requests 64] [--bursts 3] [--concurrency 8] [--single 30] [--max-batch 8]
        [--batch-wait-ms MS] [--ingress auto|haproxy|serve] [--replicas 1]

Starts the real command twice (a local Ray each time) on 127.0.0.1 and sends real HTTP requests
(raw mp4 bytes; each client thread keeps its connection open, as a load generator would):
`--single` requests one after another (p50/p95 latency seen by the client, and the server's own
latency_ms), then `--bursts` bursts of `--requests` requests `--concurrency` at a time (clips/s,
the median of the bursts; latency, the batch sizes the replica formed and why each batch closed,
and the CPU time each process of the server spent per clip, over all of them). The in-process
baseline decodes and predicts the same clip `--requests` times in batches of --max-batch
(`predict_inputs`, what `cg-ray predict` runs; the median of `--bursts` runs) before and after
each server: the endpoint's clips/s is given as a ratio of the baselines around it, and so is
the CPU time all processes spent per clip, which other jobs on the machine disturb less. Without
--checkpoint it trains the tests' tiny model (VideoMAE 2 layers, 4x32x32) on synthetic mp4
clips, so the figures show the serving overhead (HTTP, parsing, decoding, batching) more than
the model. The last line of stdout is one JSON object with every figure.
"""

import argparse
import collections
import concurrent.futures
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from result_line import print_result  # noqa: E402
from serve_helpers import running_server, tiny_model  # noqa: E402

from cg_ray.predict.serve import INGRESSES, ServeOptions  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def in_process(checkpoint: str, clip_path: str, clips: int, batch: int, repeats: int) -> tuple[float, float]:
    """(clips/s, CPU ms per clip), the median of `repeats` runs, of decode + predictor over
    `clips` copies of the clip in this process."""
    from cg_ray.predict.predictor import Predictor, open_checkpoint, predict_inputs

    predictor = Predictor(open_checkpoint(checkpoint)[0])
    predict_inputs(predictor, [clip_path] * batch, batch_size=batch)  # warm
    runs = []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        outcomes = predict_inputs(predictor, [clip_path] * clips, batch_size=batch)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        assert all(o.prediction for o in outcomes), [o.error for o in outcomes if o.error]
        runs.append((clips / seconds, 1000 * cpu / clips))
    return statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)


def cpu_seconds(pid: int) -> collections.Counter:
    """CPU seconds so far of the server's processes (it and all below it), by process title."""
    spent: collections.Counter = collections.Counter()
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        try:
            title = " ".join(process.cmdline()[:1]) or process.name()
            times = process.cpu_times()
        except psutil.Error:
            continue
        if title.startswith("ray::ServeReplica"):
            kind = "replica"
        elif title.startswith("ray::ProxyActor") or os.path.basename(title.split(" ")[0]) == "haproxy":
            kind = "proxy"  # what receives HTTP: HAProxy, or Serve's proxy (--ingress serve)
        elif process.pid == pid:
            kind = "driver"
        else:
            kind = "ray_other"  # GCS, raylet, Serve's controller, dashboard, log monitor
        spent[kind] += times.user + times.system
    return spent


class Client:
    """POST /predict of one clip over one kept-open connection per thread."""

    def __init__(self, url: str, clip: bytes):
        self.host, port = url.removeprefix("http://").rsplit(":", 1)
        self.port, self.clip, self.local = int(port), clip, threading.local()

    def ask(self, _=None) -> tuple[float, float]:
        """(ms seen by the client, the server's latency_ms)."""
        if getattr(self.local, "connection", None) is None:
            self.local.connection = http.client.HTTPConnection(self.host, self.port, timeout=300)
        start = time.perf_counter()
        self.local.connection.request("POST", "/predict", self.clip, {"Content-Type": "video/mp4"})
        response = self.local.connection.getresponse()
        body = json.loads(response.read())
        assert response.status == 200, body
        return 1000 * (time.perf_counter() - start), body["latency_ms"]


def replicas_figures(server, replicas: int) -> dict:
    """The batching counters of all the replicas, summed: /info answers from whichever replica
    gets the request, so ask until each has answered."""
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 60  # HAProxy sends to a new replica once its checks pass
    while len(seen) < replicas and time.monotonic() < deadline:
        figures = server.replica()
        seen[figures["replica"]] = figures
        time.sleep(0.1)
    assert len(seen) == replicas, f"{len(seen)} of {replicas} replicas answered /info"
    total: dict = {"batch_sizes": collections.Counter(), "batches_closed": collections.Counter()}
    total["waited_ms"] = collections.Counter()
    for figures in seen.values():
        for key in total:
            total[key].update(figures[key])
    return total


def measure(checkpoint: str, clip: bytes, max_batch: int, args) -> dict:
    with running_server(
        checkpoint,
        "--max-batch",
        str(max_batch),
        "--batch-wait-ms",
        str(args.batch_wait_ms),
        "--ingress",
        args.ingress,
        "--replicas",
        str(args.replicas),
    ) as server:
        ingress = server.request("/info").body["ingress"]
        client = Client(server.url, clip)
        for _ in range(5):  # warm: first requests load code paths and allocate
            client.ask()
        alone = replicas_figures(server, args.replicas)
        single = [client.ask() for _ in range(args.single)]
        before = replicas_figures(server, args.replicas)
        cpu_before, me_before = cpu_seconds(server.pid), time.process_time()
        burst, rates = [], []
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
            for _ in range(args.bursts):
                start = time.perf_counter()
                burst += pool.map(client.ask, range(args.requests))
                rates.append(args.requests / (time.perf_counter() - start))
        after = replicas_figures(server, args.replicas)
        cpu_after, me_after = cpu_seconds(server.pid), time.process_time()
    clips = args.requests * args.bursts
    sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    sizes = {k: v for k, v in sorted(sizes.items()) if v}
    closed = {k: v - before["batches_closed"].get(k, 0) for k, v in after["batches_closed"].items()}
    cpu = {k: 1000 * (cpu_after[k] - cpu_before.get(k, 0)) / clips for k in cpu_after}
    cpu["client"] = 1000 * (me_after - me_before) / clips
    # What batching cost a lone request: how long its batch waited before the forward pass.
    lone_batches = sum(before["batches_closed"].values()) - sum(alone["batches_closed"].values())
    lone_wait_ms = sum(before["waited_ms"].values()) - sum(alone["waited_ms"].values())
    client_ms = [c for c, _ in single]
    return {
        "max_batch": max_batch,
        "ingress": ingress,
        "single_p50_ms": statistics.median(client_ms),
        "single_p95_ms": percentile(client_ms, 95),
        "server_p50_ms": statistics.median(s for _, s in single),
        "single_batch_wait_ms": lone_wait_ms / max(1, lone_batches),
        "burst_clips_per_s": statistics.median(rates),
        "bursts_clips_per_s": [round(rate, 1) for rate in rates],
        "burst_p50_ms": statistics.median(c for c, _ in burst),
        "burst_p95_ms": percentile([c for c, _ in burst], 95),
        "mean_batch": sum(k * v for k, v in sizes.items()) / max(1, sum(sizes.values())),
        "batch_sizes": sizes,
        "batches_closed": {k: v for k, v in closed.items() if v},
        "cpu_ms_per_clip": {k: round(v, 2) for k, v in sorted(cpu.items(), key=lambda kv: -kv[1])},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a checkpoint folder (default: the tests' tiny model)")
    parser.add_argument("--clip", help="the video every request sends (default: a synthetic mp4)")
    parser.add_argument("--requests", type=int, default=64, help="requests in a burst")
    parser.add_argument(
        "--bursts", type=int, default=3, help="bursts per server (clips/s: their median; the rest: all)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight at once")
    parser.add_argument("--single", type=int, default=30, help="sequential requests for latency")
    parser.add_argument("--max-batch", type=int, default=8, help="--max-batch of serve with batching on")
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=ServeOptions.batch_wait_ms,
        help="--batch-wait-ms of serve (default: serve's)",
    )
    parser.add_argument(
        "--ingress",
        choices=INGRESSES,
        default="auto",
        help="--ingress of serve (default: serve's, HAProxy when installed)",
    )
    parser.add_argument("--replicas", type=int, default=1, help="--replicas of serve")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    checkpoint, clip_path = args.checkpoint, args.clip
    if not checkpoint or not clip_path:
        model = tiny_model(tempfile.mkdtemp(prefix="cg_bench_serve-"))
        checkpoint = checkpoint or model["ckpt"]
        clip_path = clip_path or model["rows"][0]["path"]
    clip = Path(clip_path).read_bytes()
    print(
        f"cg-ray serve on {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); checkpoint "
        f"{checkpoint}; clip {clip_path} ({len(clip) / 1024:.0f} KiB); {args.bursts} bursts of "
        f"{args.requests} requests, {args.concurrency} at a time; batch wait {args.batch_wait_ms:g} ms; "
        f"ingress {args.ingress}; {args.replicas} replica(s)",
        flush=True,
    )
    baselines = [in_process(checkpoint, clip_path, args.requests, args.max_batch, args.bursts)]
    rows = []
    for max_batch in (args.max_batch, 1):
        rows.append(measure(checkpoint, clip, max_batch, args))
        baselines.append(in_process(checkpoint, clip_path, args.requests, args.max_batch, args.bursts))
    for row, around in zip(rows, (baselines[:2], baselines[1:])):
        row["in_process_clips_per_s"] = statistics.mean(rate for rate, _ in around)
        row["vs_in_process"] = row["burst_clips_per_s"] / row["in_process_clips_per_s"]
        # CPU per clip of the whole machine's work for a clip (server and client) against the
        # in-process path's: a figure that other jobs on the machine disturb less than clips/s.
        in_process_cpu = statistics.mean(cpu for _, cpu in around)
        row["cpu_vs_in_process"] = sum(row["cpu_ms_per_clip"].values()) / in_process_cpu
    print(
        f"{'batching':<16}{'1 clip p50':>12}{'p95':>8}{'server p50':>12}{'burst clips/s':>15}"
        f"{'burst p50':>11}{'p95':>8}{'mean batch':>12}{'in-process':>12}{'ratio':>7}"
    )
    for row in rows:
        name = f"on (max {row['max_batch']})" if row["max_batch"] > 1 else "off (max 1)"
        print(
            f"{name:<16}{row['single_p50_ms']:>10.1f}ms{row['single_p95_ms']:>6.1f}ms"
            f"{row['server_p50_ms']:>10.1f}ms{row['burst_clips_per_s']:>15.1f}"
            f"{row['burst_p50_ms']:>9.1f}ms{row['burst_p95_ms']:>6.1f}ms{row['mean_batch']:>12.2f}"
            f"{row['in_process_clips_per_s']:>12.1f}{row['vs_in_process']:>7.2f}"
        )
        print(
            f"{'':<16}a lone clip's batch waited {row['single_batch_wait_ms']:.2f} ms on average; "
            f"batch sizes in the bursts: {row['batch_sizes']}, closed: {row['batches_closed']}"
        )
        print(
            f"{'':<16}CPU ms per clip in the burst: {row['cpu_ms_per_clip']}, "
            f"{row['cpu_vs_in_process']:.2f}x the in-process path's"
        )
    on, off = rows
    figures = {
        "requests": args.requests,
        "concurrency": args.concurrency,
        "ingress": on["ingress"],
        "replicas": args.replicas,
        "batch_wait_ms": args.batch_wait_ms,
        "in_process_clips_per_s": [round(rate, 1) for rate, _ in baselines],
        "in_process_cpu_ms_per_clip": [round(cpu, 2) for _, cpu in baselines],
        "on": on,
        "off": off,
        "endpoint_vs_in_process": round(on["vs_in_process"], 3),
        "endpoint_cpu_per_clip_vs_in_process": round(on["cpu_vs_in_process"], 2),
        "on_vs_off_clips_per_s": round(on["burst_clips_per_s"] / off["burst_clips_per_s"], 3),
        "lone_clip_batching_cost_ms": round(on["single_p50_ms"] - off["single_p50_ms"], 2),
        "lone_clip_batch_wait_ms": round(on["single_batch_wait_ms"], 3),
        "mean_batch_on": round(on["mean_batch"], 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    print_result(figures)


if __name__ == "__main__":
    main()
