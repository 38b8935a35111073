"""Dataset layouts -> manifest.parquet (one row per clip) + taxonomy.json + prepare_report.json.

A layout is a function that yields manifest rows (dicts with the MANIFEST_SCHEMA columns) from a
source folder; LAYOUTS maps its name to it. prepare() runs one, checks the labels and writes the
three outputs. A clip that cannot be used is skipped and reported, never silently dropped; input
that makes the whole dataset wrong (a city nobody labelled, inconsistent labels) stops with a
UserError.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from cg_ray import storage
from cg_ray.data.decode import ClipError, frame_count
from cg_ray.data.tables import (
    NUM_SCENES,
    dirs,
    frames_per_child,
    read_csv,
    read_scene_labels,
    stratified_split,
    val_count,
)
from cg_ray.errors import UserError
from cg_ray.storage_errors import ObjectMissing
from cg_ray.taxonomy import LEVELS, Taxonomy

__all__ = [
    "LAYOUTS",
    "MANIFEST_SCHEMA",
    "NUM_SCENES",
    "PrepareOptions",
    "prepare",
    "stratified_split",
    "val_count",
]

MANIFEST_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("source", pa.string()),
        ("city", pa.string()),
        ("state", pa.string()),
        ("country", pa.string()),
        ("continent", pa.string()),
        ("split", pa.string()),
        ("num_frames", pa.int32()),
        ("scene_soft", pa.list_(pa.float32())),
        # Frame files in playing order, relative to `source`, for clips that are not a folder of
        # their own (MSLS sequences); null for frame folders and videos.
        ("frames", pa.list_(pa.string())),
        # How num_frames of a video was found: 'header' (the container's count, confirmed by
        # demuxing) or 'decoded' (counted by decoding); null for frame folders (files counted).
        ("frame_count_source", pa.string()),
    ]
)

Skipped = list  # of {"clip_id", "source", "reason"}: filled by a layout, written to the report


@dataclass
class PrepareOptions:
    val_fraction: float = 0.2
    """Share of each city's clips that go to val, when the layout has no split of its own."""
    seed: int = 0
    """Seed of that split."""
    min_frames: int | None = None
    """Clips with fewer frames are skipped and reported; None: the layout's default."""
    hierarchy: str | None = None
    """msls: a city,state,country,continent CSV (default: the 30 MSLS cities, shipped)."""
    label_order: dict[str, list[str]] | None = None
    """Set by a layout whose labels have ids of their own (the official label files): the
    names per level in id order, so that class indices keep those ids."""
    label_tree: list[dict] | None = None
    """Set with label_order: one row per label id of the source's id maps (city, state,
    country, continent), so labels without clips keep their index too."""


def cityguessr_rows(source: str, skipped: Skipped, opts: PrepareOptions) -> Iterator[dict]:
    """CityGuessr68k: the release (labels_list.csv + <split>/<City>/<video_id>/<n>.jpg), or the
    official training code's label files (txt lines of ids + a JSON of id maps) when present."""
    from cg_ray.data.official import find_official, official_rows

    official = find_official(source)
    if official is not None:
        yield from official_rows(source, official, skipped, opts)
        return
    labels_path = storage.join(source, "labels_list.csv")
    if not storage.exists(labels_path):
        raise UserError(
            f"'{source}' has no labels_list.csv (City,State,Country,Continent); "
            f"is it a CityGuessr68k folder? Use --layout videos for video files"
        )
    table = read_csv(labels_path, ["City", "State", "Country", "Continent"])
    hierarchy = [{level: row[level.capitalize()].strip() for level in LEVELS} for row in table]
    Taxonomy.from_rows(hierarchy, where="labels_list.csv row")  # refuses inconsistent rows
    by_city = {row["city"]: row for row in hierarchy}
    scenes = read_scene_labels(storage.join(source, "scene_labels.csv"))
    for split_dir in dirs(source):
        split = split_dir.base_name
        for city_dir in dirs(storage.uri_of(source, split_dir.path)):
            city_uri = storage.uri_of(source, city_dir.path)
            if city_dir.base_name not in by_city:
                raise UserError(
                    f"city folder '{city_uri}' is not in labels_list.csv; add a row "
                    f"for '{city_dir.base_name}' or remove the folder"
                )
            labels = by_city[city_dir.base_name]
            frames = frames_per_child(city_uri)
            if not any(frames.values()):
                raise UserError(
                    f"city folder '{city_uri}' has no frames in any clip folder; "
                    f"expected {city_uri}/<video_id>/1.jpg ..."
                )
            for clip_id in sorted(frames):
                clip_uri = storage.join(city_uri, clip_id)
                if frames[clip_id] == 0:
                    skipped.append(
                        {
                            "clip_id": clip_id,
                            "source": clip_uri,
                            "reason": "no .jpg/.jpeg/.png frames in the clip folder",
                        }
                    )
                    continue
                yield dict(
                    clip_id=clip_id,
                    source=clip_uri,
                    **labels,
                    split=split,
                    num_frames=frames[clip_id],
                    scene_soft=scenes.get(clip_id),
                )


