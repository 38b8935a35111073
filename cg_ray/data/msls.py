"""Mapillary SLS as the `msls` layout: every sequence of every city, query and database merged.

    SOURCE/{train_val,test}/<city>/{query,database}/
        images/<key>.jpg
        seq_info.csv   (unnamed index), key, sequence_key, frame_number
        raw.csv        (unnamed index), key, lon, lat, ca, captured_at, pano   (train_val only)

A clip is the images of one sequence_key ordered by frame_number, panoramas dropped (raw.csv
`pano`; test cities have no raw.csv and keep every image). Labels come from a hierarchy CSV
(city,state,country,continent; the 30-city one ships with cg_ray). prepare() then drops
sequences shorter than --min-frames (15 by default, as the CityGuessr paper) and splits 80:20
stratified by city.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from importlib import resources

import pyarrow.fs as pafs

from cg_ray import storage
from cg_ray.data.tables import dirs, read_csv
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

PARTS = ("train_val", "test")
SUBSETS = ("query", "database")


def read_hierarchy(path: str | None) -> dict[str, dict[str, str]]:
    """city -> {city, state, country, continent}, from `path` or the shipped MSLS hierarchy."""
    if path is None:
        text = resources.files("cg_ray").joinpath("msls_hierarchy.csv").read_text()
        rows, where = list(csv.DictReader(io.StringIO(text))), "the shipped msls_hierarchy.csv"
    else:
        rows, where = read_csv(path, list(LEVELS)), f"'{path}'"
    table = [{level: row[level].strip() for level in LEVELS} for row in rows]
    Taxonomy.from_rows(table, where=f"{where} row")  # refuses a hierarchy that contradicts itself
    return {row["city"]: row for row in table}


def _is_pano(value: str) -> bool:
    return value.strip().lower() in ("true", "1", "yes")


def _sequences(folder: str, city: str, subset: str, skipped: list) -> Iterator[tuple[str, str, list[str]]]:
    """(clip id, images folder, frame file names in order) for every sequence of one city's query/database."""
    seq_rows = read_csv(storage.join(folder, "seq_info.csv"), ["key", "sequence_key", "frame_number"])
    panoramas = set()
    raw = storage.join(folder, "raw.csv")
    if storage.exists(raw):
        panoramas = {r["key"] for r in read_csv(raw, ["key", "pano"]) if _is_pano(r["pano"])}
    images = storage.join(folder, "images")
    present = {i.base_name for i in storage.list_dir(images) if i.type == pafs.FileType.File}
    frames = defaultdict(list)
    for number, row in enumerate(seq_rows, start=2):
        if row["key"] in panoramas:
            continue
        try:
            frames[row["sequence_key"]].append((int(float(row["frame_number"])), row["key"]))
        except ValueError:
            raise UserError(
                f"'{folder}/seq_info.csv' line {number}: frame_number '{row['frame_number']}' is not a number"
            ) from None
    for sequence in sorted(frames):
        clip_id = f"{city}/{subset}/{sequence}"
        names = [f"{key}.jpg" for _, key in sorted(frames[sequence])]
        missing = [n for n in names if n not in present]
        if missing:
            skipped.append(
                {
                    "clip_id": clip_id,
                    "source": images,
                    "reason": f"{len(missing)} of its images are missing, e.g. {missing[0]}",
                }
            )
            continue
        yield clip_id, images, names


def msls_rows(source: str, skipped: list, opts) -> Iterator[dict]:
    hierarchy = read_hierarchy(opts.hierarchy)
    found = False
    for part in PARTS:
        root = storage.join(source, part)
        if not storage.is_dir(root):
            continue
        for city_dir in dirs(root):
            city = city_dir.base_name
            if city not in hierarchy:
                raise UserError(
                    f"MSLS city '{city}' ({part}/{city}) is not in the hierarchy; "
                    f"add a row for it to a CSV and pass it with --hierarchy"
                )
            city_uri = storage.uri_of(source, city_dir.path)
            for subset in SUBSETS:
                folder = storage.join(city_uri, subset)
                if not storage.exists(storage.join(folder, "seq_info.csv")):
                    continue
                found = True
                for clip_id, images, names in _sequences(folder, city, subset, skipped):
                    yield dict(
                        clip_id=clip_id,
                        source=images,
                        **hierarchy[city],
                        split="",
                        num_frames=len(names),
                        scene_soft=None,
                        frames=names,
                    )
    if not found:
        raise UserError(
            f"'{source}' is not an MSLS folder: expected train_val/<city>/query/seq_info.csv (or test/...)"
        )
