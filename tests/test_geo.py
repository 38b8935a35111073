"""Haversine distances and geodesic metrics against hand computation; the shipped coordinates."""

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from cg_ray.errors import UserError
from cg_ray.geo import EARTH_RADIUS_KM, CityCoordinates, geodesic_metrics, haversine_km, load_land_mask

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def cosine_law_km(lat1, lon1, lat2, lon2):
    """An independent formula (spherical law of cosines), computed by hand in degrees."""
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    return EARTH_RADIUS_KM * math.acos(
        math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(dl)
    )


def test_haversine_on_exact_arcs():
    quarter = math.pi / 2 * EARTH_RADIUS_KM  # 10007.5 km
    assert haversine_km(0, 0, 0, 90) == pytest.approx(quarter)
    assert haversine_km(0, 0, 90, 0) == pytest.approx(quarter)
    assert haversine_km(90, 0, -90, 0) == pytest.approx(2 * quarter)
    assert haversine_km(10, 179.5, 10, -179.5) == pytest.approx(
        cosine_law_km(10, 179.5, 10, -179.5)
    )  # across the date line: ~109.5 km, not 39,000
    assert haversine_km(48.0, 2.0, 48.0, 2.0) == 0.0


@pytest.mark.parametrize(
    "a, b, published_km",
    [
        (("Lyon", 45.7578137, 4.8320114), ("Marseille", 43.2963986, 5.3777888), 277),
        (("Tokyo", 35.6768601, 139.7638947), ("Osaka", 34.6937569, 135.5014539), 403),
    ],
)
def test_two_known_city_pairs(a, b, published_km):
    coords = CityCoordinates.load()
    assert coords.get(a[0]) == (a[1], a[2]) and coords.get(b[0]) == (b[1], b[2])
    km = float(haversine_km(a[1], a[2], b[1], b[2]))
    assert km == pytest.approx(cosine_law_km(a[1], a[2], b[1], b[2]), abs=0.01)
    assert km == pytest.approx(published_km, abs=3)  # great-circle figures quoted for the pairs


def test_geodesic_metrics_by_hand():
    m = geodesic_metrics(np.array([0.0, 10.0, 100.0, 500.0, 1000.0, 3000.0]), missing=2)
    assert m["geo_clips"] == 6 and m["geo_missing"] == 2
    assert m["geo_median_km"] == pytest.approx(300.0)  # (100 + 500) / 2
    assert m["geo_mean_km"] == pytest.approx(4610.0 / 6)
    assert [m[f"geo_within_{k}km"] for k in (25, 200, 750, 2500)] == pytest.approx(
        [200 / 6, 300 / 6, 400 / 6, 500 / 6]
    )
    assert geodesic_metrics(np.array([])) == {"geo_clips": 0, "geo_missing": 0}


def test_shipped_coordinates_cover_cityguessr_and_msls():
    coords = CityCoordinates.load()
    with open(
        Path(__file__).resolve().parents[1] / "cg_ray" / "geodata" / "cityguessr_city_centres.csv"
    ) as f:
        assert len(list(csv.DictReader(f))) == 166
    msls = ["trondheim", "saopaulo", "cph", "sf", "goa", "kampala", "buenosaires"]
    if (SHARED / "msls_hierarchy.csv").exists():
        with open(SHARED / "msls_hierarchy.csv") as f:
            msls = [row["city"] for row in csv.DictReader(f)]
        assert len(msls) == 30
    assert all(coords.get(city) is not None for city in msls)
    # Spot checks: Copenhagen and San Francisco under their MSLS folder names.
    assert haversine_km(*coords.get("cph"), 55.68, 12.57) < 5
    assert haversine_km(*coords.get("sf"), 37.77, -122.42) < 5
    # Spelling-insensitive fallback, e.g. a CityGuessr-style name for an MSLS folder.
    assert coords.get("Sao_Paulo") == coords.get("saopaulo") == (-23.5505, -46.6333)
    assert coords.get("TRONDHEIM") == coords.get("trondheim")
    # Exact names win: the two datasets place Kampala 3 km apart, each keeps its own.
    assert coords.get("Kampala") != coords.get("kampala")
    assert coords.get("Atlantis") is None


def test_coordinates_override_and_bad_files(tmp_path):
    override = tmp_path / "c.csv"
    override.write_text("city,lat,lon\nLyon,1.5,2.5\nAtlantis,10,-20\n")
    coords = CityCoordinates.load(str(override))
    assert coords.get("Lyon") == (1.5, 2.5) and coords.get("Atlantis") == (10.0, -20.0)
    assert coords.get("Marseille") is not None  # the shipped ones stay
    for text, message in [
        ("name,lat,lon\nX,1,2\n", "header city,lat,lon"),
        ("city,lat,lon\nX,north,2\n", "line 2"),
        ("city,lat,lon\nX,95,2\n", "off the globe"),
    ]:
        override.write_text(text)
        with pytest.raises(UserError, match=message):
            CityCoordinates.load(str(override))
    with pytest.raises(UserError, match="does not exist"):
        CityCoordinates.load(str(tmp_path / "none.csv"))


def test_land_mask_knows_land_from_sea():
    land, step = load_land_mask()
    assert land.shape == (int(180 / step), int(360 / step))

    def at(lat, lon):
        return land[int((90 - lat) / step), int((lon + 180) / step)]

    assert at(23, 10) and at(-25, 134) and at(45, -100)  # Sahara, Australia, North America
    assert not at(0, -150) and not at(-40, -20) and not at(15, 65)  # Pacific, Atlantic, Arabian Sea
