"""Small readers the dataset layouts share: CSVs with checked headers, scene labels, folder
listings that count frames with one listing per parent folder, and the stratified split."""

from __future__ import annotations

import csv
import io
import posixpath
from collections import defaultdict

import numpy as np
import pyarrow.fs as pafs

from cg_ray import storage
from cg_ray.data.decode import is_frame_name
from cg_ray.errors import UserError

NUM_SCENES = 16


def read_csv(path: str, columns: list[str]) -> list[dict[str, str]]:
    """Rows of a CSV with a header that must hold `columns` (a BOM from Excel is tolerated)."""
    reader = csv.DictReader(io.StringIO(storage.read_text(path).lstrip("\ufeff")))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise UserError(f"'{path}' is missing columns {missing}; its header must have {columns}")
    return list(reader)


def read_scene_labels(path: str) -> dict[str, list[float]]:
    """video_id -> 16 scene fractions, from scene_labels.csv when the dataset has one."""
    if not storage.exists(path):
        return {}
    columns = [f"scene_{i}" for i in range(NUM_SCENES)]
    rows = read_csv(path, ["video_id"] + columns)
    out = {}
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        try:
            out[row["video_id"]] = [float(row[c]) for c in columns]
        except (TypeError, ValueError):
            raise UserError(f"'{path}' line {number}: scene values must be 16 numbers") from None
    return out


def dirs(path: str) -> list[pafs.FileInfo]:
    # Hidden and underscore folders (.ipynb_checkpoints, _tmp) are never data.
    return [
        i
        for i in storage.list_dir(path)
        if i.type == pafs.FileType.Directory and not i.base_name.startswith((".", "_"))
    ]


def frames_per_child(parent: str) -> dict[str, int]:
    """{child folder name: frames in it} for every folder directly under `parent`, from one
    recursive listing (on S3 one listing per city instead of one per clip)."""
    fs, inner = storage.filesystem(parent)
    frames: dict[str, int] = {}
    for info in storage.list_dir(parent, recursive=True):
        parts = posixpath.relpath(info.path.replace("\\", "/"), inner.replace("\\", "/")).split("/")
        if len(parts) == 1 and info.type == pafs.FileType.Directory:
            frames.setdefault(parts[0], 0)
        elif len(parts) == 2 and info.is_file and is_frame_name(parts[1]):
            frames[parts[0]] = frames.get(parts[0], 0) + 1
    return frames


def val_count(num_clips: int, val_fraction: float) -> int:
    """Clips of one city that go to val: the fraction, at least 1, but never all of them."""
    if val_fraction <= 0 or num_clips < 2:
        return 0
    return min(max(1, round(num_clips * val_fraction)), num_clips - 1)


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


def scene_targets(column, n: int, mode: str, majority=None) -> np.ndarray:
    """(B, 16) float32: the soft label, or for 'majority' one-hot of the `scene_majority` id
    (`cg-ray scenes` writes it) where the manifest has one, else of the soft label's argmax;
    zeros if absent."""
    scenes = np.zeros((n, NUM_SCENES), dtype=np.float32)
    if column is None:
        return scenes
    for i, row in enumerate(column):
        if row is not None and len(row) == NUM_SCENES:
            scenes[i] = np.asarray(row, dtype=np.float32)
    if mode == "majority":
        has = scenes.sum(axis=1) > 0
        ids = scenes.argmax(axis=1)
        for i, value in enumerate(majority if majority is not None else []):
            if (
                value is not None
                and not (isinstance(value, float) and np.isnan(value))
                and 0 <= int(value) < NUM_SCENES
            ):
                ids[i], has[i] = int(value), True
        onehot = np.zeros_like(scenes)
        onehot[np.arange(n), ids] = 1.0
        scenes = np.where(has[:, None], onehot, scenes)
    return scenes
