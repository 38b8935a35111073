"""Dataset layouts -> manifest.parquet (one row per clip) + taxonomy.json + prepare_report.json.

A layout is a function that yields manifest rows (dicts with the MANIFEST_SCHEMA columns) from a
source folder; LAYOUTS maps its name to it. prepare() runs one, checks the labels and writes the
three outputs. A clip that cannot be used is skipped and reported, never silently dropped; input
that makes the whole dataset wrong (a city nobody labelled, inconsistent labels) stops with a
UserError.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections import Counter, defaultdict
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cg_ray import storage
from cg_ray.data.decode import ClipError, count_frames, is_frame_name
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

NUM_SCENES = 16
MANIFEST_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("source", pa.string()),
    ("city", pa.string()), ("state", pa.string()), ("country", pa.string()),
    ("continent", pa.string()), ("split", pa.string()), ("num_frames", pa.int32()),
    ("scene_soft", pa.list_(pa.float32())),
])

Skipped = list  # of {"clip_id", "source", "reason"}: filled by a layout, written to the report


def val_count(num_clips: int, val_fraction: float) -> int:
    """Clips of one city that go to val: the fraction, at least 1, but never all of them."""
    if val_fraction <= 0 or num_clips < 2:
        return 0
    return min(max(1, round(num_clips * val_fraction)), num_clips - 1)


def _read_csv(path: str, columns: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header that must hold `columns` (a BOM from Excel is tolerated)."""
    reader = csv.DictReader(io.StringIO(storage.read_text(path).lstrip("\ufeff")))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"'{path}' is missing columns {missing}; its header must have {columns}")
    return list(reader)


def _read_scene_labels(path: str) -> dict[str, list[float]]:
    """video_id -> 16 scene fractions, from scene_labels.csv when the dataset has one."""
    if not storage.exists(path):
        return {}
    columns = [f"scene_{i}" for i in range(NUM_SCENES)]
    rows = _read_csv(path, ["video_id"] + columns)
    out = {}
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            out[row["video_id"]] = [float(row[c]) for c in columns]
        except (TypeError, ValueError):
            raise UserError(f"'{path}' line {number}: scene values must be 16 numbers") from None
    return out


def _dirs(path: str) -> list[pafs.FileInfo]:
    # Hidden and underscore folders (.ipynb_checkpoints, _tmp) are never data.
    return [i for i in storage.list_dir(path)
            if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))]


def cityguessr_rows(source: str, skipped: Skipped, val_fraction: float,
                    seed: int) -> Iterator[dict]:
    """CityGuessr68k release: labels_list.csv + <split>/<City>/<video_id>/<n>.jpg."""
    labels_path = storage.join(source, "labels_list.csv")
    if not storage.exists(labels_path):
        raise UserError(f"'{source}' has no labels_list.csv (City,State,Country,Continent); "
                        f"is it a CityGuessr68k folder? Use --layout videos for video files")
    table = _read_csv(labels_path, ["City", "State", "Country", "Continent"])
    hierarchy = [{level: row[level.capitalize()].strip() for level in LEVELS} for row in table]
    Taxonomy.from_rows(hierarchy, where="labels_list.csv row")  # refuses inconsistent rows
    by_city = {row["city"]: row for row in hierarchy}
    scenes = _read_scene_labels(storage.join(source, "scene_labels.csv"))
    for split_dir in _dirs(source):
        split = split_dir.base_name
        for city_dir in _dirs(storage.uri_of(source, split_dir.path)):
            city_uri = storage.uri_of(source, city_dir.path)
            if city_dir.base_name not in by_city:
                raise UserError(f"city folder '{city_uri}' is not in labels_list.csv; add a row "
                                f"for '{city_dir.base_name}' or remove the folder")
            labels = by_city[city_dir.base_name]
            # One recursive listing per city, not one per clip: on S3 that is 166 listings
            # instead of 68k.
            frames: dict[str, int] = {}
            for info in storage.list_dir(city_uri, recursive=True):
                parts = posixpath.relpath(info.path, city_dir.path).split("/")
                if len(parts) == 1 and info.type == pafs.FileType.Directory:
                    frames.setdefault(parts[0], 0)
                elif len(parts) == 2 and info.is_file and is_frame_name(parts[1]):
                    frames[parts[0]] = frames.get(parts[0], 0) + 1
            if not any(frames.values()):
                raise UserError(f"city folder '{city_uri}' has no frames in any clip folder; "
                                f"expected {city_uri}/<video_id>/1.jpg ...")
            for clip_id in sorted(frames):
                clip_uri = storage.join(city_uri, clip_id)
                if frames[clip_id] == 0:
                    skipped.append({"clip_id": clip_id, "source": clip_uri,
                                    "reason": "no .jpg/.jpeg/.png frames in the clip folder"})
                    continue
                yield dict(clip_id=clip_id, source=clip_uri, **labels, split=split,
                           num_frames=frames[clip_id], scene_soft=scenes.get(clip_id))


