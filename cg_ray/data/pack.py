"""`cg-ray pack`: raw clips -> training shards of T JPEG frames at S x S, once, in parallel.

    manifest.parquet --(driver: seeded shuffle per split, cut into shards)--> shard plans
      --(Ray Data, one task per shard, parallel over the cluster's CPUs)-->
        read each clip once, decode only its T sampled frames (JPEG at reduced DCT scale, video
        by seeking), resize, encode as JPEG -> DEST/shards/frames{T}_size{S}/{split}/part-N.parquet
      --> pack_report.json (written last: shards, clips, every skipped clip and why)

Rows are shuffled before they are cut into shards so that every shard mixes cities: streaming
reads a shard at a time. A shard file appears only when complete (written under a temporary name
and renamed; an S3 object is invisible until its upload completes), so a re-run skips every
shard that exists and packs the rest. The driver holds the manifest's rows (a few hundred bytes a
clip), never pixels.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import sys
import time
import uuid
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cg_ray import storage
from cg_ray.console import Progress
from cg_ray.data.decode import ClipError, decode_clip
from cg_ray.data.packed_sampling import PACK_KINDS
from cg_ray.data.prepared import PreparedDataset
from cg_ray.data.sampling import Sampling
from cg_ray.data.shards import LABEL_COLUMNS, PACK_SCHEMA, REPORT, pack_dir, shard_path
from cg_ray.errors import UserError
from cg_ray.storage_errors import StorageError, StorageUnavailable
from cg_ray.taxonomy import LEVELS

PLAN = "pack_plan.json"


@dataclass
class PackOptions:
    num_frames: int = 16
    """F: frames stored per clip (F >= T: the loader samples T of them; see packed_sampling)."""
    image_size: int = 224
    """S: frames are stored at S x S."""
    quality: int = 90
    """JPEG quality of the stored frames."""
    clips_per_shard: int = 120
    """Clips per shard file (120 x 16 frames at 224: about 20-40 MB); 120 is a multiple of the
    usual batch sizes, so a shard's batches never straddle two files."""
    min_frames: int = 1
    """A clip with fewer frames is skipped and reported."""
    seed: int = 0
    """Seed of the order in which clips are spread over shards."""
    sampling: str = "uniform"
    """Which F frames: 'uniform' (evenly spaced, serves uniform, random and bidirectional) or
    'official' (every 5th from the first, serves data.sampling=official)."""


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    """(S, S, 3) uint8 -> JPEG bytes (libjpeg-turbo through simplejpeg, else PIL)."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
        return buf.getvalue()
    return simplejpeg.encode_jpeg(np.ascontiguousarray(frame), quality=quality, colorspace="RGB")


def pack_clip(row: dict, opts: PackOptions) -> tuple[list[bytes], str | None]:
    """One manifest row -> (T JPEG frames, None), or ([], the reason it cannot be packed)."""
    try:
        clip = decode_clip(
            row["source"],
            opts.num_frames,
            opts.image_size,
            frames=row.get("frames"),
            min_frames=opts.min_frames,
            sampling=Sampling(opts.sampling, opts.num_frames),
        )
    except (StorageError, StorageUnavailable):
        raise  # the store's fault, not the clip's: retried, then the job stops
    except ClipError as exc:
        return [], str(exc)
    except Exception as exc:  # noqa: BLE001 - one odd file must not kill the pack job
        return [], f"cannot read clip '{row['source']}': {type(exc).__name__}: {exc}"
    return [encode_jpeg(frame, opts.quality) for frame in clip], None


def _write_atomically(table: pa.Table, path: str) -> None:
    with storage.errors_named(path):
        _write_table(table, path)


def _write_table(table: pa.Table, path: str) -> None:
    fs, inner = storage.filesystem(path)
    fs.create_dir(
        posixpath.dirname(inner) if storage.is_uri(path) else os.path.dirname(inner), recursive=True
    )
    compression = {name: ("NONE" if name == "frames" else "SNAPPY") for name in table.column_names}
    if storage.is_uri(path) and not path.startswith("file://"):
        # An object store publishes an object only when its upload completes.
        pq.write_table(table, inner, filesystem=fs, compression=compression, row_group_size=32)
        return
    temporary = f"{inner}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(table, temporary, filesystem=fs, compression=compression, row_group_size=32)
    fs.move(temporary, inner)


def _packed_frames(path: str) -> dict[str, tuple[list[bytes], str | None]] | None:
    """clip_id -> (frames, error) of an existing shard, or None when there is none."""
    if not storage.exists(path):
        return None
    fs, inner = storage.filesystem(path)
    with storage.errors_named(path):
        table = pq.read_table(inner, columns=["clip_id", "frames", "error"], filesystem=fs)
    return {r["clip_id"]: (r["frames"], r["error"]) for r in table.to_pylist()}


def pack_shard(plan: pa.Table, opts: dict) -> pa.Table:
    """A Ray Data task: the manifest rows of one shard -> the shard file, and a one-row summary.
    A shard that exists already keeps its frames and takes the manifest's labels (relabel)."""
    options = PackOptions(**opts)
    start = time.perf_counter()
    path = plan.column("shard").to_pylist()[0]
    existing = _packed_frames(path) or {}
    rows, skipped, packed = [], [], 0
    for row in plan.to_pylist():
        frames, error = existing.get(row["clip_id"]) or pack_clip(row, options)
        packed += row["clip_id"] not in existing and not error
        if error:
            skipped.append({"clip_id": row["clip_id"], "source": row["source"], "reason": error})
        rows.append(
            {
                "clip_id": row["clip_id"],
                **{k: row.get(k) for k in LABEL_COLUMNS},
                "frames": frames,
                "error": error,
            }
        )
    _write_atomically(pa.Table.from_pylist(rows, schema=PACK_SCHEMA), path)
    return pa.table(
        {
            "shard": [path],
            "rows": [len(rows)],
            "clips": [packed],  # decoded and packed now: not relabelled, not skipped
            "skipped": [json.dumps(skipped)],
            "seconds": [time.perf_counter() - start],
        }
    )


