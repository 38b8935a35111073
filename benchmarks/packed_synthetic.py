"""A packed dataset of any size and any label sizes, written directly (no prepare, no Ray).

    write_packed_dataset(out, train_clips=2400, val_clips=240, num_frames=16, image_size=224)

What `cg-ray prepare` + `cg-ray text` + `cg-ray pack` would leave, for benchmarks that need
CityGuessr68k's label sizes (166 cities, 157 states, 91 countries, 6 continents) and realistic
JPEG frames, fast: taxonomy.json, manifest.parquet (sources: a few real frame folders under
OUT/raw, for the commands that decode raw clips), text_features.parquet (random unit vectors)
and shards/frames{T}_size{S}/ with pack_report.json. Shard files after the first of a split are
hard links to it (the same clips in another file, so another order every epoch): a long epoch
costs no disk.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cg_ray.data.layouts import MANIFEST_SCHEMA  # noqa: E402
from cg_ray.data.pack import encode_jpeg  # noqa: E402
from cg_ray.data.prepared import PreparedDataset  # noqa: E402
from cg_ray.data.shards import PACK_SCHEMA, REPORT, pack_dir  # noqa: E402
from cg_ray.labels.text import save_text_features  # noqa: E402
from cg_ray.taxonomy import LEVELS, Taxonomy  # noqa: E402

CITYGUESSR_SIZES = (166, 157, 91, 6)


def taxonomy_of(sizes) -> Taxonomy:
    """A tree with exactly `sizes` labels per level (city, state, country, continent)."""
    cities, states, countries, continents = sizes
    rows = [
        {
            "city": f"city{c:03d}",
            "state": f"state{c % states:03d}",
            "country": f"country{(c % states) % countries:03d}",
            "continent": f"continent{((c % states) % countries) % continents}",
        }
        for c in range(max(cities, states))
    ]
    taxonomy = Taxonomy.from_rows(rows[:cities] if cities >= states else rows)
    if taxonomy.sizes != list(sizes):
        raise ValueError(f"label sizes {sizes} cannot form a tree (got {taxonomy.sizes})")
    return taxonomy


def frame_pool(count: int, size: int, seed: int = 0) -> list[bytes]:
    """`count` JPEG frames (quality 90, as `cg-ray pack` stores them) of smooth colour fields
    with blocks and mild noise: about the bytes per pixel of street frames."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    frames = []
    for _ in range(count):
        base = rng.uniform(40, 200, 3)
        image = (
            base
            + 50
            * np.stack(
                [np.sin(2 * np.pi * (x * rng.uniform(0.5, 3) + rng.uniform())) for _ in range(3)], axis=-1
            )
            * y[..., None]
        )
        for _ in range(12):
            x0, y0 = rng.integers(0, size, 2)
            w = int(rng.integers(size // 16, size // 4) + 1)
            image[y0 : y0 + w, x0 : x0 + w] = rng.uniform(0, 255, 3)
        image += rng.normal(0, 6, image.shape)
        frames.append(encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), 90))
    return frames


def _label_rows(taxonomy: Taxonomy, count: int, start: int = 0) -> list[dict]:
    cities = taxonomy.labels["city"]
    parent = {level: taxonomy.parents[level] for level in LEVELS[:-1]}
    rows = []
    for k in range(start, start + count):
        ids = {"city": k % len(cities)}
        for child, up in zip(LEVELS[:-1], LEVELS[1:]):
            ids[up] = parent[child][ids[child]]
        rows.append({level: taxonomy.labels[level][ids[level]] for level in LEVELS})
    return rows


def _scenes(rng, n: int) -> np.ndarray:
    soft = rng.dirichlet(np.full(16, 0.5), n).astype(np.float32)
    return soft


