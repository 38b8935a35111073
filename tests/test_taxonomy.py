import json

import pytest

from cg_ray.errors import UserError
from cg_ray.taxonomy import Taxonomy


def test_ids_and_parents(small_taxonomy):
    t = small_taxonomy
    assert t.labels["city"] == ["Austin", "Lyon", "Paris", "Versailles"]
    assert t.labels["state"] == ["IDF", "Rhone", "Texas"]
    assert t.labels["country"] == ["France", "USA"]
    assert t.labels["continent"] == ["America", "Europe"]
    assert t.parents["city"] == [2, 1, 0, 0]
    assert t.parents["state"] == [0, 0, 1]
    assert t.parents["country"] == [1, 0]
    assert t.sizes == [4, 3, 2, 2]
    assert t.ancestors(2) == [2, 0, 0, 1]


def test_json_round_trip_and_contract(small_taxonomy):
    data = json.loads(small_taxonomy.to_json())
    assert data["levels"] == ["city", "state", "country", "continent"]
    assert set(data["parents"]) == {"city", "state", "country"}
    assert Taxonomy.from_json(small_taxonomy.to_json()) == small_taxonomy


@pytest.mark.parametrize(
    "child,parent,row",
    [
        ("city", "state", {"city": "Lyon", "state": "Auvergne", "country": "France", "continent": "Europe"}),
        ("state", "country", {"city": "Nice", "state": "Rhone", "country": "Italy", "continent": "Europe"}),
        ("country", "continent", {"city": "Nice", "state": "PACA", "country": "France", "continent": "Asia"}),
    ],
)
def test_inconsistent_tree_is_refused_naming_label_and_rows(child, parent, row):
    rows = [
        {"city": "Lyon", "state": "Rhone", "country": "France", "continent": "Europe"},
        {"city": "Paris", "state": "IDF", "country": "France", "continent": "Europe"},
        row,
    ]
    with pytest.raises(UserError) as err:
        Taxonomy.from_rows(rows, where="row")
    message = str(err.value)
    assert f"{child} '{row[child]}'" in message
    assert "row 3" in message and "row 1" in message
    assert parent in message


def test_empty_and_missing_labels_are_refused():
    with pytest.raises(UserError, match="empty"):
        Taxonomy.from_rows([])
    with pytest.raises(UserError, match="missing state"):
        Taxonomy.from_rows([{"city": "A", "state": "", "country": "C", "continent": "D"}])


def test_differences_name_the_labels(small_taxonomy):
    other = Taxonomy.from_rows(
        [{"city": "Rome", "state": "Lazio", "country": "Italy", "continent": "Europe"}]
    )
    diff = small_taxonomy.differences(other)
    assert diff and "Rome" in diff[0]
    assert small_taxonomy.differences(small_taxonomy) == []


def test_bad_taxonomy_file():
    with pytest.raises(UserError, match="not valid JSON"):
        Taxonomy.from_json("{nope")
    with pytest.raises(UserError, match="not a cg_ray taxonomy"):
        Taxonomy.from_json('{"levels": []}')
