"""The numbers of an evaluation report, from per-clip true and predicted label ids.

Every function here is plain numpy over (N,) id arrays, so the report can be checked by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cg_ray.geo import CityCoordinates, geodesic_metrics, haversine_km
from cg_ray.taxonomy import LEVELS, Taxonomy

ELSEWHERE = "(other continent)"


@dataclass
class ClipLabels:
    """True and top-1 predicted ids per level, (N,) int each, and the clip ids."""

    clip_ids: list[str]
    true: dict[str, np.ndarray]
    pred: dict[str, np.ndarray]


def clip_distances(
    taxonomy: Taxonomy, clips: ClipLabels, coords: CityCoordinates
) -> tuple[np.ndarray, list[str]]:
    """(N,) km between true and predicted city centres (NaN where either is unknown) and the
    city names that have no coordinates."""
    names = taxonomy.labels["city"]
    true_ll, true_known = coords.arrays([names[i] for i in clips.true["city"]])
    pred_ll, pred_known = coords.arrays([names[i] for i in clips.pred["city"]])
    km = np.full(len(clips.clip_ids), np.nan)
    both = true_known & pred_known
    km[both] = haversine_km(true_ll[both, 0], true_ll[both, 1], pred_ll[both, 0], pred_ll[both, 1])
    missing = sorted({n for n in names if coords.get(n) is None})
    return km, missing


def geodesic_summary(km: np.ndarray) -> dict[str, float]:
    known = ~np.isnan(km)
    return geodesic_metrics(km[known], missing=int((~known).sum()))


def _pct(hits: np.ndarray) -> float:
    return 100.0 * float(hits.mean()) if hits.size else float("nan")


def _median(km: np.ndarray) -> float:
    km = km[~np.isnan(km)]
    return float(np.median(km)) if km.size else float("nan")


def per_city(taxonomy: Taxonomy, clips: ClipLabels, km: np.ndarray, coords: CityCoordinates) -> list[dict]:
    """One row per city with clips: its ancestors, clips, accuracy at city and country level
    (percent, of that city's clips), median km error, and its centre (None if unknown)."""
    rows = []
    for city_id, city in enumerate(taxonomy.labels["city"]):
        mine = clips.true["city"] == city_id
        if not mine.any():
            continue
        ids = taxonomy.ancestors(city_id)
        latlon = coords.get(city)
        rows.append(
            {
                "city": city,
                **{lvl: taxonomy.labels[lvl][i] for lvl, i in zip(LEVELS[1:], ids[1:])},
                "clips": int(mine.sum()),
                "city_top1": _pct(clips.pred["city"][mine] == city_id),
                "country_top1": _pct(clips.pred["country"][mine] == ids[2]),
                "median_km": _median(km[mine]),
                "lat": latlon[0] if latlon else None,
                "lon": latlon[1] if latlon else None,
            }
        )
    return rows


def per_country(taxonomy: Taxonomy, clips: ClipLabels, km: np.ndarray) -> list[dict]:
    """One row per country with clips: continent, clips, country and city accuracy, median km."""
    rows = []
    for country_id, country in enumerate(taxonomy.labels["country"]):
        mine = clips.true["country"] == country_id
        if not mine.any():
            continue
        continent = taxonomy.labels["continent"][taxonomy.parents["country"][country_id]]
        rows.append(
            {
                "country": country,
                "continent": continent,
                "clips": int(mine.sum()),
                "country_top1": _pct(clips.pred["country"][mine] == country_id),
                "city_top1": _pct(clips.pred["city"][mine] == clips.true["city"][mine]),
                "median_km": _median(km[mine]),
            }
        )
    return rows


@dataclass
class Confusion:
    """Counts[i, j]: clips of city rows[i] predicted as cols[j]; the last column counts clips
    predicted as a city of another continent."""

    continent: str
    rows: list[str]
    cols: list[str]
    counts: np.ndarray


def continent_confusions(taxonomy: Taxonomy, clips: ClipLabels) -> list[Confusion]:
    """A city confusion matrix for each continent that has clips, over its cities."""
    city_continent = np.array([taxonomy.ancestors(i)[3] for i in range(len(taxonomy.labels["city"]))])
    out = []
    for cont_id, continent in enumerate(taxonomy.labels["continent"]):
        cities = np.flatnonzero(city_continent == cont_id)
        mine = np.isin(clips.true["city"], cities)
        if not mine.any():
            continue
        position = {int(c): k for k, c in enumerate(cities)}
        counts = np.zeros((len(cities), len(cities) + 1), dtype=np.int64)
        for t, p in zip(clips.true["city"][mine].tolist(), clips.pred["city"][mine].tolist()):
            counts[position[t], position.get(p, len(cities))] += 1
        names = [taxonomy.labels["city"][c] for c in cities]
        out.append(Confusion(continent, names, names + [ELSEWHERE], counts))
    return out
