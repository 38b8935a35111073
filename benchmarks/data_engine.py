"""The data engine's figures, in one run on the same clips.

    .venv/bin/python benchmarks/data_engine.py [--clips-per-city 6] [--work /tmp/cg_bench_data]

A synthetic CityGuessr68k-like dataset (1280x720 JPEG frames, 100 per clip, cached in --work) is
prepared and packed (16 frames at 224), then measured four ways:

  paper      the official loader's work: every 5th of 100 frames, full decode with OpenCV, PIL
             resize to 224, ToTensor; one process
  floor      the packed frames decoded in a plain loop (no Ray): the bare decode cost
  stream     packed shards -> Ray Data -> iter_torch_batches(12), as a training worker gets them
  pack       `cg-ray pack` itself, against the bare cost of decoding the frames it needs

Per core means per CPU-second: the CPU time of every process involved (for Ray: the driver and
all the processes it started) is measured, so the figures hold on a busy machine too; wall
clips/s is printed beside them. Peak memory is the PSS of the whole process tree.

The last line of stdout is one JSON object with the figures.
"""

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cg_ray.data.bench import MemorySampler, bench_data, tree_cpu_seconds  # noqa: E402
from cg_ray.data.decode import decode_jpeg_at, list_frames, sample_indices  # noqa: E402
from cg_ray.data.layouts import prepare  # noqa: E402
from cg_ray.data.pack import PackOptions, pack  # noqa: E402
from cg_ray.data.prepared import PreparedDataset  # noqa: E402
from cg_ray.data.shards import REPORT, decode_jpeg_into, pack_dir, packed_files  # noqa: E402
from cg_ray.data.synthetic import make_world  # noqa: E402

T, S = 16, 224


def measured(fn):
    """(result, wall seconds, CPU seconds of the process tree)."""
    wall, cpu = time.perf_counter(), tree_cpu_seconds()
    result = fn()
    return result, time.perf_counter() - wall, tree_cpu_seconds() - cpu


def paper_loader(clips: list[str]) -> int:
    """The official code's per-clip work, in one process with one thread."""
    import cv2
    import torch
    from PIL import Image
    from torchvision.transforms import ToTensor

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    to_tensor = ToTensor()
    for folder in clips:
        frames = list_frames(folder)[::5]  # every 5th of 100 frames
        tensors = []
        for path in frames:
            image = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)  # full 1280x720 decode
            tensors.append(to_tensor(Image.fromarray(image).resize((S, S))))
        torch.stack(tensors)
    return len(clips)


def decode_floor(files: list[str], limit: int) -> int:
    """Every packed frame decoded into a (T, S, S, 3) array, clip after clip: the bare cost."""
    import pyarrow.parquet as pq

    video, done = np.empty((T, S, S, 3), np.uint8), 0
    while done < limit:
        for path in files:
            for frames in pq.read_table(path, columns=["frames"]).column("frames").to_pylist():
                for t, data in enumerate(frames):
                    decode_jpeg_into(data, video[t])
                done += 1
                if done >= limit:
                    return done
    return done


def pack_floor(clips: list[str]) -> int:
    """What pack cannot avoid: read and decode (at reduced DCT scale) its 16 frames per clip."""
    for folder in clips:
        frames = list_frames(folder)
        for i in sorted(set(sample_indices(len(frames), T).tolist())):
            decode_jpeg_at(open(frames[i], "rb").read(), S)
    return len(clips)


