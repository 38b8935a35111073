"""prepare(): synthetic worlds through both layouts, and every bad input named clearly."""

import csv
import json
import shutil

import pyarrow.parquet as pq
import pytest

from cg_ray.data.decode import decode_clip
from cg_ray.data.layouts import MANIFEST_SCHEMA, prepare, stratified_split
from cg_ray.data.synthetic import make_world
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

SMALL = dict(cities=6, clips_per_city=4, frames=10, size=(32, 32))


def manifest(dest):
    return pq.read_table(dest / "manifest.parquet")


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


@pytest.fixture
def world(tmp_path):
    make_world(str(tmp_path / "world"), **SMALL)
    return tmp_path / "world"


def test_cityguessr_round_trip(world, tmp_path):
    dest = tmp_path / "prepared"
    report = prepare("cityguessr", str(world), str(dest))
    table = manifest(dest)
    assert table.schema.equals(MANIFEST_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == report["clips"] == 24 and report["splits"] == {"train": 18, "val": 6}
    with open(world / "labels_list.csv", newline="") as f:
        hierarchy = {r["City"]: r for r in csv.DictReader(f)}
    for row in rows:
        expected = hierarchy[row["city"]]
        assert [row[level] for level in LEVELS] == [
            expected[k] for k in ["City", "State", "Country", "Continent"]
        ]
        assert row["source"] == str(world / row["split"] / row["city"] / row["clip_id"])
        assert row["num_frames"] == 10
        assert len(row["scene_soft"]) == 16 and sum(row["scene_soft"]) == pytest.approx(1, 1e-5)
    taxonomy = Taxonomy.from_json((dest / "taxonomy.json").read_text())
    assert taxonomy.labels["city"] == sorted(hierarchy)
    for city_id, city in enumerate(taxonomy.labels["city"]):
        ids = taxonomy.ancestors(city_id)
        assert [taxonomy.labels[lv][i] for lv, i in zip(LEVELS, ids)] == [
            hierarchy[city][k] for k in ["City", "State", "Country", "Continent"]
        ]
    saved = json.loads((dest / "prepare_report.json").read_text())
    assert saved["skipped"] == [] and sum(saved["clips_per_label"]["city"].values()) == 24
    assert decode_clip(rows[0]["source"], 16, 16).shape == (16, 16, 16, 3)


def test_clip_folder_without_frames_is_skipped_and_reported(world, tmp_path):
    empty = world / "train" / "Lyon" / "Lyon_9999"
    empty.mkdir()
    (empty / "readme.txt").write_text("no frames here")
    report = prepare("cityguessr", str(world), str(tmp_path / "out"))
    assert report["clips"] == 24
    saved = json.loads((tmp_path / "out" / "prepare_report.json").read_text())
    assert [s["clip_id"] for s in saved["skipped"]] == ["Lyon_9999"]
    assert "no .jpg" in saved["skipped"][0]["reason"]
    assert saved["skipped"][0]["source"] == str(empty)


def test_missing_scene_labels_give_nulls(world, tmp_path):
    (world / "scene_labels.csv").unlink()
    prepare("cityguessr", str(world), str(tmp_path / "out"))
    column = manifest(tmp_path / "out")["scene_soft"]
    assert column.null_count == len(column) == 24


def test_mp4_world_through_videos_layout(tmp_path):
    make_world(str(tmp_path / "w"), fmt="mp4", **SMALL)
    report = prepare("videos", str(tmp_path / "w"), str(tmp_path / "out"))
    rows = manifest(tmp_path / "out").to_pylist()
    assert len(rows) == report["clips"] == 24 and report["splits"] == {"train": 18, "val": 6}
    with open(tmp_path / "w" / "labels.csv", newline="") as f:
        given = {r["path"].removesuffix(".mp4"): r for r in csv.DictReader(f)}
    for row in rows:
        assert row["split"] == given[row["clip_id"]]["split"]
        assert row["city"] == given[row["clip_id"]]["city"]
        assert row["num_frames"] == 10 and row["source"].endswith(".mp4")
        assert sum(row["scene_soft"]) == pytest.approx(1, abs=1e-5)
    assert decode_clip(rows[-1]["source"], 4, 16).shape == (4, 16, 16, 3)


def test_videos_without_split_are_split_by_city_and_bad_videos_skipped(tmp_path):
    make_world(str(tmp_path / "w"), fmt="mp4", **SMALL)
    with open(tmp_path / "w" / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f)]
    # Absolute paths, no split column, and the CSV passed directly as SOURCE.
    csv_path = tmp_path / "elsewhere.csv"
    write_csv(
        csv_path,
        ["path", *LEVELS],
        [[str(tmp_path / "w" / r["path"]), *(r[lv] for lv in LEVELS)] for r in rows],
    )
    broken = tmp_path / "w" / rows[0]["path"]
    broken.write_bytes(b"not a video at all")
    report = prepare("videos", str(csv_path), str(tmp_path / "out"), seed=1)
    out = manifest(tmp_path / "out").to_pylist()
    assert len(out) == 23 and [s["source"] for s in report["skipped"]] == [str(broken)]
    assert "cannot open video" in report["skipped"][0]["reason"]
    for city in {r["city"] for r in rows}:
        assert sum(r["split"] == "val" for r in out if r["city"] == city) == 1
    again = prepare("videos", str(csv_path), str(tmp_path / "again"), seed=1)
    assert manifest(tmp_path / "again").to_pylist() == out and again["splits"] == report["splits"]


