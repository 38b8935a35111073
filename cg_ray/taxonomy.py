"""The four-level label tree city -> state/province -> country -> continent."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cg_ray.errors import UserError

LEVELS: tuple[str, ...] = ("city", "state", "country", "continent")


def _ordered(names: set[str], order: list[str] | None) -> list[str]:
    """Names in `order` first (in its order), then the rest sorted."""
    if not order:
        return sorted(names)
    position: dict[str, int] = {}
    for i, name in enumerate(order):
        position.setdefault(name, i)
    return sorted(names, key=lambda n: (0, position[n], "") if n in position else (1, 0, n))


@dataclass(frozen=True)
class Taxonomy:
    """Label names per level (index = id) and the parent id of every label below the top.

    `labels[level][i]` is the name of id i; `parents["city"][i]` is the state id of city i,
    `parents["state"]` maps states to countries and `parents["country"]` countries to continents.
    """

    labels: dict[str, list[str]]
    parents: dict[str, list[int]]

    @property
    def sizes(self) -> list[int]:
        """Number of classes per level, in LEVELS order."""
        return [len(self.labels[level]) for level in LEVELS]

    def index(self, level: str) -> dict[str, int]:
        """Name -> id for one level."""
        return {name: i for i, name in enumerate(self.labels[level])}

    def ancestors(self, city_id: int) -> list[int]:
        """Ids of a city and of its state, country and continent, in LEVELS order."""
        ids = [city_id]
        for level in LEVELS[:-1]:
            ids.append(self.parents[level][ids[-1]])
        return ids

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, str]],
        where: str = "row",
        order: Mapping[str, list[str]] | None = None,
    ) -> Taxonomy:
        """Build the tree from labelled rows (one per clip or per city).

        Labels get ids in sorted name order, so the same set of rows always gives the same ids;
        `order` (level -> names) puts the names it lists first, in its order (a source whose
        labels have ids of their own). A label that appears under two different parents is
        refused, naming both rows.
        """
        seen: dict[str, dict[str, tuple[str, int]]] = {level: {} for level in LEVELS[:-1]}
        names: dict[str, set[str]] = {level: set() for level in LEVELS}
        count = 0
        for row_number, row in enumerate(rows, start=1):
            count += 1
            for level in LEVELS:
                value = row.get(level)
                if value is None or str(value).strip() == "":
                    raise UserError(f"{where} {row_number}: missing {level} label")
                names[level].add(str(value))
            for child_level, parent_level in zip(LEVELS[:-1], LEVELS[1:]):
                child, parent = str(row[child_level]), str(row[parent_level])
                first = seen[child_level].setdefault(child, (parent, row_number))
                if first[0] != parent:
                    raise UserError(
                        f"inconsistent labels: {child_level} '{child}' is under {parent_level} "
                        f"'{parent}' in {where} {row_number} but under '{first[0]}' in "
                        f"{where} {first[1]}; fix the labels so every {child_level} has one "
                        f"{parent_level}"
                    )
        if count == 0:
            raise UserError("no labelled rows: cannot build a taxonomy from an empty dataset")
        labels = {level: _ordered(names[level], (order or {}).get(level)) for level in LEVELS}
        parents = {}
        for child_level, parent_level in zip(LEVELS[:-1], LEVELS[1:]):
            parent_ids = {name: i for i, name in enumerate(labels[parent_level])}
            parents[child_level] = [parent_ids[seen[child_level][c][0]] for c in labels[child_level]]
        return cls(labels=labels, parents=parents)

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"levels": list(LEVELS), "labels": self.labels, "parents": self.parents}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> Taxonomy:
        try:
            levels = list(data["levels"])
            labels = {level: [str(x) for x in data["labels"][level]] for level in LEVELS}
            parents = {level: [int(x) for x in data["parents"][level]] for level in LEVELS[:-1]}
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"not a cg_ray taxonomy (missing or bad key {exc})") from None
        if levels != list(LEVELS):
            raise UserError(f"taxonomy levels are {levels}, expected {list(LEVELS)}")
        for child_level, parent_level in zip(LEVELS[:-1], LEVELS[1:]):
            if len(parents[child_level]) != len(labels[child_level]):
                raise UserError(f"taxonomy: {child_level} parent list has the wrong length")
            bad = [p for p in parents[child_level] if not 0 <= p < len(labels[parent_level])]
            if bad:
                raise UserError(f"taxonomy: {child_level} parent id {bad[0]} out of range")
        return cls(labels=labels, parents=parents)

    @classmethod
    def from_json(cls, text: str) -> Taxonomy:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise UserError(f"taxonomy is not valid JSON: {exc}") from None

    def differences(self, other: Taxonomy) -> list[str]:
        """Human-readable differences between two taxonomies (empty when equal)."""
        out = []
        for level in LEVELS:
            a, b = self.labels[level], other.labels[level]
            if a != b:
                only_a = sorted(set(a) - set(b))[:5]
                only_b = sorted(set(b) - set(a))[:5]
                out.append(
                    f"{level}: {len(a)} vs {len(b)} labels; only in first {only_a}, only in second {only_b}"
                )
        if not out and self.parents != other.parents:
            out.append("same labels but different parents")
        return out
