"""The Places365 scene hierarchy: 365 class probabilities -> one of the 16 level-2 categories.

The sheet is the Places365 authors' "Scene hierarchy", exported as CSV (the user supplies it):
two header rows, then one row per class: the quoted class name ('/a/airfield'), 3 level-1 flags
(indoor; outdoor, natural; outdoor, man-made) and 16 level-2 flags, 0 or 1.

How a class with several level-2 flags counts (the sheet allows it, e.g. a class that is both
"man-made elements" and "transportation"): its probability is **split equally** over its flagged
categories. A frame's category scores are q = p @ W, with W[k, c] = flag[k, c] / (flags of k),
and its top category is argmax_c q_c (ties: the lower category id). This is the rule the
hierarchical scene classifiers that the CityGuessr paper cites use (row-normalized hierarchy
matrix, ISNs / Mueller-Budack et al. 2018); it keeps every frame's scores a distribution.

A clip's soft label is the fraction of its frames whose top category is each of the 16 (sums to
1); its majority label is the most frequent category, i.e. the argmax of the soft label (ties:
the lower id), so the two always agree.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import numpy as np
import torch

from cg_ray import storage
from cg_ray.errors import UserError

LEVEL1 = ("indoor", "outdoor, natural", "outdoor, man-made")
SCENE_CATEGORIES = (
    "shopping and dining",
    "workplace",
    "home or hotel",
    "transportation (indoor)",
    "sports and leisure",
    "cultural (indoor)",
    "water, ice, snow",
    "mountains, hills, desert, sky",
    "forest, field, jungle",
    "man-made elements",
    "transportation (roads, parking, bridges, boats, airports)",
    "cultural or historical building/place",
    "sports fields, parks, leisure spaces",
    "industrial and construction",
    "houses, cabins, gardens, and farms",
    "commercial buildings, shops, markets, cities, and towns",
)
NUM_SCENES = len(SCENE_CATEGORIES)
_FIRST_FLAG = 1 + len(LEVEL1)  # name, 3 level-1 flags, then the 16 level-2 flags


def read_categories(path: str | None = None) -> list[str]:
    """Class names in the CNN's output order: the Places365 release's categories_places365.txt
    (lines 'name' or 'name index'); None: the list shipped with cg_ray."""
    if path is None:
        text = resources.files("cg_ray.labels").joinpath("places365_categories.txt").read_text()
    else:
        if not storage.exists(path):
            raise UserError(f"categories file '{path}' does not exist")
        text = storage.read_text(path)
    names = [line.split()[0] for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise UserError(f"categories file '{path}' names a class twice")
    return names


def _clean_name(cell: str) -> str:
    return cell.strip().strip("'\"").strip()


def _flag(cell: str, where: str) -> int:
    text = cell.strip()
    if text == "":
        return 0  # spreadsheets export unset cells as empty
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value not in (0.0, 1.0):
        raise UserError(f"{where}: flag '{cell}' must be 0 or 1")
    return int(value)


def read_flags(path: str, categories: list[str]) -> np.ndarray:
    """(K, 16) int level-2 flags of the sheet at `path`, rows in `categories` order.

    Refused with a message naming it: a class the categories do not know, a class listed twice,
    a class missing from the sheet, a class without any level-2 flag, a short row, a flag that
    is not 0/1.
    """
    if not storage.exists(path):
        raise UserError(f"hierarchy sheet '{path}' does not exist")
    rows = list(csv.reader(io.StringIO(storage.read_text(path))))
    if len(rows) < 3:
        raise UserError(
            f"hierarchy sheet '{path}' has {len(rows)} rows: expected two header rows and one row per class"
        )
    index = {name: i for i, name in enumerate(categories)}
    flags = np.zeros((len(categories), NUM_SCENES), dtype=np.int64)
    seen: dict[str, int] = {}
    for number, row in enumerate(rows[2:], start=3):
        if not any(cell.strip() for cell in row):
            continue
        name = _clean_name(row[0])
        where = f"hierarchy sheet '{path}' row {number} ('{name}')"
        if name not in index:
            raise UserError(
                f"{where}: unknown class '{name}', not one of the {len(categories)} "
                f"Places365 categories (is the sheet for another label set?)"
            )
        if name in seen:
            raise UserError(f"{where}: class '{name}' is listed twice (rows {seen[name]} and {number})")
        if len(row) < _FIRST_FLAG + NUM_SCENES:
            raise UserError(
                f"{where}: {len(row)} columns, expected {_FIRST_FLAG + NUM_SCENES} "
                f"(class name, {len(LEVEL1)} level-1 flags, {NUM_SCENES} level-2 flags)"
            )
        for cell in row[1:_FIRST_FLAG]:
            _flag(cell, where)  # level-1 flags: checked, not used
        values = [_flag(cell, where) for cell in row[_FIRST_FLAG : _FIRST_FLAG + NUM_SCENES]]
        if not any(values):
            raise UserError(
                f"{where}: class '{name}' has no level-2 flag set; every class needs "
                f"at least one of the {NUM_SCENES} categories"
            )
        seen[name] = number
        flags[index[name]] = values
    missing = [name for name in categories if name not in seen]
    if missing:
        raise UserError(
            f"hierarchy sheet '{path}' has no row for class '{missing[0]}' "
            f"({len(missing)} of {len(categories)} classes missing)"
        )
    return flags


def category_weights(flags: np.ndarray) -> np.ndarray:
    """(K, 16) 0/1 flags -> (K, 16) float32 W: each class's flags divided by their count, so a
    class with two level-2 flags gives half of its probability to each."""
    flags = np.asarray(flags, dtype=np.float32)
    return flags / np.maximum(flags.sum(axis=1, keepdims=True), 1.0)


def read_hierarchy(path: str, categories: list[str]) -> np.ndarray:
    """The sheet at `path` as the (K, 16) float32 weights W of `category_weights`."""
    return category_weights(read_flags(path, categories))


def frame_categories(probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, K) class probabilities, (K, 16) weights -> (N,) int64 top category per frame."""
    return (probs.float() @ weights.float()).argmax(dim=-1)


def clip_label(categories: np.ndarray) -> tuple[np.ndarray, int]:
    """(T,) top category per frame -> ((16,) float32 soft label, majority id).

    soft[c] is the fraction of the T frames whose top category is c; majority is its argmax
    (np.argmax: the lower id on ties)."""
    counts = np.bincount(np.asarray(categories, dtype=np.int64), minlength=NUM_SCENES)
    soft = (counts / max(len(categories), 1)).astype(np.float32)
    return soft, int(np.argmax(soft))
