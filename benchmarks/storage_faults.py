"""What the storage retry policy costs, and what a throttled store costs a run.

    .venv/bin/python benchmarks/storage_faults.py [--rate 0.1] [--objects 400]

On an S3-compatible server on 127.0.0.1 (moto), with tests/fault_proxy.py in front of it:
  1. the policy on a clean store: reading `--objects` small objects with pyarrow's own
     S3FileSystem (3 attempts, what cg_ray used before) and with cg_ray.storage's (10 attempts,
     rebuilt in every process), straight to moto: ms per object, each the median of 3 passes;
  2. the tiny pipeline (prepare, pack, a 1-epoch train on the shards, evaluate), each step a
     `cg-ray` process of its own, on one local Ray: through the proxy with no faults, then with
     `--rate` of the requests failing (503 SlowDown, 500 InternalError, 500 to HEAD, dropped
     connections): wall time of each, their ratio, and the faults injected.

The last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_REGION", "us-east-1")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from fault_proxy import FaultProxy  # noqa: E402

DEMO = str(ROOT / "configs" / "demo.yaml")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_cost(endpoint: str, bucket: str, objects: int) -> dict:
    """ms per object read, pyarrow's plain S3FileSystem against cg_ray.storage's."""
    import pyarrow.fs as pafs

    from cg_ray import storage

    host = endpoint.split("://", 1)[1]
    plain = pafs.S3FileSystem(
        endpoint_override=host, scheme="http", access_key="testing", secret_key="testing", region="us-east-1"
    )
    keys = [f"{bucket}/small/{i:05d}.bin" for i in range(objects)]
    for key in keys:
        with plain.open_output_stream(key) as f:
            f.write(os.urandom(2048))
    ours, _ = storage.filesystem(f"s3://{bucket}")

    def per_object(fs) -> float:
        start = time.perf_counter()
        for key in keys:
            with fs.open_input_stream(key) as f:
                f.read()
        return (time.perf_counter() - start) * 1000 / objects

    passes = {"plain": [], "cg_ray": []}
    for _ in range(3):
        passes["plain"].append(per_object(plain))
        passes["cg_ray"].append(per_object(ours))
    return {name: round(statistics.median(values), 3) for name, values in passes.items()}


def pipeline(endpoint: str, bucket: str, tmp: str, env: dict) -> tuple[float, dict]:
    """The tiny pipeline through `endpoint`: (seconds, seconds per step)."""
    from cg_ray.data.synthetic import make_world

    world, data = f"s3://{bucket}/world", f"s3://{bucket}/prep"
    os.makedirs(tmp, exist_ok=True)
    make_world(world, cities=3, clips_per_city=6, frames=8, size=(32, 32), seed=5)
    train = ["train", "--config", DEMO, "--metrics-out", f"{tmp}/train.json"]
    for key, value in {
        "data.path": data,
        "data.num_frames": 4,
        "data.image_size": 32,
        "train.batch_size": 4,
        "train.epochs": 1,
        "model.tla.enabled": "false",
        "run.storage_path": f"s3://{bucket}/runs",
        "run.tracking_uri": f"sqlite:///{tmp}/mlflow.db",
    }.items():
        train += ["--set", f"{key}={value}"]
    steps = {
        "prepare": ["prepare", "--layout", "cityguessr", world, "--out", data],
        "pack": ["pack", data, "--frames", "4", "--size", "32", "--clips-per-shard", "4", "--quiet"],
        "train": train,
    }
    seconds = {}
    for step, args in steps.items():
        seconds[step] = run(args, endpoint, env)
    checkpoint = json.loads(Path(f"{tmp}/train.json").read_text())["checkpoint"]
    seconds["evaluate"] = run(["evaluate", "--checkpoint", checkpoint, "--data", data], endpoint, env)
    return sum(seconds.values()), {k: round(v, 2) for k, v in seconds.items()}


def run(args: list[str], endpoint: str, env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "cg_ray", *args],
        env={**os.environ, **env, "AWS_ENDPOINT_URL": endpoint, "CG_RAY_PROGRESS": "0"},
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"cg-ray {args[0]} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=0.10, help="share of requests that fail")
    parser.add_argument("--objects", type=int, default=400, help="objects read to time the policy")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise

    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    client = boto3.client("s3", endpoint_url=endpoint)
    for bucket in ("bench-reads", "bench-clean", "bench-faulty"):
        client.create_bucket(Bucket=bucket)
    ray_tmp = tempfile.mkdtemp(prefix="cgr-bench-", dir="/tmp")
    env = {"RAY_TMPDIR": ray_tmp}
    try:
        reads = read_cost(endpoint, "bench-reads", args.objects)
        print(f"policy on a clean store: {reads} ms per object", flush=True)
        with FaultProxy(endpoint, seed=args.seed, rate=0.0) as proxy, tempfile.TemporaryDirectory() as tmp:
            clean, clean_steps = pipeline(proxy.url, "bench-clean", f"{tmp}/clean", env)
            print(f"pipeline, clean store: {clean:.1f} s {clean_steps}", flush=True)
            proxy.rate = args.rate
            before = proxy.stats()
            faulty, faulty_steps = pipeline(proxy.url, "bench-faulty", f"{tmp}/faulty", env)
            faults = {k: v - before.get(k, 0) for k, v in proxy.stats().items()}
            print(f"pipeline, {args.rate:.0%} faults: {faulty:.1f} s {faulty_steps} {faults}", flush=True)
    finally:
        moto.stop()
    print_result(
        {
            "read_ms_plain_pyarrow": reads["plain"],
            "read_ms_cg_ray_policy": reads["cg_ray"],
            "policy_cost_ratio": round(reads["cg_ray"] / reads["plain"], 3),
            "pipeline_clean_s": round(clean, 1),
            "pipeline_faulty_s": round(faulty, 1),
            "faulty_over_clean": round(faulty / clean, 3),
            "fault_rate": args.rate,
            "faults_injected": {k: v for k, v in faults.items() if k != "forwarded"},
            "requests_forwarded": faults.get("forwarded", 0),
            "steps_clean_s": clean_steps,
            "steps_faulty_s": faulty_steps,
        }
    )


if __name__ == "__main__":
    main()
