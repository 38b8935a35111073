"""Scene labelling and text-feature throughput on this machine (CPU).

    .venv/bin/python benchmarks/scenes.py [--clips 48] [--frames 16] [--size 224] [--out /tmp/cg_scenes_bench]

Prints
  1. the Places365 labeller alone (resnet18 at SIZE, one thread = one core): frames/s per core,
     on frames already decoded, as every actor of `cg-ray scenes` runs it;
  2. `cg-ray scenes` end to end on a synthetic world of 1280x720 JPEG clips (Ray Data: decode
     + single-threaded labeller actors, one per CPU): frames/s and frames/s per core over the
     whole job (actors starting and loading the CNN included; Ray itself started before);
  3. the open_clip text features of 166 + 157 + 91 + 6 labels (CityGuessr68k's level sizes;
     the city names are the dataset's), ViT-B-32: model build time and encoding time.
The network weights are random (no model hub here): the speed is the same as with trained ones.

The last line of stdout is one JSON object with the figures.
"""

import argparse
import csv
import io
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scene_helpers import places_resnet, save_csail, write_sheet  # noqa: E402

from cg_ray.labels.hierarchy import read_categories, read_hierarchy  # noqa: E402
from cg_ray.labels.labeler import SceneLabeler  # noqa: E402
from cg_ray.taxonomy import Taxonomy  # noqa: E402


def labeller_alone(weights: np.ndarray, size: int, frames: int, repeats: int = 4) -> tuple[float, float]:
    """Frames/s of SceneLabeler.clip_labels, one thread, after a warm-up batch: per second of
    wall time, and per second of CPU time (what one core gives when nothing else runs)."""
    buffer = io.BytesIO()
    torch.save(places_resnet().state_dict(), buffer)
    labeller = SceneLabeler([buffer.getvalue()], "resnet18", 365, weights)  # sets 1 thread
    videos = np.random.default_rng(0).integers(0, 256, (2, frames, size, size, 3), dtype=np.uint8)
    labeller.clip_labels(videos)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        labeller.clip_labels(videos)
    count = repeats * videos.shape[0] * frames
    return count / (time.perf_counter() - start), count / (time.process_time() - cpu)


def end_to_end(out: Path, clips: int, frames: int, size: int) -> dict:
    from cg_ray.data.layouts import prepare
    from cg_ray.data.synthetic import make_world
    from cg_ray.labels.scenes import SceneOptions, label_scenes

    data = out / "data"
    if not (data / "manifest.parquet").exists():
        make_world(
            str(out / "world"),
            cities=4,
            clips_per_city=max(1, clips // 4),
            frames=frames,
            size=(1280, 720),
            seed=0,
        )
        prepare("cityguessr", str(out / "world"), str(data))
    save_csail(places_resnet(), out / "resnet18_places365.pth.tar")
    write_sheet(out / "sheet.csv")
    report = label_scenes(
        str(data),
        SceneOptions(
            str(out / "resnet18_places365.pth.tar"),
            str(out / "sheet.csv"),
            num_frames=frames,
            image_size=size,
            flush_every=10_000,
        ),
    )
    return report


def cityguessr_sized_taxonomy() -> Taxonomy:
    """166 cities (the dataset's names) under 157 states, 91 countries and 6 continents."""
    with open(ROOT / "cg_ray" / "geodata" / "cityguessr_city_centres.csv") as f:
        cities = [row["city"] for row in csv.DictReader(f)]
    continents = ["Africa", "Asia", "Europe", "North_America", "Oceania", "South_America"]
    rows = [
        {
            "city": city,
            "state": f"State_of_{i % 157:03d}",
            "country": f"Country_{(i % 157) % 91:02d}",
            "continent": continents[((i % 157) % 91) % 6],
        }
        for i, city in enumerate(cities)
    ]
    return Taxonomy.from_rows(rows)


def text_features(model_name: str) -> tuple[list[int], float, float]:
    import open_clip

    from cg_ray.labels.text import encode_label_names

    taxonomy = cityguessr_sized_taxonomy()
    start = time.perf_counter()
    open_clip.create_model(model_name)
    build = time.perf_counter() - start
    start = time.perf_counter()
    encode_label_names(taxonomy, model_name, None)  # builds the model again, then encodes
    total = time.perf_counter() - start
    return taxonomy.sizes, build, total - build


def main() -> None:
    from result_line import print_result

    parser = argparse.ArgumentParser()
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--text-model", default="ViT-B-32")
    parser.add_argument("--out", default="/tmp/cg_scenes_bench")
    args = parser.parse_args()
    os.environ.setdefault("CG_RAY_PROGRESS", "0")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_sheet(out / "sheet.csv")
    weights = read_hierarchy(str(out / "sheet.csv"), read_categories())
    alone = labeller_alone(weights, args.size, args.frames)
    report = end_to_end(out, args.clips, args.frames, args.size)
    sizes, build, encode = text_features(args.text_model)
    import ray

    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count()))
    load = os.getloadavg()[0]
    print(f"\nmachine: {os.cpu_count()} cores, load average {load:.1f} while measuring")
    print(
        f"scene labeller alone (resnet18 at {args.size}, 1 thread): {alone[0]:.1f} frames/s "
        f"per core of wall time, {alone[1]:.1f} frames/s per CPU-second"
    )
    rate = report["frames_per_s"]
    print(
        f"cg-ray scenes end to end: {report['labelled']} clips x {args.frames} frames from "
        f"1280x720 JPEG (decode + resnet18 at {args.size}), {report['actors']} actors on {cpus} "
        f"CPUs: {rate:.1f} frames/s = {rate / cpus:.1f} frames/s per core "
        f"({report['seconds']:.1f} s: actors starting and loading the CNN included, Ray start-up not)"
    )
    print(
        f"text features ({args.text_model}, {'+'.join(map(str, sizes))} = {sum(sizes)} labels): "
        f"model build {build:.2f} s, encoding {encode:.2f} s "
        f"({sum(sizes) / max(encode, 1e-9):.0f} labels/s)"
    )
    print_result(
        {
            "cores": os.cpu_count(),
            "load_average_1min": round(load, 2),
            "labeller_frames_per_s_per_core": round(alone[0], 1),
            "labeller_frames_per_cpu_s": round(alone[1], 1),
            "scenes_clips": report["labelled"],
            "scenes_actors": report["actors"],
            "scenes_cpus": cpus,
            "scenes_frames_per_s": round(rate, 1),
            "scenes_frames_per_s_per_core": round(rate / cpus, 1),
            "scenes_seconds": round(report["seconds"], 1),
            "text_labels": sizes,
            "text_model_build_s": round(build, 2),
            "text_encode_s": round(encode, 2),
        }
    )


if __name__ == "__main__":
    main()