def replicate(data: str, clips: int, out: str, per_file: int = 120) -> str:
    """A dataset whose train split is the packed train clips over and over, `clips` in all, in
    shard files of `per_file` clips (pack's default size): long enough to stream warm, and to
    see whether memory grows with the dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    for name in ("manifest.parquet", "taxonomy.json"):
        shutil.copy(os.path.join(data, name), out)
    src, dst = pack_dir(data, T, S), pack_dir(out, T, S)
    report = json.loads(open(os.path.join(src, REPORT)).read())
    train = pa.concat_tables(pq.read_table(os.path.join(src, name)) for name in report["shards"]["train"])
    one_file = pa.concat_tables([train] * (per_file // train.num_rows + 1)).slice(0, per_file)
    os.makedirs(os.path.join(dst, "train"))
    names = []
    for i in range(-(-clips // per_file)):
        names.append(f"train/part-{i:05d}.parquet")
        if i == 0:
            pq.write_table(one_file, os.path.join(dst, names[0]), compression="NONE")
        else:  # the same bytes under another name
            os.link(os.path.join(dst, names[0]), os.path.join(dst, names[-1]))
    report["shards"] = {"train": names}
    report["manifest"] = PreparedDataset(out).stamp()
    open(os.path.join(dst, REPORT), "w").write(json.dumps(report))
    return out


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--cities", type=int, default=6)
    parser.add_argument("--clips-per-city", type=int, default=6)
    parser.add_argument("--work", default="/tmp/cg_bench_data")
    parser.add_argument("--stream-clips", type=int, default=2400)
    parser.add_argument("--paper-clips", type=int, default=12)
    args = parser.parse_args()
    os.environ["CG_RAY_PROGRESS"] = "0"
    world, data = os.path.join(args.work, "world"), os.path.join(args.work, "data")
    if not os.path.exists(os.path.join(world, "scene_labels.csv")):
        print(f"writing {args.cities * args.clips_per_city} clips of 100 1280x720 JPEG frames ...")
        print(
            make_world(
                world,
                cities=args.cities,
                clips_per_city=args.clips_per_city,
                frames=100,
                size=(1280, 720),
                seed=0,
            )
        )
    prepare("cityguessr", world, data)
    import pyarrow.parquet as pq

    sources = pq.read_table(os.path.join(data, "manifest.parquet")).column("source").to_pylist()
    figures = {"cpus": os.cpu_count(), "clips": len(sources), "load_average_1min": os.getloadavg()[0]}

    paper_loader(sources[:1])  # imports (cv2, torch, torchvision) and caches warm, unmeasured
    n, wall, cpu = measured(lambda: paper_loader(sources[1 : 1 + args.paper_clips]))
    figures["paper"] = {"clips": n, "clips_per_s": n / wall, "clips_per_cpu_s": n / cpu}

    n, wall, cpu = measured(lambda: pack_floor(sources))
    figures["pack_floor"] = {"clips": n, "clips_per_s": n / wall, "clips_per_cpu_s": n / cpu}

    shutil.rmtree(os.path.join(data, "shards"), ignore_errors=True)
    from cg_ray.ray_env import init_ray

    init_ray()
    opts = PackOptions(num_frames=T, image_size=S, clips_per_shard=4)  # 9 shards: both CPUs busy
    # A first pack of a copy starts Ray's worker processes (imports: seconds of CPU each) so
    # that the measured one shows the steady cost per clip, as in a long pack.
    warm = os.path.join(args.work, "warmup")
    shutil.rmtree(warm, ignore_errors=True)
    os.makedirs(warm)
    shutil.copy2(os.path.join(data, "manifest.parquet"), warm)
    pack(warm, opts, log=lambda line: None)
    with MemorySampler() as memory:
        report, wall, cpu = measured(lambda: pack(data, opts, log=lambda line: None))
    cpu -= memory.own_cpu_s
    figures["pack"] = {
        "clips": report["clips"],
        "clips_per_s": report["clips"] / wall,
        "clips_per_cpu_s": report["clips"] / cpu,
        "peak_rss_mb": memory.peak_tree_mb,
    }
    figures["pack"]["ratio_to_floor"] = (
        figures["pack"]["clips_per_cpu_s"] / figures["pack_floor"]["clips_per_cpu_s"]
    )

    files = packed_files(data, "train", T, S)
    n, wall, cpu = measured(lambda: decode_floor(files, 300))
    figures["floor"] = {"clips": n, "clips_per_s": n / wall, "clips_per_cpu_s": n / cpu}

    for clips in (args.stream_clips // 4, args.stream_clips):
        big = replicate(data, clips, os.path.join(args.work, f"stream{clips}"))
        result = bench_data(big, clips=clips, num_frames=T, image_size=S, batch_size=12)
        figures[f"stream_{clips}_clips"] = result
    stream = figures[f"stream_{args.stream_clips}_clips"]
    # Per core: clips per CPU-second of every process, over the steady phase (bench_data).
    figures["stream_vs_paper_per_core"] = stream["clips_per_cpu_s"] / figures["paper"]["clips_per_cpu_s"]
    figures["stream_vs_floor_per_core"] = stream["clips_per_cpu_s"] / figures["floor"]["clips_per_cpu_s"]
    print(json.dumps(_rounded(figures), indent=1))  # readable; the same on one line last:
    print_result(_rounded(figures))


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 3) if isinstance(value, float) else value


if __name__ == "__main__":
    main()
