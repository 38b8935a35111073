"""What the endpoint's page shows: the page itself (page.html) and its world map (the shipped
land mask as runs of cells, and the coordinates of the model's cities)."""

from __future__ import annotations

from importlib import resources


def map_data(cities: list[str]) -> dict:
    """The page's world map: land as runs of cells per row of the shipped land mask, and the
    coordinates of the model's cities (those the shipped tables know)."""
    import numpy as np

    from cg_ray.geo import CityCoordinates, load_land_mask

    land, step = load_land_mask()
    runs = []
    for row in range(land.shape[0]):
        padded = np.concatenate([[False], land[row], [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        runs.extend([row, int(a), int(b - a)] for a, b in zip(edges[::2], edges[1::2]))
    coordinates = CityCoordinates.load()
    known = {city: coordinates.get(city) for city in cities}
    return {
        "step": step,
        "rows": int(land.shape[0]),
        "cols": int(land.shape[1]),
        "land": runs,
        "cities": {c: [round(ll[0], 4), round(ll[1], 4)] for c, ll in known.items() if ll},
    }


def page_html() -> str:
    return resources.files("cg_ray.predict").joinpath("page.html").read_text("utf-8")
