"""Evaluation reports from hand-made predictions: per-city/country numbers, confusion matrices,
geodesic error, the files (real PNGs of the right size) and logging to MLflow. No Ray."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from cg_ray.config import load_config
from cg_ray.geo import EARTH_RADIUS_KM, CityCoordinates
from cg_ray.report import write_report
from cg_ray.report.plots import MAP_SIZE
from cg_ray.report.tables import (
    ELSEWHERE,
    ClipLabels,
    clip_distances,
    continent_confusions,
    geodesic_summary,
    per_city,
    per_country,
)
from cg_ray.report.tracked import log_to_mlflow
from cg_ray.taxonomy import LEVELS, Taxonomy

PLACES = [
    ("Lyon", "ARA", "France", "Europe"),
    ("Marseille", "PACA", "France", "Europe"),
    ("Atlantis", "Deep", "Atlantis_Land", "Europe"),
    ("Tokyo", "Tokyo_M", "Japan", "Asia"),
    ("Osaka", "Osaka_P", "Japan", "Asia"),
    ("Chicago", "Illinois", "USA", "North_America"),
]
# (true city, predicted city) per clip
PAIRS = [
    ("Lyon", "Lyon"),
    ("Lyon", "Marseille"),
    ("Marseille", "Lyon"),
    ("Tokyo", "Osaka"),
    ("Tokyo", "Tokyo"),
    ("Osaka", "Chicago"),
    ("Chicago", "Chicago"),
    ("Atlantis", "Lyon"),
]


def km(a, b):
    """Spherical law of cosines, by hand, between two shipped city centres."""
    coords = CityCoordinates.load()
    (lat1, lon1), (lat2, lon2) = coords.get(a), coords.get(b)
    p1, p2 = math.radians(lat1), math.radians(lat2)
    return EARTH_RADIUS_KM * math.acos(
        math.sin(p1) * math.sin(p2) + math.cos(p1) * math.cos(p2) * math.cos(math.radians(lon2 - lon1))
    )


@pytest.fixture
def case():
    taxonomy = Taxonomy.from_rows([dict(zip(LEVELS, p)) for p in PLACES])
    index = taxonomy.index("city")

    def ids(city):
        return taxonomy.ancestors(index[city])

    true = {lvl: np.array([ids(t)[i] for t, _ in PAIRS]) for i, lvl in enumerate(LEVELS)}
    pred = {lvl: np.array([ids(p)[i] for _, p in PAIRS]) for i, lvl in enumerate(LEVELS)}
    clips = ClipLabels([f"clip{i}" for i in range(len(PAIRS))], true, pred)
    return taxonomy, clips, CityCoordinates.load()


def test_geodesic_error_against_hand_computed_distances(case):
    taxonomy, clips, coords = case
    distances, missing = clip_distances(taxonomy, clips, coords)
    lyon_marseille, tokyo_osaka, osaka_chicago = (
        km("Lyon", "Marseille"),
        km("Tokyo", "Osaka"),
        km("Osaka", "Chicago"),
    )
    assert lyon_marseille == pytest.approx(277.1, abs=0.1) and tokyo_osaka == pytest.approx(402.5, abs=0.1)
    np.testing.assert_allclose(
        distances[:7],
        [0, lyon_marseille, lyon_marseille, tokyo_osaka, 0, osaka_chicago, 0],
        rtol=1e-9,
        atol=1e-9,
    )
    assert np.isnan(distances[7]) and missing == ["Atlantis"]
    m = geodesic_summary(distances)
    assert m["geo_clips"] == 7 and m["geo_missing"] == 1
    assert m["geo_median_km"] == pytest.approx(lyon_marseille)  # 0 0 0 [277] 277 402 10k
    assert m["geo_mean_km"] == pytest.approx((2 * lyon_marseille + tokyo_osaka + osaka_chicago) / 7)
    assert [m[f"geo_within_{k}km"] for k in (25, 200, 750, 2500)] == pytest.approx(
        [300 / 7, 300 / 7, 600 / 7, 600 / 7]
    )


def test_per_city_and_per_country(case):
    taxonomy, clips, coords = case
    distances, _ = clip_distances(taxonomy, clips, coords)
    cities = {r["city"]: r for r in per_city(taxonomy, clips, distances, coords)}
    assert set(cities) == {p[0] for p in PLACES}
    lyon = cities["Lyon"]
    assert (lyon["state"], lyon["country"], lyon["continent"], lyon["clips"]) == (
        "ARA",
        "France",
        "Europe",
        2,
    )
    assert lyon["city_top1"] == 50.0 and lyon["country_top1"] == 100.0
    assert lyon["median_km"] == pytest.approx(km("Lyon", "Marseille") / 2)
    assert (lyon["lat"], lyon["lon"]) == coords.get("Lyon")
    assert cities["Osaka"]["city_top1"] == 0.0 and cities["Osaka"]["country_top1"] == 0.0
    assert cities["Atlantis"]["lat"] is None and math.isnan(cities["Atlantis"]["median_km"])
    countries = {r["country"]: r for r in per_country(taxonomy, clips, distances)}
    assert countries["France"]["clips"] == 3 and countries["France"]["country_top1"] == 100.0
    assert countries["France"]["city_top1"] == pytest.approx(100 / 3)
    assert countries["Japan"]["country_top1"] == pytest.approx(200 / 3)
    assert countries["USA"]["continent"] == "North_America"


def test_confusion_matrix_per_continent(case):
    taxonomy, clips, _ = case
    by = {c.continent: c for c in continent_confusions(taxonomy, clips)}
    assert set(by) == {"Europe", "Asia", "North_America"}
    europe = by["Europe"]
    assert europe.rows == ["Atlantis", "Lyon", "Marseille"]
    assert europe.cols == ["Atlantis", "Lyon", "Marseille", ELSEWHERE]
    assert europe.counts.tolist() == [[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 0, 0]]
    assert by["Asia"].rows == ["Osaka", "Tokyo"]
    assert by["Asia"].counts.tolist() == [[0, 0, 1], [1, 1, 0]]  # Osaka -> Chicago: elsewhere
    assert by["North_America"].counts.tolist() == [[1, 0]]


def test_report_files(case, tmp_path):
    taxonomy, clips, coords = case
    info = {"checkpoint": "ckpt", "data": "data", "split": "val", "mode": "codependent", "clips": len(PAIRS)}
    metrics = write_report(str(tmp_path), taxonomy, clips, {"city_top1": 37.5}, info, coords)
    assert metrics["geo_median_km"] == pytest.approx(km("Lyon", "Marseille"))
    for name in [
        "index.html",
        "metrics.json",
        "per_city.csv",
        "per_country.csv",
        "clips.csv",
        "world_map.png",
        "confusion/Europe.png",
        "confusion/Europe.csv",
        "confusion/Asia.png",
        "confusion/North_America.png",
    ]:
        assert (tmp_path / name).stat().st_size > 0, name
    with Image.open(tmp_path / "world_map.png") as image:
        assert image.format == "PNG" and image.size == MAP_SIZE == (1600, 800)
        image.load()
        pixels = np.asarray(image.convert("RGB"))
    # Not blank: sea and land colours and the red-to-green dots are all there.
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50
    with Image.open(tmp_path / "confusion" / "Europe.png") as image:
        assert image.format == "PNG" and min(image.size) > 200
    page = (tmp_path / "index.html").read_text()
    for needle in ["world_map.png", "confusion/Asia.png", "per_city.csv", "Atlantis", "37.5"]:
        assert needle in page
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["cities_without_coordinates"] == ["Atlantis"] and saved["geo_clips"] == 7
    with open(tmp_path / "confusion" / "Europe.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[1] == {"true_city": "Lyon", "Atlantis": "0", "Lyon": "1", "Marseille": "1", ELSEWHERE: "0"}


def test_report_is_logged_to_the_training_run(case, tmp_path):
    from mlflow.tracking import MlflowClient

    from cg_ray import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = tracking.start_run(uri, "reports", "train", {})
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "index.html").write_text("<html></html>")
    config = load_config(None, [f"run.tracking_uri={uri}"])
    note = log_to_mlflow(
        str(tmp_path / "report"), {"mlflow_run_id": run_id}, config, None, "report_val_codependent"
    )
    assert note.startswith(f"logged to MLflow run {run_id}")
    listed = {a.path for a in MlflowClient(uri).list_artifacts(run_id, "report_val_codependent")}
    assert listed == {"report_val_codependent/index.html"}

    bare = load_config(None, [])
    assert "no mlflow_run_id" in log_to_mlflow(str(tmp_path), {}, bare, None, "r")
    assert "unreachable" in log_to_mlflow(
        str(tmp_path), {"mlflow_run_id": run_id}, bare, "http://127.0.0.1:9", "r"
    )
    missing = log_to_mlflow(str(tmp_path), {"mlflow_run_id": "0" * 32}, config, None, "r")
    assert missing.startswith("not logged to MLflow run")
