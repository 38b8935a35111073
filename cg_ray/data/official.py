"""The CityGuessr official training code's label files, read as the `cityguessr` layout.

    SOURCE/<split>*.txt   lines: frames_dir,city_id,state_id,country_id,continent_id[,512 text
                          floats][,16 scene floats]   (split from the file name: train, val, test)
    SOURCE/<name>.json    three id maps: city -> state, state -> country, country -> continent
    SOURCE/labels_list.csv (optional) City,State,Country,Continent: row i names city id i; without
                          it labels are named city_<id>, state_<id>, ...

The authors' ids stay the class indices: the taxonomy lists every id of the id maps in numeric
order (city_2 before city_10), so label i of a level is the authors' id i.

frames_dir is used as written when it exists, else relative to SOURCE, else by its last path
components (<split>/<City>/<video_id>, then <City>/<video_id>) under SOURCE: the authors' own
absolute paths still import. The text floats are not imported (`cg-ray text` computes the label
features); the 16 scene floats become the clip's soft scene label.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow.fs as pafs

from cg_ray import storage
from cg_ray.data.tables import NUM_SCENES, frames_per_child, read_csv
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

SPLIT_WORDS = ("train", "val", "test")
TEXT_DIM = 512


@dataclass
class OfficialFiles:
    label_files: dict[str, str]  # split -> txt path
    id_maps: str  # json path


def _ids_line(line: str) -> bool:
    fields = line.split(",")
    return len(fields) >= 5 and all(f.strip().lstrip("-").isdigit() for f in fields[1:5])


def find_official(source: str) -> OfficialFiles | None:
    """The official label files in SOURCE, or None when it is not laid out that way."""
    if not storage.is_dir(source):
        return None
    files = [i for i in storage.list_dir(source) if i.type == pafs.FileType.File]
    maps = [i for i in files if i.base_name.endswith(".json")]
    texts = {}
    for info in files:
        if not info.base_name.endswith(".txt"):
            continue
        uri = storage.uri_of(source, info.path)
        first = storage.read_text(uri).lstrip("\ufeff").split("\n", 1)[0]
        if _ids_line(first):
            name = info.base_name.lower()
            split = next((w for w in SPLIT_WORDS if w in name), name.removesuffix(".txt"))
            if split in texts:
                raise UserError(
                    f"two label files for split '{split}' in '{source}': "
                    f"{posixpath.basename(texts[split])} and {info.base_name}"
                )
            texts[split] = uri
    if not texts or len(maps) != 1:
        if texts and not maps:
            raise UserError(
                f"'{source}' has official label files ({', '.join(sorted(texts))}) but "
                f"no JSON file of id maps (city->state, state->country, "
                f"country->continent) beside them"
            )
        if texts:
            raise UserError(f"'{source}' has {len(maps)} JSON files; keep only the id maps")
        return None
    return OfficialFiles(texts, storage.uri_of(source, maps[0].path))


def _as_map(value, where: str) -> dict[int, int]:
    try:
        if isinstance(value, list):
            return {i: int(v) for i, v in enumerate(value)}
        return {int(k): int(v) for k, v in value.items()}
    except (AttributeError, TypeError, ValueError):
        raise UserError(f"{where}: an id map must map integer ids to integer ids") from None


def read_id_maps(path: str) -> list[dict[int, int]]:
    """[city->state, state->country, country->continent] from the JSON (named keys in any
    order, e.g. city_to_state, or a list of the three maps in that order)."""
    try:
        data = json.loads(storage.read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"'{path}' is not JSON: {exc}") from None
    if isinstance(data, list) and len(data) == 3:
        return [_as_map(m, path) for m in data]
    if isinstance(data, dict):
        found = []
        for child, parent in zip(LEVELS, LEVELS[1:]):
            keys = [k for k in data if re.search(f"{child}.*{parent}", k.lower())]
            if len(keys) != 1:
                break
            found.append(_as_map(data[keys[0]], f"{path} key '{keys[0]}'"))
        else:
            return found
        if len(data) == 3:  # three maps under other names: take them in file order
            return [_as_map(m, path) for m in data.values()]
    raise UserError(f"'{path}' must hold three id maps (city->state, state->country, country->continent)")


def label_names(source: str, maps: list[dict[int, int]]) -> list[dict[int, str]]:
    """Per level {id: name}: from labels_list.csv (row i is city id i) when present."""
    path = storage.join(source, "labels_list.csv")
    if not storage.exists(path):
        return [None] * 4  # type: ignore[list-item]
    rows = read_csv(path, ["City", "State", "Country", "Continent"])
    names: list[dict[int, str]] = [{} for _ in LEVELS]
    for city_id, row in enumerate(rows):
        ids = [city_id]
        for child_map in maps:
            ids.append(child_map.get(ids[-1], -1))
        for level, (key, ident) in enumerate(zip(("City", "State", "Country", "Continent"), ids)):
            name = row[key].strip()
            if names[level].setdefault(ident, name) != name:
                raise UserError(
                    f"labels_list.csv row {city_id + 1} names {LEVELS[level]} id {ident} "
                    f"'{name}' but an earlier row names it '{names[level][ident]}'"
                )
    return names


def _resolver(source: str, first: str):
    """How frames_dir strings map to clip folders, decided on the first line of a file."""
    candidates = [lambda d: d] if storage.is_uri(first) or os.path.isabs(first) else []
    candidates.append(lambda d: storage.join(source, d.lstrip("/")) if not storage.is_uri(d) else d)
    for keep in (3, 2):
        candidates.append(lambda d, k=keep: storage.join(source, *d.rstrip("/").split("/")[-k:]))
    for rule in candidates:
        if storage.is_dir(rule(first)):
            return rule
    raise UserError(
        f"cannot find the frames folder '{first}' (as written, under '{source}', or "
        f"as <split>/<City>/<video_id> under it)"
    )


def _name(names: list[dict[int, str] | None], level: int, ident: int) -> str | None:
    if names[level] is None:
        return f"{LEVELS[level]}_{ident}"
    return names[level].get(ident)


def id_ordered_labels(maps: list[dict[int, int]], names) -> tuple[dict[str, list[str]], list[dict]]:
    """(label names per level in numeric id order, one hierarchy row per city id of the maps):
    the taxonomy then gives label i the authors' id i. Ids no name reaches are left out."""
    ids: list[set[int]] = [set(maps[0]), set(maps[1]), set(maps[2]), set(maps[2].values())]
    order = {
        LEVELS[i]: [n for n in (_name(names, i, k) for k in sorted(ids[i])) if n is not None]
        for i in range(len(LEVELS))
    }
    tree = []
    for city in sorted(maps[0]):
        chain = [city]
        for child_map in maps:
            chain.append(child_map.get(chain[-1], -1))
        row = {LEVELS[i]: _name(names, i, k) for i, k in enumerate(chain)}
        if all(row.values()) and min(chain) >= 0:
            tree.append(row)
    return order, tree