def _manifest(dataset: PreparedDataset) -> pa.Table:
    return dataset.manifest(
        columns=["clip_id", "source", *LEVELS, "split", "scene_soft", "scene_majority", "frames"]
    )


def plan_shards(table: pa.Table, root: str, opts: PackOptions) -> list[pa.Table]:
    """Manifest rows -> one table per shard (a `shard` column holds its path), per split in a
    seeded random order, so that a shard holds a mix of cities and the plan is reproducible."""
    rng = np.random.default_rng(opts.seed)
    splits = table.column("split").to_numpy(zero_copy_only=False)
    plans = []
    for split in sorted(set(splits.tolist())):
        rows = np.flatnonzero(splits == split)
        rows = rows[rng.permutation(len(rows))]
        for index, start in enumerate(range(0, len(rows), opts.clips_per_shard)):
            part = table.take(pa.array(rows[start : start + opts.clips_per_shard]))
            path = shard_path(root, split, index)
            plans.append(part.append_column("shard", pa.array([path] * part.num_rows)))
    return plans


def _fingerprint(table: pa.Table, opts: PackOptions) -> dict:
    ids = hashlib.sha256("\n".join(table.column("clip_id").to_pylist()).encode()).hexdigest()
    options = asdict(opts)
    if options["sampling"] == "uniform":  # the plans of packs made before the option match
        del options["sampling"]
    return {"options": options, "clips": table.num_rows, "clip_ids_sha256": ids}


def _check_plan(root: str, fingerprint: dict, stamp: dict) -> dict | None:
    """A re-run resumes only the same pack: same clips, same options. Returns the manifest
    stamp the existing shards were labelled from (None for a new pack). pack() records the new
    stamp only once every shard carries its labels, so an interrupted relabel resumes too."""
    path = storage.join(root, PLAN)
    before = json.loads(storage.read_text(path)) if storage.exists(path) else None
    if before is not None:
        labelled_from = before.pop("manifest", None)
        if before != fingerprint:
            old, new = before["options"], fingerprint["options"]
            changed = sorted(k for k in old if old[k] != new.get(k))
            what = f"options {changed}" if changed else "the manifest's clips"
            raise UserError(
                f"'{root}' holds shards of another pack ({what} differ); delete that "
                f"folder to pack again, or rerun with the same options"
            )
        return labelled_from
    storage.write_text(path, json.dumps({**fingerprint, "manifest": stamp}, indent=1))
    return None


def _clear_temporaries(root: str) -> None:
    """Half-written shards of an interrupted run (local disks only: S3 keeps none)."""
    for info in storage.list_dir(root, recursive=True):
        if info.is_file and ".parquet.tmp-" in info.base_name:
            storage.filesystem(root)[0].delete_file(info.path)


