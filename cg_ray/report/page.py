"""The report's index.html: one self-contained page (relative links to the PNGs and CSVs)."""

from __future__ import annotations

import html
import math

from cg_ray.geo import THRESHOLDS_KM
from cg_ray.taxonomy import LEVELS

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { color: #666; font-size: 13px; }
"""


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "&ndash;"
    if isinstance(value, float):
        return f"{value:.1f}"
    return html.escape(str(value))


def table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render(
    info: dict,
    metrics: dict,
    cities: list[dict],
    countries: list[dict],
    confusion_files: list[tuple[str, str]],
    missing: list[str],
) -> str:
    """info: title fields (checkpoint, data, split, mode, clips); confusion_files: (continent, png)."""
    accuracy = [
        {"level": lvl, "top-1 %": metrics.get(f"{lvl}_top1"), "top-5 %": metrics.get(f"{lvl}_top5")}
        for lvl in LEVELS
    ]
    geo = [
        {"": "clips with coordinates", "value": metrics.get("geo_clips")},
        {"": "median error (km)", "value": metrics.get("geo_median_km")},
        {"": "mean error (km)", "value": metrics.get("geo_mean_km")},
    ]
    geo += [{"": f"within {km} km (%)", "value": metrics.get(f"geo_within_{km}km")} for km in THRESHOLDS_KM]
    worst = sorted(cities, key=lambda r: (r["city_top1"], -r["clips"]))
    parts = [
        f"<h1>cg_ray evaluation report</h1><p>{_cell(info.get('checkpoint'))} on "
        f"{_cell(info.get('data'))}, split <b>{_cell(info.get('split'))}</b>, mode "
        f"<b>{_cell(info.get('mode'))}</b>, {_cell(info.get('clips'))} clips.</p>",
        "<h2>Accuracy</h2>",
        table(accuracy, ["level", "top-1 %", "top-5 %"]),
        "<h2>Geodesic error</h2><p class=note>Haversine distance between the centres of the "
        "true and the predicted city.</p>",
        table(geo, ["", "value"]),
        "<h2>Per-city accuracy on the map</h2><img src='world_map.png' alt='world map'>",
    ]
    if missing:
        parts.append(
            f"<p class=note>No coordinates for: {html.escape(', '.join(missing))} "
            f"(add them with --coordinates CSV).</p>"
        )
    parts += [
        "<h2>Per country</h2><p class=note><a href='per_country.csv'>per_country.csv</a></p>",
        table(countries, ["country", "continent", "clips", "country_top1", "city_top1", "median_km"]),
        "<h2>Per city, worst first</h2><p class=note><a href='per_city.csv'>per_city.csv</a></p>",
        table(
            worst,
            ["city", "state", "country", "continent", "clips", "city_top1", "country_top1", "median_km"],
        ),
        "<h2>City confusion per continent</h2>",
    ]
    parts += [
        f"<h3>{html.escape(c)}</h3><img src='{html.escape(png)}' alt='{html.escape(c)}'>"
        for c, png in confusion_files
    ]
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>cg_ray report</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
