import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("CG_RAY_PROGRESS", "0")

import pytest

from cg_ray.taxonomy import Taxonomy


@pytest.fixture
def small_taxonomy() -> Taxonomy:
    """4 cities, 3 states, 2 countries, 2 continents (ids follow sorted names)."""
    rows = [
        {"city": "Lyon", "state": "Rhone", "country": "France", "continent": "Europe"},
        {"city": "Paris", "state": "IDF", "country": "France", "continent": "Europe"},
        {"city": "Versailles", "state": "IDF", "country": "France", "continent": "Europe"},
        {"city": "Austin", "state": "Texas", "country": "USA", "continent": "America"},
    ]
    return Taxonomy.from_rows(rows)