def _skipped_in(path: str) -> list[dict]:
    """The clips a finished shard holds without frames, read from its small columns only."""
    fs, inner = storage.filesystem(path)
    with storage.errors_named(path):
        table = pq.read_table(inner, columns=["clip_id", "error"], filesystem=fs)
    return [{"clip_id": r["clip_id"], "reason": r["error"]} for r in table.to_pylist() if r["error"]]


def pack(data_path: str, opts: PackOptions | None = None, log=print) -> dict:
    """Pack a prepared dataset; returns the report (also written to the pack folder)."""
    import ray.data

    from cg_ray.ray_env import init_ray

    opts = opts or PackOptions()
    if (
        min(opts.num_frames, opts.image_size, opts.clips_per_shard, opts.min_frames) < 1
        or not 1 <= opts.quality <= 100
    ):
        raise UserError(f"pack options must be positive and quality in 1..100; got {asdict(opts)}")
    if opts.sampling not in PACK_KINDS:
        raise UserError(f"pack --sampling {opts.sampling!r}: must be one of {', '.join(PACK_KINDS)}")
    dataset = PreparedDataset.open(data_path)
    table = _manifest(dataset)
    root = pack_dir(dataset, opts.num_frames, opts.image_size, opts.sampling)
    stamp = dataset.stamp()
    labelled_from = _check_plan(root, _fingerprint(table, opts), stamp)
    _clear_temporaries(root)
    plans = plan_shards(table, root, opts)
    done = {p.column("shard")[0].as_py() for p in plans if storage.exists(p.column("shard")[0].as_py())}
    todo = [p for p in plans if p.column("shard")[0].as_py() not in done]
    if done and labelled_from != stamp:
        # The manifest changed since (new scene labels, a new prepare of the same clips): the
        # packed frames stay, every shard is rewritten with the manifest's labels.
        log(f"pack: the manifest changed since the last pack; relabelling {len(done)} shards")
        todo, done = plans, set()
    log(
        f"pack: {table.num_rows} clips in {len(plans)} shards under {root}; "
        f"{len(done)} shards already done, {len(todo)} to pack"
    )
    skipped, start, packed = [], time.perf_counter(), 0
    if done:
        sources = dict(zip(table.column("clip_id").to_pylist(), table.column("source").to_pylist()))
        for path in sorted(done):
            skipped.extend({**s, "source": sources.get(s["clip_id"])} for s in _skipped_in(path))
    if todo:
        init_ray()
        start = time.perf_counter()
        # from_blocks: the plans' metadata read here, not by a Ray task per shard (from_arrow)
        summaries = ray.data.from_blocks(todo).map_batches(
            pack_shard, batch_size=None, batch_format="pyarrow", fn_kwargs={"opts": asdict(opts)}, num_cpus=1
        )
        progress = Progress("pack", sum(p.num_rows for p in todo), stream=sys.stdout)
        rows = 0
        for i, row in enumerate(summaries.iter_rows(), start=1):
            rows, packed = rows + row["rows"], packed + row["clips"]
            skipped.extend(json.loads(row["skipped"]))
            progress.update(rows, shards=f"{i}/{len(todo)}")
        progress.close(rows, skipped=len(skipped))
    report = _report(root, plans, table, opts, skipped, packed, time.perf_counter() - start)
    report["manifest"] = stamp
    storage.write_text(
        storage.join(root, PLAN), json.dumps({**_fingerprint(table, opts), "manifest": stamp}, indent=1)
    )
    storage.write_text(storage.join(root, REPORT), json.dumps(report, indent=1))
    return report


def _report(root, plans, table, opts, skipped, packed, seconds) -> dict:
    shards: dict[str, list[str]] = {}
    for plan in plans:
        split = plan.column("split")[0].as_py()
        rel = plan.column("shard")[0].as_py()[len(root) :].lstrip("/\\")
        shards.setdefault(split, []).append(rel)
    return {
        "dest": root,
        "options": asdict(opts),
        "clips": table.num_rows,
        "packed_now": packed,
        "seconds": round(seconds, 2),
        "clips_per_s": round(packed / seconds, 2) if packed and seconds else None,
        "shards": shards,
        "skipped": sorted(skipped, key=lambda s: s["clip_id"]),
    }