def test_stratified_split_keeps_every_city_in_train():
    cities = ["a"] * 10 + ["b"] * 2 + ["c"]
    splits = stratified_split(cities, 0.2, seed=0)
    assert splits.count("val") == 2 + 1 + 0
    assert splits[12] == "train"
    assert stratified_split(cities, 0.2, seed=0) == splits


def test_missing_source_and_unknown_layout(tmp_path):
    with pytest.raises(UserError, match=r"source '.*nowhere' does not exist"):
        prepare("cityguessr", str(tmp_path / "nowhere"), str(tmp_path / "out"))
    with pytest.raises(UserError, match="unknown layout 'msls2'; known layouts: cityguessr, msls, videos"):
        prepare("msls2", str(tmp_path), str(tmp_path / "out"))


def test_empty_dataset(tmp_path):
    write_csv(
        tmp_path / "labels_list.csv",
        ["City", "State", "Country", "Continent"],
        [["Paris", "Ile_de_France", "France", "Europe"]],
    )
    with pytest.raises(UserError, match="no clips found"):
        prepare("cityguessr", str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="'.*plain' has no labels_list.csv"):
        prepare("cityguessr", str(tmp_path / "plain"), str(tmp_path / "out"))


def test_unknown_city_folder(world, tmp_path):
    shutil.copytree(world / "val" / "Lyon", world / "val" / "Atlantis")
    with pytest.raises(UserError, match=r"city folder '.*val/Atlantis' is not in labels_list.csv"):
        prepare("cityguessr", str(world), str(tmp_path / "out"))


def test_city_folder_without_frames(world, tmp_path):
    for clip in (world / "val" / "Lyon").iterdir():
        shutil.rmtree(clip)
        clip.mkdir()
    with pytest.raises(UserError, match=r"city folder '.*val/Lyon' has no frames"):
        prepare("cityguessr", str(world), str(tmp_path / "out"))


def test_inconsistent_labels_list_is_refused(world, tmp_path):
    with open(world / "labels_list.csv", newline="") as f:
        rows = list(csv.reader(f))
    # Put Lyon in Victoria, a state the Melbourne row already places in Australia.
    lyon = next(i for i, r in enumerate(rows) if r[0] == "Lyon")
    melbourne = next(i for i, r in enumerate(rows) if r[0] == "Melbourne")
    rows[lyon][1] = "Victoria"
    write_csv(world / "labels_list.csv", rows[0], rows[1:])
    first, second = sorted([lyon, melbourne])  # data row numbers: the header is row 0 here
    expected = {lyon: "France", melbourne: "Australia"}
    with pytest.raises(
        UserError,
        match=(
            f"state 'Victoria' is under country '{expected[second]}' in labels_list.csv row "
            f"{second} but under '{expected[first]}' in labels_list.csv row {first}"
        ),
    ):
        prepare("cityguessr", str(world), str(tmp_path / "out"))


def test_inconsistent_videos_csv_is_refused(tmp_path):
    write_csv(
        tmp_path / "labels.csv",
        ["path", "city", "state", "country", "continent"],
        [["a.mp4", "Lyon", "Rhone", "France", "Europe"], ["b.mp4", "Lyon", "Auvergne", "France", "Europe"]],
    )
    with pytest.raises(
        UserError,
        match=r"city 'Lyon' is under state 'Auvergne' in labels.csv "
        r"row 2 but under 'Rhone' in labels.csv row 1",
    ):
        prepare("videos", str(tmp_path), str(tmp_path / "out"))


def test_videos_csv_problems(tmp_path):
    with pytest.raises(UserError, match="has no labels.csv"):
        prepare("videos", str(tmp_path), str(tmp_path / "out"))
    write_csv(
        tmp_path / "labels.csv",
        ["path", "city", "country", "continent"],
        [["a.mp4", "Lyon", "France", "Europe"]],
    )
    with pytest.raises(UserError, match=r"labels.csv' is missing columns \['state'\]"):
        prepare("videos", str(tmp_path), str(tmp_path / "out"))
    write_csv(
        tmp_path / "labels.csv",
        ["path", *LEVELS, "split"],
        [
            ["a.mp4", "Lyon", "Rhone", "France", "Europe", "train"],
            ["b.mp4", "Lyon", "Rhone", "France", "Europe", ""],
        ],
    )
    with pytest.raises(UserError, match="row 2 has no split"):
        prepare("videos", str(tmp_path), str(tmp_path / "out"))
    write_csv(
        tmp_path / "labels.csv", ["path", *LEVELS], [["missing.mp4", "Lyon", "Rhone", "France", "Europe"]]
    )
    with pytest.raises(UserError, match=r"no clips found .*1 skipped"):
        prepare("videos", str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out" / "manifest.parquet").exists()


def test_duplicate_clip_ids_are_refused(world, tmp_path):
    clip = next((world / "train" / "Lyon").iterdir())
    shutil.copytree(clip, world / "val" / "Lyon" / clip.name)  # the same clip in both splits
    with pytest.raises(UserError, match=f"clip id '{clip.name}' appears 2 times"):
        prepare("cityguessr", str(world), str(tmp_path / "out"))
