"""PNG pictures of a report, drawn with matplotlib's Agg canvas: no display, no network.

The world map is an equirectangular plot over a 0.5-degree land mask shipped in the package
(no tile server, no Natural Earth download), so it renders the same offline as online.
"""

from __future__ import annotations

import numpy as np
from matplotlib import patheffects
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure

from cg_ray.geo import load_land_mask
from cg_ray.report.tables import Confusion

MAP_SIZE = (1600, 800)  # pixels
DPI = 100
SEA, LAND = "#dce8f2", "#d8d2c4"
LABEL_CITIES_UP_TO = 40  # more names than this would hide the map


def _figure(width_px: int, height_px: int, layout: str | None = None) -> Figure:
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def world_map(city_rows: list[dict], path: str, title: str, size: tuple[int, int] = MAP_SIZE) -> None:
    """Per-city accuracy at the city centres: colour = city top-1 (%), area ~ clips. PNG of
    exactly `size` pixels. Cities without coordinates are left out (the page lists them)."""
    fig = _figure(*size)
    ax = fig.add_axes((0.04, 0.07, 0.86, 0.86))
    land, _ = load_land_mask()
    ax.imshow(
        land,
        extent=(-180, 180, -90, 90),
        origin="upper",
        interpolation="nearest",
        cmap=ListedColormap([SEA, LAND]),
        vmin=0,
        vmax=1,
        zorder=0,
    )
    # Worst cities drawn last, on top: they are what a reader looks for where dots overlap.
    placed = sorted((r for r in city_rows if r["lat"] is not None), key=lambda r: -r["city_top1"])
    if placed:
        clips = np.array([r["clips"] for r in placed], dtype=float)
        dots = ax.scatter(
            [r["lon"] for r in placed],
            [r["lat"] for r in placed],
            c=[r["city_top1"] for r in placed],
            cmap="RdYlGn",
            vmin=0,
            vmax=100,
            s=20 + 160 * np.sqrt(clips / clips.max()),
            edgecolors="#222222",
            linewidths=0.6,
            alpha=0.9,
            zorder=3,
        )
        bar = fig.colorbar(dots, cax=fig.add_axes((0.92, 0.15, 0.015, 0.7)))
        bar.set_label("city top-1 accuracy (%)")
        if len(placed) <= LABEL_CITIES_UP_TO:
            for r in placed:
                ax.annotate(
                    f"{r['city']} {r['city_top1']:.0f}%",
                    (r["lon"], r["lat"]),
                    xytext=(5, 4),
                    textcoords="offset points",
                    fontsize=8,
                    zorder=4,
                    path_effects=[patheffects.withStroke(linewidth=2.5, foreground="white")],
                )
    ax.set_xlim(-180, 180)
    ax.set_ylim(-90, 90)
    ax.set_xticks(range(-180, 181, 30))
    ax.set_yticks(range(-90, 91, 30))
    ax.grid(color="white", linewidth=0.6, zorder=1)
    ax.set_xlabel("longitude")
    ax.set_ylabel("latitude")
    ax.set_title(title)
    fig.savefig(path, dpi=DPI)


def confusion_png(confusion: Confusion, path: str) -> None:
    """Row-normalized city confusion of one continent; counts written in cells when it is small."""
    counts = confusion.counts
    n_rows, n_cols = counts.shape
    cell = 0.3 if n_cols > 25 else 0.45
    # Room for the city names (rows and rotated columns) and the colour bar around the cells.
    fig = _figure(int(DPI * (3.4 + cell * n_cols)), int(DPI * (3.0 + cell * n_rows)), layout="constrained")
    ax = fig.add_subplot()
    totals = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    cells = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="equal", interpolation="nearest")
    bar = fig.colorbar(cells, ax=ax, shrink=0.5 if n_rows > 8 else 0.8, aspect=25)
    bar.set_label("share of the true city's clips", fontsize=8)
    if n_cols <= 25:
        for (i, j), value in np.ndenumerate(counts):
            if value:
                ax.text(
                    j,
                    i,
                    str(value),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(n_cols), confusion.cols, rotation=90, fontsize=8)
    ax.set_yticks(range(n_rows), confusion.rows, fontsize=8)
    ax.set_xlabel("predicted city")
    ax.set_ylabel("true city")
    correct = np.trace(counts[:, :n_rows])
    ax.set_title(
        f"{confusion.continent}: {int(counts.sum())} clips, "
        f"{100.0 * correct / max(counts.sum(), 1):.1f}% city top-1",
        fontsize=10,
    )
    fig.savefig(path, dpi=DPI)
