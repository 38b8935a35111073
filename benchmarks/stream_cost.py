"""Where a streamed clip's CPU goes: the bare decode floor vs `cg-ray bench data`, per role.

    .venv/bin/python benchmarks/stream_cost.py [--clips 4800] [--epoch-clips 2400]

A packed dataset of 16x224 JPEG frames (benchmarks/packed_synthetic.py; epochs of
--epoch-clips clips, as big as a real training run's shard of the data would make them) is
streamed with bench_data (packed shards -> Ray Data -> DeviceFeed, as a training worker gets
them) for --clips clips, and the same frames are decoded in a plain loop (the floor: every JPEG
into its place in a (T, S, S, 3) array, one thread). CPU ms per clip are split by role: the
driver (the consumer: iteration, collation), Ray's worker processes (read + decode tasks) and
Ray's daemons (raylet, GCS, dashboard, ...). Also the bytes per clip of the blocks that cross
the object store with data.decode cpu vs gpu. Last line: a JSON object with `stream_to_floor`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def floor_ms_per_clip(data: str, frames: int, size: int, clips: int) -> float:
    """CPU ms per clip of decoding the packed frames in a plain loop (no Ray)."""
    import numpy as np
    import pyarrow.parquet as pq

    from cg_ray.data.shards import decode_jpeg_into, packed_files

    video, done = np.empty((frames, size, size, 3), np.uint8), 0
    start = time.process_time()
    while done < clips:
        for path in packed_files(data, "train", frames, size):
            for clip in pq.read_table(path, columns=["frames"]).column("frames").to_pylist():
                for t, jpeg in enumerate(clip):
                    decode_jpeg_into(jpeg, video[t])
                done += 1
                if done >= clips:
                    break
            if done >= clips:
                break
    return 1000 * (time.process_time() - start) / done


def block_bytes_per_clip(data: str, decode: str, files: int = 2) -> int:
    """Bytes per clip of the blocks the Ray Data tasks put in the object store (what crosses
    it to the consumer): pixels with decode='cpu', the JPEG bytes with decode='gpu'."""
    import numpy as np
    import pyarrow.fs as pafs

    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.shards import packed_files, read_and_decode
    from cg_ray.taxonomy import LEVELS

    taxonomy = PreparedDataset(data).taxonomy
    args = dict(
        label_ids={level: taxonomy.index(level) for level in LEVELS},
        num_frames=16,
        image_size=224,
        scene_labels="soft",
        keep_ids=False,
    )
    clips = size = 0
    for path in packed_files(data, "train", 16, 224)[:files]:
        for block in read_and_decode(
            {"path": np.array([path])},
            filesystem=pafs.LocalFileSystem(),
            batch_size=48,
            seed=0,
            decode=decode,
            **args,
        ):
            clips += len(block["valid"])
            size += sum(sum(map(len, v)) if v.dtype == object else v.nbytes for v in block.values())
    return round(size / clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4800, help="clips streamed (default: 4800)")
    parser.add_argument("--epoch-clips", type=int, default=2400, help="clips per epoch (default: 2400)")
    parser.add_argument("--batch-size", type=int, default=12, help="clips per batch (default: 12)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    os.environ.setdefault("CG_RAY_PROGRESS", "0")
    if not os.environ.get("RAY_TMPDIR"):  # made only when needed (short: Ray socket paths)
        os.environ["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="cgr-sc-", dir="/tmp")
    from packed_synthetic import write_packed_dataset
    from result_line import print_result

    from cg_ray.data.bench import bench_data

    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="cg-stream-cost-"))
    data = os.path.join(work, "data")
    info = write_packed_dataset(
        data, train_clips=args.epoch_clips, val_clips=12, num_frames=16, image_size=224, raw_clips=0
    )
    floor = floor_ms_per_clip(data, 16, 224, 300)
    store = {decode: block_bytes_per_clip(data, decode) for decode in ("cpu", "gpu")}
    stream = bench_data(data, clips=args.clips, batch_size=args.batch_size)
    total = sum(stream["cpu_ms_per_clip"].values())
    result = {
        "stream_to_floor": round(total / floor, 2),
        "floor_cpu_ms_per_clip": round(floor, 2),
        "stream_cpu_ms_per_clip": round(total, 2),
        "stream_cpu_ms_per_clip_by_role": stream["cpu_ms_per_clip"],
        "stream_clips_per_s": stream["clips_per_s"],
        "first_batch_s": stream["first_batch_s"],
        "peak_rss_mb": stream["peak_rss_mb"],
        "clips": stream["clips"],
        "epochs": stream["epochs"],
        "epoch_clips": args.epoch_clips,
        "jpeg_bytes_per_clip": info["jpeg_bytes_per_clip"],
        "object_store_bytes_per_clip": store,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    by_role = ", ".join(f"{k} {v:.2f}" for k, v in stream["cpu_ms_per_clip"].items())
    print(f"floor {floor:.2f} CPU-ms/clip; stream {total:.2f} ({by_role}): {result['stream_to_floor']}x")
    print_result(result)


if __name__ == "__main__":
    main()
