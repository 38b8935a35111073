"""A manifest of a million rows: what the driver reads of it, and that streaming it does not
hold it whole.

    .venv/bin/python benchmarks/manifest_scale.py [--rows 1000000] [--work /tmp/cg_bench_manifest]

Writes a 1M-row manifest whose rows point at a few real synthetic clips, then measures time and
peak memory (PSS of this process and every process it started) of: split_summary and
has_scene_labels (the checks `cg-ray train` runs first), and the first batch of the val split
streamed by clip_dataset (read_parquet + filter + decode, unshuffled as evaluation reads it).

The last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cg_ray.data.bench import MemorySampler  # noqa: E402
from cg_ray.data.layouts import MANIFEST_SCHEMA, prepare  # noqa: E402
from cg_ray.data.prepared import PreparedDataset  # noqa: E402
from cg_ray.data.stream import clip_dataset  # noqa: E402
from cg_ray.data.synthetic import make_world  # noqa: E402


def big_manifest(data: str, rows: int) -> None:
    """The small manifest's rows repeated (with new ids) up to `rows`, in row groups of 64k."""
    small = pq.read_table(os.path.join(data, "manifest.parquet")).to_pylist()
    path = os.path.join(data, "manifest.parquet")
    with pq.ParquetWriter(path + ".tmp", MANIFEST_SCHEMA) as writer:
        for start in range(0, rows, 65536):
            chunk = [
                dict(small[i % len(small)], clip_id=f"c{i:07d}")
                for i in range(start, min(rows, start + 65536))
            ]
            writer.write_table(pa.Table.from_pylist(chunk, schema=MANIFEST_SCHEMA))
    os.replace(path + ".tmp", path)


def timed(name: str, fn, figures: dict) -> None:
    with MemorySampler(interval=0.05) as memory:
        start = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - start
    figures[name] = {
        "seconds": round(seconds, 2),
        "peak_rss_mb": round(memory.peak_tree_mb, 1),
        "driver_peak_rss_mb": round(memory.peak_self_mb, 1),
        "result": value,
    }


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--work", default="/tmp/cg_bench_manifest")
    args = parser.parse_args()
    os.environ["CG_RAY_PROGRESS"] = "0"
    world, data = os.path.join(args.work, "world"), os.path.join(args.work, "data")
    make_world(world, cities=6, clips_per_city=5, frames=16, size=(64, 48), seed=0)
    prepare("cityguessr", world, data)
    figures = {"rows": args.rows}
    timed("write_manifest", lambda: big_manifest(data, args.rows), figures)
    figures["manifest_mb"] = round(os.path.getsize(os.path.join(data, "manifest.parquet")) / 2**20, 1)
    timed("split_summary", lambda: PreparedDataset(data).splits, figures)
    timed("has_scene_labels", lambda: PreparedDataset(data).has_scene_labels("train"), figures)
    from cg_ray.ray_env import init_ray

    init_ray()
    taxonomy = PreparedDataset(data).taxonomy

    def first_batch():
        ds = clip_dataset(data, "val", taxonomy, 8, 32)
        batch = next(iter(ds.iter_batches(batch_size=12)))
        return int(len(batch["video"]))

    timed("first_val_batch", first_batch, figures)
    print(json.dumps(figures, indent=1))  # readable; the same on one line last:
    print_result(figures)


if __name__ == "__main__":
    main()
