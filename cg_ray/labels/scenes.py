"""`cg-ray scenes`: Places365 soft scene labels for every clip, as Ray Data batch inference.

    manifest.parquet rows (clip_id, source, frames)
      -> Ray Data CPU tasks: decode the T frames the model sees (evenly spaced, S x S)
      -> an actor pool (one per GPU, else one single-threaded actor per CPU): the Places365 CNN
         gives 365 probabilities per frame -> top level-2 category per frame (hierarchy.py)
         -> per clip `scene_soft` (16 fractions) and `scene_majority` (category id)
      -> the driver writes them, a part file every `flush_every` clips, under
         DEST/scenes_partial/, then merges them into a new manifest (written atomically).

Resumable: a run that stops leaves its part files; the next run with the same settings skips
every clip they hold (clips that failed are tried again) and labels the rest. A clip that cannot
be decoded is skipped, counted, listed in DEST/scenes_report.json, and keeps null labels.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cg_ray import storage
from cg_ray.console import Progress
from cg_ray.errors import UserError
from cg_ray.labels.hierarchy import NUM_SCENES
from cg_ray.labels.labeler import SceneLabeler, decode_clips
from cg_ray.ray_env import pool_plan
from cg_ray.resources import pool_resources

PARTIAL = "scenes_partial"
REPORT = "scenes_report.json"
PART_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("scene_soft", pa.list_(pa.float32())),
        ("scene_majority", pa.int32()),
        ("error", pa.string()),
    ]
)


@dataclass
class SceneOptions:
    checkpoint: str
    """Places365 checkpoint (CSAIL .pth.tar), local or URI."""
    hierarchy: str
    """The Places365 scene hierarchy sheet as CSV."""
    arch: str | None = None
    """torchvision architecture; None: the checkpoint's `arch` entry, else resnet18."""
    categories: str | None = None
    """Class names in output order; None: the Places365 list shipped with cg_ray."""
    num_frames: int = 16
    """T frames per clip, spread evenly as training samples them."""
    image_size: int = 224
    """Frames go to the CNN at S x S."""
    batch_size: int = 8
    """Clips per inference batch (x T frames per forward pass)."""
    actors: int | None = None
    """Inference actors; None: one per GPU, else one per CPU."""
    flush_every: int = 256
    """Clips per part file: at most this much work is lost when a run is interrupted."""


def _settings(opts: SceneOptions, weights: np.ndarray, arch: str) -> dict:
    """What makes two runs' labels interchangeable; part files of other settings are dropped."""
    return {
        "checkpoint": opts.checkpoint,
        "arch": arch,
        "num_frames": opts.num_frames,
        "image_size": opts.image_size,
        "hierarchy_sha256": hashlib.sha256(weights.tobytes()).hexdigest(),
    }


def load_partial(dest: str, settings: dict) -> dict[str, tuple[list[float], int]]:
    """clip_id -> (soft, majority) of the part files of an earlier run with the same settings.
    Part files of other settings are removed (their labels would mix two labellings)."""
    folder = storage.join(dest, PARTIAL)
    settings_path = storage.join(folder, "settings.json")
    if storage.exists(settings_path) and json.loads(storage.read_text(settings_path)) != settings:
        print(f"scenes: {folder} holds labels of other settings; starting over", file=sys.stderr)
        fs, inner = storage.filesystem(folder)
        fs.delete_dir(inner)
    if not storage.exists(settings_path):
        storage.write_text(settings_path, json.dumps(settings, indent=1))
        return {}
    done = {}
    for info in storage.list_dir(folder):
        if not info.base_name.endswith(".parquet"):
            continue
        table = pq.read_table(io.BytesIO(storage.read_bytes(storage.uri_of(folder, info.path))))
        for row in table.to_pylist():
            if row["error"] is None:
                done[row["clip_id"]] = (row["scene_soft"], row["scene_majority"])
    return done


def write_part(dest: str, rows: list[dict]) -> None:
    """One part file; an object appears whole or not at all (local: temp name, then rename)."""
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=PART_SCHEMA), sink)
    write_atomically(storage.join(dest, PARTIAL, f"part-{uuid.uuid4().hex}.parquet"), sink.getvalue())


def write_atomically(path: str, data: bytes) -> None:
    """Readers see the old file or the new one, never half of one."""
    if storage.is_uri(path) and not path.startswith("file://"):
        storage.write_bytes(path, data)  # an S3 object is published when its upload completes
        return
    temporary = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(temporary, data)
    fs, inner = storage.filesystem(temporary)
    fs.move(inner, storage.filesystem(path)[1])


def update_manifest(manifest: str, labels: dict[str, tuple[list[float], int]]) -> pa.Table:
    """The manifest with `scene_soft` (list<float32>, 16) and `scene_majority` (int32) from
    `labels`, null for clips without; every other column kept. Written atomically."""
    table = pq.read_table(io.BytesIO(storage.read_bytes(manifest)))
    ids = table.column("clip_id").to_pylist()
    soft = pa.array([labels[i][0] if i in labels else None for i in ids], pa.list_(pa.float32()))
    majority = pa.array([labels[i][1] if i in labels else None for i in ids], pa.int32())
    for name, column in (("scene_soft", soft), ("scene_majority", majority)):
        where = table.schema.get_field_index(name)
        table = table.set_column(where, name, column) if where >= 0 else table.append_column(name, column)
    sink = io.BytesIO()
    pq.write_table(table, sink)
    write_atomically(manifest, sink.getvalue())
    return table


