"""Which clips a batch job reads: a folder (searched recursively), a CSV or a text list."""

from __future__ import annotations

import csv
import io
import os
import posixpath

from cg_ray import storage
from cg_ray.data.decode import is_frame_name
from cg_ray.errors import UserError

VIDEO_SUFFIXES = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".flv",
    ".wmv",
    ".3gp",
    ".ogv",
)


def list_inputs(spec: str) -> list[str]:
    """Clip sources named by a folder (videos and frame folders found recursively), a CSV with a
    `path` column, or a text file with one path per line; relative paths are relative to the list."""
    if storage.is_dir(spec):
        return _scan(spec)
    if not storage.exists(spec):
        raise UserError(
            f"input list '{spec}' does not exist (give a folder, a CSV with a 'path' "
            f"column, or a text file with one path per line)"
        )
    text = storage.read_text(spec).lstrip("\ufeff")
    if spec.lower().endswith(".csv"):
        reader = csv.DictReader(io.StringIO(text))
        if "path" not in (reader.fieldnames or []):
            raise UserError(f"input list '{spec}' has no 'path' column (header: {reader.fieldnames})")
        paths = [row["path"].strip() for row in reader]
    else:
        paths = [line.strip() for line in text.splitlines()]
    base = posixpath.dirname(spec) if storage.is_uri(spec) else os.path.dirname(os.path.abspath(spec))
    return [
        p if storage.is_uri(p) or os.path.isabs(p) else storage.join(base, p)
        for p in paths
        if p and not p.startswith("#")
    ]


def _scan(folder: str) -> list[str]:
    """Video files, and folders that directly hold frames, under `folder`."""
    sources, frame_dirs = [], set()
    for info in storage.list_dir(folder, recursive=True):
        if not info.is_file:
            continue
        name = info.base_name.lower()
        if name.endswith(VIDEO_SUFFIXES):
            sources.append(storage.uri_of(folder, info.path))
        elif is_frame_name(name):
            frame_dirs.add(storage.uri_of(folder, posixpath.dirname(info.path)))
    return sorted(sources) + sorted(frame_dirs)