def official_rows(source: str, files: OfficialFiles, skipped: list, opts=None) -> Iterator[dict]:
    maps = read_id_maps(files.id_maps)
    names = label_names(source, maps)
    if opts is not None:  # PrepareOptions: prepare() builds the taxonomy in id order
        opts.label_order, opts.label_tree = id_ordered_labels(maps, names)
    for split, path in sorted(files.label_files.items()):
        lines = [line for line in storage.read_text(path).lstrip("\ufeff").splitlines() if line.strip()]
        where = posixpath.basename(path)
        resolve = _resolver(source, lines[0].split(",", 1)[0].strip())
        counts: dict[str, dict[str, int]] = {}  # parent folder -> {clip folder: frames}
        for number, line in enumerate(lines, start=1):
            fields = [f.strip() for f in line.split(",")]
            if not _ids_line(line):
                raise UserError(
                    f"{where} line {number}: expected frames_dir,city_id,state_id,"
                    f"country_id,continent_id,...; got '{line[:80]}'"
                )
            ids = [int(f) for f in fields[1:5]]
            for level in range(3):
                expected = maps[level].get(ids[level])
                if expected != ids[level + 1]:
                    raise UserError(
                        f"{where} line {number}: {LEVELS[level]} {ids[level]} is under "
                        f"{LEVELS[level + 1]} {expected} in {posixpath.basename(files.id_maps)}, "
                        f"but the line says {ids[level + 1]}"
                    )
            extra = len(fields) - 5
            if extra not in (0, NUM_SCENES, TEXT_DIM, TEXT_DIM + NUM_SCENES):
                raise UserError(
                    f"{where} line {number}: {extra} values after the ids; expected 0, "
                    f"{TEXT_DIM} text and/or {NUM_SCENES} scene values"
                )
            has_scene = extra in (NUM_SCENES, TEXT_DIM + NUM_SCENES)
            scene = [float(v) for v in fields[-NUM_SCENES:]] if has_scene else None
            clip = resolve(fields[0])
            parent, clip_name = clip.rstrip("/").rsplit("/", 1) if "/" in clip else ("", clip)
            if parent not in counts:
                counts[parent] = frames_per_child(parent)
            frames = counts[parent].get(clip_name, 0)
            if frames == 0:
                skipped.append(
                    {
                        "clip_id": clip_name,
                        "source": clip,
                        "reason": f"{where} line {number}: no frames at '{clip}'",
                    }
                )
                continue
            labels = {}
            for i, level in enumerate(LEVELS):
                if names[i] is None:
                    labels[level] = f"{level}_{ids[i]}"
                elif ids[i] in names[i]:
                    labels[level] = names[i][ids[i]]
                else:
                    raise UserError(
                        f"{where} line {number}: {level} id {ids[i]} is not named by "
                        f"labels_list.csv (no city row leads to it)"
                    )
            yield dict(
                clip_id=clip_name, source=clip, **labels, split=split, num_frames=frames, scene_soft=scene
            )