def write_packed_dataset(
    out: str,
    *,
    train_clips: int,
    val_clips: int,
    num_frames: int,
    image_size: int,
    sizes=CITYGUESSR_SIZES,
    raw_clips: int = 4,
    text_dim: int = 512,
    per_file: int = 120,
    seed: int = 0,
) -> dict:
    """Write the dataset under `out` (replacing it); returns what it wrote."""
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    rng = np.random.default_rng(seed)
    taxonomy = taxonomy_of(sizes)
    open(os.path.join(out, "taxonomy.json"), "w").write(taxonomy.to_json())
    pool = frame_pool(max(2 * num_frames, 32), image_size, seed)

    raw = []  # real frame folders: what predict, batch predict and scenes decode
    for k in range(raw_clips):
        folder = os.path.join(out, "raw", f"clip{k:04d}")
        os.makedirs(folder)
        for t in range(num_frames):
            open(os.path.join(folder, f"{t}.jpg"), "wb").write(pool[(k * 5 + t) % len(pool)])
        raw.append(folder)

    manifest = []
    counts = {"train": train_clips, "val": val_clips}
    for split, count in counts.items():
        labels = _label_rows(taxonomy, count)
        scenes = _scenes(rng, count)
        for k in range(count):
            manifest.append(
                {
                    "clip_id": f"{split}{k:06d}",
                    "source": raw[k % len(raw)] if raw else "",
                    **labels[k],
                    "split": split,
                    "num_frames": num_frames,
                    "scene_soft": scenes[k].tolist(),
                    "frames": None,
                }
            )
    pq.write_table(
        pa.Table.from_pylist(manifest, schema=MANIFEST_SCHEMA), os.path.join(out, "manifest.parquet")
    )

    root = pack_dir(out, num_frames, image_size)
    shards = {}
    for split, count in counts.items():
        rows = [r for r in manifest if r["split"] == split][: min(per_file, count)]
        table = pa.Table.from_pylist(
            [
                {
                    "clip_id": r["clip_id"],
                    "split": split,
                    **{level: r[level] for level in LEVELS},
                    "scene_soft": r["scene_soft"],
                    "scene_majority": int(np.argmax(r["scene_soft"])),
                    "frames": [pool[(i * 7 + t) % len(pool)] for t in range(num_frames)],
                    "error": None,
                }
                for i, r in enumerate(rows)
            ],
            schema=PACK_SCHEMA,
        )
        os.makedirs(os.path.join(root, split))
        names = []
        for f in range(-(-count // per_file)):
            names.append(f"{split}/part-{f:05d}.parquet")
            size = min(per_file, count - f * per_file)
            if f == 0 or size != table.num_rows:
                pq.write_table(table.slice(0, size), os.path.join(root, names[-1]), compression="NONE")
            else:
                os.link(os.path.join(root, names[0]), os.path.join(root, names[-1]))
        shards[split] = names
    report = {
        "dest": root,
        "clips": train_clips + val_clips,
        "shards": shards,
        "manifest": PreparedDataset(out).stamp(),
        "skipped": [],
        "options": {"num_frames": num_frames, "image_size": image_size, "quality": 90},
    }
    open(os.path.join(root, REPORT), "w").write(json.dumps(report, indent=1))

    vectors = {
        level: rng.normal(size=(n, text_dim)).astype(np.float32) for level, n in zip(LEVELS, taxonomy.sizes)
    }
    save_text_features(
        out, {k: v / np.linalg.norm(v, axis=1, keepdims=True) for k, v in vectors.items()}, taxonomy
    )
    jpeg_bytes = sum(
        len(pool[(i * 7 + t) % len(pool)])
        for i in range(min(per_file, train_clips))
        for t in range(num_frames)
    ) / max(min(per_file, train_clips), 1)
    return {
        "path": out,
        "raw": raw,
        "sizes": taxonomy.sizes,
        "train_clips": train_clips,
        "val_clips": val_clips,
        "jpeg_bytes_per_clip": round(jpeg_bytes),
        "pixel_bytes_per_clip": num_frames * image_size * image_size * 3,
    }