def video_rows(source: str, skipped: Skipped, opts: PrepareOptions) -> Iterator[dict]:
    """Video files listed in a CSV (SOURCE itself or SOURCE/labels.csv):
    path,city,state,country,continent[,split]; paths relative to the CSV's folder or absolute."""
    csv_path = storage.join(source, "labels.csv") if storage.is_dir(source) else source
    if not storage.exists(csv_path):
        raise UserError(
            f"'{source}' has no labels.csv (path,city,state,country,continent"
            f"[,split]); pass the CSV itself or the folder holding it"
        )
    table = read_csv(csv_path, ["path", *LEVELS])
    name = posixpath.basename(csv_path)
    Taxonomy.from_rows(table, where=f"{name} row")  # refuses inconsistent rows, naming them
    given = [(row.get("split") or "").strip() for row in table]
    if any(given) and not all(given):
        raise UserError(
            f"'{csv_path}' row {given.index('') + 1} has no split while others do; "
            f"fill the split column everywhere or leave it out"
        )
    base = (
        posixpath.dirname(csv_path)
        if storage.is_uri(csv_path)
        else os.path.dirname(storage.filesystem(csv_path)[1])
    )
    scenes = read_scene_labels(storage.join(base, "scene_labels.csv"))
    ids = _video_clip_ids([row["path"].strip() for row in table])
    usable, seen = [], {}
    for number, (row, split, clip_id) in enumerate(zip(table, given, ids), start=1):
        given_path = row["path"].strip()
        path = given_path
        if not (storage.is_uri(path) or os.path.isabs(path)):
            path = storage.join(base, path)
        if clip_id in seen:  # the same file listed twice: the first row wins, the rest go on
            skipped.append(
                {
                    "clip_id": clip_id,
                    "source": path,
                    "reason": f"{name} row {number}: '{given_path}' listed twice "
                    f"(first in row {seen[clip_id]})",
                }
            )
            continue
        seen[clip_id] = number
        try:
            num_frames, counted = frame_count(path)
            if num_frames == 0:
                raise ClipError(f"video '{path}' has no frames")
        except (ClipError, ObjectMissing) as exc:  # listed but absent or unreadable: the list's fault
            skipped.append({"clip_id": clip_id, "source": path, "reason": str(exc)})
            continue
        stem = posixpath.splitext(given_path)[0]
        usable.append(
            dict(
                clip_id=clip_id,
                source=path,
                **{level: row[level].strip() for level in LEVELS},
                split=split,
                num_frames=num_frames,
                frame_count_source=counted,
                scene_soft=scenes.get(clip_id, scenes.get(stem, scenes.get(posixpath.basename(stem)))),
            )
        )
    yield from usable  # without a split column, prepare() splits them by city


def _video_clip_ids(paths: list[str]) -> list[str]:
    """A clip id per listed path: the path as written, less its extension (unique even when two
    cities both hold a "clip1.mp4"); with its extension when two files differ only by it
    (x.avi and x.mov). scene_labels.csv may key a clip by its id, the path less its extension,
    or the bare file stem."""
    stems = [posixpath.splitext(path)[0] for path in paths]
    files = {}
    for stem, path in zip(stems, paths):
        files.setdefault(stem, set()).add(path)
    return [path if len(files[stem]) > 1 else stem for stem, path in zip(stems, paths)]


@dataclass
class Layout:
    rows: Callable[[str, Skipped, PrepareOptions], Iterator[dict]]
    """Yields manifest rows (split "" when the layout has none) and fills `skipped`."""
    min_frames: int = 1
    """Default of --min-frames."""


