"""Geography of the labels: city-centre coordinates and great-circle (haversine) error.

Coordinates for the CityGuessr68k and MSLS cities ship in `cg_ray/geodata/`; a user CSV
(`city,lat,lon`) adds cities or replaces shipped ones.
"""

from __future__ import annotations

import csv
import io
import re
from importlib import resources

import numpy as np

from cg_ray import storage
from cg_ray.errors import UserError

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius
THRESHOLDS_KM = (25, 200, 750, 2500)  # street, city, region, country, continent scales (Im2GPS)
SHIPPED = ("cityguessr_city_centres.csv", "msls_city_centres.csv")


def haversine_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (arrays broadcast)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def geodesic_metrics(distances_km: np.ndarray, missing: int = 0) -> dict[str, float]:
    """Median/mean km and percent of clips within each threshold; `missing` clips had no
    coordinates for the true or the predicted city and are left out (but counted)."""
    d = np.asarray(distances_km, dtype=np.float64)
    out: dict[str, float] = {"geo_clips": int(d.size), "geo_missing": int(missing)}
    if d.size == 0:
        return out
    out.update(geo_median_km=float(np.median(d)), geo_mean_km=float(d.mean()))
    for km in THRESHOLDS_KM:
        out[f"geo_within_{km}km"] = 100.0 * float((d <= km).mean())
    return out


def _normal(name: str) -> str:
    """'Sao_Paulo', 'sao paulo', 'saopaulo' -> 'saopaulo'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def read_coordinates_csv(text: str, where: str) -> dict[str, tuple[float, float]]:
    """`city,lat,lon` rows -> {city: (lat, lon)}; a bad row is a UserError naming it."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not {"city", "lat", "lon"} <= set(reader.fieldnames or []):
        raise UserError(
            f"coordinates file '{where}' needs the header city,lat,lon (it has {reader.fieldnames})"
        )
    out = {}
    for n, row in enumerate(reader, start=2):
        try:
            lat, lon = float(row["lat"]), float(row["lon"])
        except (TypeError, ValueError):
            raise UserError(
                f"coordinates file '{where}' line {n}: lat/lon '{row['lat']}', '{row['lon']}' are not numbers"
            ) from None
        if not (-90 <= lat <= 90 and -180 <= lon <= 180):
            raise UserError(f"coordinates file '{where}' line {n}: ({lat}, {lon}) is off the globe")
        out[row["city"].strip()] = (lat, lon)
    return out


class CityCoordinates:
    """City name -> (lat, lon). Exact names first; then a spelling-insensitive match
    ('Sao_Paulo' finds 'saopaulo') unless two cities far apart share that spelling."""

    def __init__(self, table: dict[str, tuple[float, float]]):
        self.table = dict(table)
        self._loose: dict[str, tuple[float, float] | None] = {}
        for name, latlon in self.table.items():
            key = _normal(name)
            seen = self._loose.get(key, latlon)
            far = seen is None or haversine_km(*seen, *latlon) > 50
            self._loose[key] = None if far else latlon

    @classmethod
    def load(cls, override: str | None = None) -> CityCoordinates:
        """The shipped coordinates, updated by the `city,lat,lon` CSV at `override` if given."""
        table: dict[str, tuple[float, float]] = {}
        for name in SHIPPED:
            text = resources.files("cg_ray.geodata").joinpath(name).read_text("utf-8")
            table.update(read_coordinates_csv(text, name))
        if override:
            if not storage.exists(override):
                raise UserError(f"coordinates file '{override}' does not exist")
            table.update(read_coordinates_csv(storage.read_text(override), override))
        return cls(table)

    def get(self, city: str) -> tuple[float, float] | None:
        return self.table.get(city) or self._loose.get(_normal(city))

    def arrays(self, cities: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(n, 2) float lat/lon (NaN where unknown) and the (n,) bool mask of known cities."""
        found = [self.get(c) for c in cities]
        known = np.array([f is not None for f in found], dtype=bool)
        latlon = np.array(
            [f if f is not None else (np.nan, np.nan) for f in found], dtype=np.float64
        ).reshape(-1, 2)
        return latlon, known


def load_land_mask() -> tuple[np.ndarray, float]:
    """(rows, cols) bool land grid, row 0 at 90N and column 0 at 180W, and its cell size in degrees."""
    with resources.files("cg_ray.geodata").joinpath("land_mask.npz").open("rb") as f:
        data = np.load(io.BytesIO(f.read()))
        shape = tuple(int(x) for x in data["shape"])
        land = np.unpackbits(data["bits"], count=shape[0] * shape[1]).astype(bool).reshape(shape)
        return land, float(data["step"])