def stratified_split(cities: list[str], val_fraction: float, seed: int) -> list[str]:
    """'train'/'val' per row: per city, val_count() of its rows (chosen with the seed) go to val."""
    rng = np.random.default_rng(seed)
    rows_of = defaultdict(list)
    for i, city in enumerate(cities):
        rows_of[city].append(i)
    splits = ["train"] * len(cities)
    for city in sorted(rows_of):
        rows = rows_of[city]
        for i in rng.permutation(rows)[: val_count(len(rows), val_fraction)]:
            splits[int(i)] = "val"
    return splits


def video_rows(source: str, skipped: Skipped, val_fraction: float, seed: int) -> Iterator[dict]:
    """Video files listed in a CSV (SOURCE itself or SOURCE/labels.csv):
    path,city,state,country,continent[,split]; paths relative to the CSV's folder or absolute."""
    csv_path = storage.join(source, "labels.csv") if storage.is_dir(source) else source
    if not storage.exists(csv_path):
        raise UserError(f"'{source}' has no labels.csv (path,city,state,country,continent"
                        f"[,split]); pass the CSV itself or the folder holding it")
    table = _read_csv(csv_path, ["path", *LEVELS])
    name = posixpath.basename(csv_path)
    Taxonomy.from_rows(table, where=f"{name} row")  # refuses inconsistent rows, naming them
    given = [(row.get("split") or "").strip() for row in table]
    if any(given) and not all(given):
        raise UserError(f"'{csv_path}' row {given.index('') + 1} has no split while others do; "
                        f"fill the split column everywhere or leave it out")
    base = posixpath.dirname(csv_path) if storage.is_uri(csv_path) else \
        os.path.dirname(storage.filesystem(csv_path)[1])
    scenes = _read_scene_labels(storage.join(base, "scene_labels.csv"))
    usable = []
    for row, split in zip(table, given):
        given_path = row["path"].strip()
        path = given_path
        if not (storage.is_uri(path) or os.path.isabs(path)):
            path = storage.join(base, path)
        # The path as written, less its extension: unique even when two cities both hold a
        # "clip1.mp4". scene_labels.csv may key a clip by that or by the bare file stem.
        clip_id = posixpath.splitext(given_path)[0]
        try:
            num_frames = count_frames(path)
            if num_frames == 0:
                raise ClipError(f"video '{path}' has no frames")
        except ClipError as exc:
            skipped.append({"clip_id": clip_id, "source": path, "reason": str(exc)})
            continue
        usable.append(dict(
            clip_id=clip_id, source=path, **{level: row[level].strip() for level in LEVELS},
            split=split, num_frames=num_frames,
            scene_soft=scenes.get(clip_id, scenes.get(posixpath.basename(clip_id)))))
    if not any(given):
        # Split after skipping unreadable videos, so every city keeps its share of val clips.
        splits = stratified_split([row["city"] for row in usable], val_fraction, seed)
        for row, split in zip(usable, splits):
            row["split"] = split
    yield from usable


LAYOUTS: dict[str, Callable[[str, Skipped, float, int], Iterator[dict]]] = {
    "cityguessr": cityguessr_rows,
    "videos": video_rows,
}


def prepare(layout: str, source: str, dest: str, val_fraction: float = 0.2,
            seed: int = 0) -> dict:
    """Read a dataset in `layout` from `source`; write DEST/manifest.parquet, taxonomy.json and
    prepare_report.json. Returns the report (clips per split and per label, skipped clips)."""
    if layout not in LAYOUTS:
        raise UserError(f"unknown layout '{layout}'; known layouts: {', '.join(sorted(LAYOUTS))}")
    if not storage.exists(source):
        raise UserError(f"source '{source}' does not exist")
    skipped: Skipped = []
    rows = list(LAYOUTS[layout](source, skipped, val_fraction, seed))
    if not rows:
        raise UserError(f"no clips found in '{source}' (layout '{layout}', {len(skipped)} "
                        f"skipped); check the folder layout")
    taxonomy = Taxonomy.from_rows(rows, where="clip")
    ids = Counter(row["clip_id"] for row in rows)
    if len(ids) < len(rows):
        dup = next(k for k, v in ids.items() if v > 1)
        raise UserError(f"clip id '{dup}' appears {ids[dup]} times in '{source}'; clip ids "
                        f"(folder or file names) must be unique")
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    fs, path = storage.filesystem(storage.join(dest, "manifest.parquet"))
    fs.create_dir(posixpath.dirname(path) if storage.is_uri(dest) else os.path.dirname(path),
                  recursive=True)
    pq.write_table(table, path, filesystem=fs)
    storage.write_text(storage.join(dest, "taxonomy.json"), taxonomy.to_json())
    report = {
        "layout": layout, "source": source, "dest": dest, "clips": len(rows),
        "splits": dict(sorted(Counter(r["split"] for r in rows).items())),
        "sizes": dict(zip(LEVELS, taxonomy.sizes)),
        "clips_per_label": {level: dict(sorted(Counter(r[level] for r in rows).items()))
                            for level in LEVELS},
        "with_scene_labels": sum(r["scene_soft"] is not None for r in rows),
        "skipped": skipped,
    }
    storage.write_text(storage.join(dest, "prepare_report.json"), json.dumps(report, indent=1))
    return report