def _msls(source: str, skipped: Skipped, opts: PrepareOptions) -> Iterator[dict]:
    from cg_ray.data.msls import msls_rows

    return msls_rows(source, skipped, opts)


LAYOUTS: dict[str, Layout] = {
    "cityguessr": Layout(cityguessr_rows),
    "msls": Layout(_msls, min_frames=15),  # the CityGuessr paper keeps sequences of >= 15 frames
    "videos": Layout(video_rows),
}


def _usable(rows: list[dict], min_frames: int, skipped: Skipped) -> list[dict]:
    """Rows with at least min_frames frames; the others go to `skipped` with the reason."""
    kept = []
    for row in rows:
        if row["num_frames"] < min_frames:
            skipped.append(
                {
                    "clip_id": row["clip_id"],
                    "source": row["source"],
                    "reason": f"{row['num_frames']} frames, fewer than --min-frames {min_frames}",
                }
            )
        else:
            kept.append(row)
    return kept


def _assign_splits(rows: list[dict], source: str, opts: PrepareOptions) -> None:
    """Rows without a split are split by city (after skipping, so every city keeps its share)."""
    given = [bool(row.get("split")) for row in rows]
    if all(given):
        return
    if any(given):
        row = rows[given.index(False)]
        raise UserError(f"clip '{row['clip_id']}' in '{source}' has no split while others do")
    for row, split in zip(rows, stratified_split([r["city"] for r in rows], opts.val_fraction, opts.seed)):
        row["split"] = split


def prepare(
    layout: str,
    source: str,
    dest: str,
    val_fraction: float = 0.2,
    seed: int = 0,
    min_frames: int | None = None,
    hierarchy: str | None = None,
) -> dict:
    """Read a dataset in `layout` from `source`; write DEST/manifest.parquet, taxonomy.json and
    prepare_report.json. Returns the report (clips per split and per label, skipped clips)."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout '{layout}'; known layouts: {', '.join(sorted(LAYOUTS))}")
    if not storage.exists(source):
        raise UserError(f"source '{source}' does not exist{storage.why_missing(source)}")
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction} must be in [0, 1)")
    spec = LAYOUTS[layout]
    opts = PrepareOptions(
        val_fraction, seed, spec.min_frames if min_frames is None else min_frames, hierarchy
    )
    skipped: Skipped = []
    rows = _usable(list(spec.rows(source, skipped, opts)), opts.min_frames, skipped)
    if not rows:
        raise UserError(
            f"no clips found in '{source}' (layout '{layout}', {len(skipped)} "
            f"skipped); check the folder layout"
        )
    _assign_splits(rows, source, opts)
    taxonomy = Taxonomy.from_rows(rows + (opts.label_tree or []), where="clip", order=opts.label_order)
    ids = Counter(row["clip_id"] for row in rows)
    if len(ids) < len(rows):
        dup = next(k for k, v in ids.items() if v > 1)
        raise UserError(
            f"clip id '{dup}' appears {ids[dup]} times in '{source}'; clip ids "
            f"(folder or file names) must be unique"
        )
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    fs, path = storage.filesystem(storage.join(dest, "manifest.parquet"))
    fs.create_dir(posixpath.dirname(path) if storage.is_uri(dest) else os.path.dirname(path), recursive=True)
    pq.write_table(table, path, filesystem=fs)
    storage.write_text(storage.join(dest, "taxonomy.json"), taxonomy.to_json())
    report = {
        "layout": layout,
        "source": source,
        "dest": dest,
        "clips": len(rows),
        "min_frames": opts.min_frames,
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
        "sizes": dict(zip(LEVELS, taxonomy.sizes)),
        "clips_per_label": {level: dict(sorted(Counter(r[level] for r in rows).items())) for level in LEVELS},
        "clips_per_split_and_label": {
            split: {
                level: dict(sorted(Counter(r[level] for r in rows if r["split"] == split).items()))
                for level in LEVELS
            }
            for split in sorted({r["split"] for r in rows})
        },
        "with_scene_labels": sum(r["scene_soft"] is not None for r in rows),
        "skipped": skipped,
    }
    storage.write_text(storage.join(dest, "prepare_report.json"), json.dumps(report, indent=1))
    return report