def _dataset(todo: list[dict], weights: np.ndarray, places, opts: SceneOptions):
    """The Ray Data pipeline over `todo` rows: decode tasks, then the labeller actor pool."""
    import ray
    import ray.data

    plan = pool_plan(pool_resources(), opts.actors)
    state = io.BytesIO()
    torch.save(places.state_dict, state)  # once into the object store, read by every actor
    ds = ray.data.from_items(todo, override_num_blocks=min(1000, max(1, len(todo) // opts.batch_size)))
    ds = ds.map_batches(
        decode_clips,
        batch_size=opts.batch_size,
        batch_format="numpy",
        fn_kwargs=dict(num_frames=opts.num_frames, image_size=opts.image_size),
    )
    return ds.map_batches(
        SceneLabeler,
        batch_size=opts.batch_size,
        batch_format="numpy",
        fn_constructor_kwargs=dict(
            state_ref=[ray.put(state.getvalue())],
            arch=places.arch,
            num_classes=places.num_classes,
            weights=weights,
            use_gpu=plan["use_gpu"],
        ),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan["actors"]),
        num_cpus=1,
        num_gpus=plan["num_gpus"],
    ), plan


def label_scenes(dest: str, opts: SceneOptions) -> dict:
    """Label every clip of the prepared dataset `dest`; returns the summary (also written to
    DEST/scenes_report.json)."""
    from cg_ray.data.prepared import MANIFEST, PreparedDataset
    from cg_ray.labels.hierarchy import read_categories, read_hierarchy
    from cg_ray.labels.places import load_places_weights
    from cg_ray.ray_env import init_ray

    for name in ("num_frames", "image_size", "batch_size", "flush_every"):
        if getattr(opts, name) < 1:
            raise UserError(f"scenes {name}={getattr(opts, name)}: must be at least 1")
    if opts.actors is not None and opts.actors < 1:
        raise UserError(f"--actors must be at least 1, got {opts.actors}")
    dataset = PreparedDataset.open(dest)
    manifest = dataset.uri(MANIFEST)
    categories = read_categories(opts.categories)
    weights = read_hierarchy(opts.hierarchy, categories)  # bad sheets fail before Ray starts
    places = load_places_weights(opts.checkpoint, opts.arch)
    if places.num_classes != len(categories):
        raise UserError(
            f"Places365 checkpoint '{opts.checkpoint}' has {places.num_classes} "
            f"outputs but there are {len(categories)} categories; pass --categories"
        )
    rows = dataset.manifest().to_pylist()
    done = load_partial(dest, _settings(opts, weights, places.arch))
    todo = [
        {
            "clip_id": r["clip_id"],
            "source": r["source"],
            "frames": json.dumps(r.get("frames")) if r.get("frames") else "",
        }
        for r in rows
        if r["clip_id"] not in done
    ]
    skipped, plan = [], {"actors": 0, "use_gpu": False}
    if todo:
        init_ray()
    start = time.perf_counter()  # the job itself: actors start, load the CNN, label
    if todo:
        ds, plan = _dataset(todo, weights, places, opts)
        skipped = _drain(ds, dest, done, len(todo), opts)
    seconds = time.perf_counter() - start
    update_manifest(manifest, done)
    fs, inner = storage.filesystem(storage.join(dest, PARTIAL))
    fs.delete_dir(inner)
    sources = {r["clip_id"]: r["source"] for r in rows}
    labelled = len(todo) - len(skipped)
    report = {
        **asdict(opts),
        "dest": dest,
        "clips": len(rows),
        "labelled": labelled,
        "resumed": len(rows) - len(todo),
        "skipped": len(skipped),
        "frames": labelled * opts.num_frames,
        "seconds": round(seconds, 2),
        "frames_per_s": round(labelled * opts.num_frames / max(seconds, 1e-9), 2),
        "actors": plan["actors"],
        "use_gpu": plan["use_gpu"],
        "arch": places.arch,
        "majority_counts": np.bincount([m for _, m in done.values()], minlength=NUM_SCENES).tolist(),
        "skipped_clips": [{"clip_id": c, "source": sources[c], "reason": e} for c, e in skipped],
    }
    storage.write_text(storage.join(dest, REPORT), json.dumps(report, indent=1))
    if storage.exists(storage.join(dest, "shards")):
        print(
            f"scenes: {dest}/shards holds packed clips with the scene labels of pack time; "
            f"run `cg-ray pack {dest}` again so that training streams the new labels",
            file=sys.stderr,
        )
    return report


def _drain(ds, dest: str, done: dict, total: int, opts: SceneOptions) -> list[tuple[str, str]]:
    """Pull the labelled clips to the driver, writing a part file every flush_every clips.
    Fills `done`; returns the (clip_id, reason) of clips that could not be decoded."""
    progress, pending, skipped, seen = Progress("scenes", total, every=5.0), [], [], 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for clip_id, soft, majority, error in zip(
            batch["clip_id"], batch["scene_soft"], batch["scene_majority"], batch["error"]
        ):
            row = {
                "clip_id": str(clip_id),
                "scene_soft": None,
                "scene_majority": None,
                "error": str(error) or None,
            }
            if row["error"]:
                skipped.append((row["clip_id"], row["error"]))
            else:
                row.update(scene_soft=[float(v) for v in soft], scene_majority=int(majority))
                done[row["clip_id"]] = (row["scene_soft"], row["scene_majority"])
            pending.append(row)
        seen += len(batch["clip_id"])
        if len(pending) >= opts.flush_every:
            write_part(dest, pending)
            pending = []
        progress.update(seen, skipped=len(skipped))
    if pending:
        write_part(dest, pending)
    progress.close(seen, skipped=len(skipped))
    return skipped
