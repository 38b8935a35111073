"""The official training code's label files and Mapillary SLS, on fixtures written in their
exact formats; the MSLS filter and the stratified split; --min-frames for every layout."""

import csv
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from output import own
from PIL import Image

from cg_ray.cli import main
from cg_ray.data.decode import decode_clip
from cg_ray.data.layouts import prepare
from cg_ray.data.msls import read_hierarchy
from cg_ray.data.synthetic import make_world
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

SMALL = dict(cities=6, clips_per_city=4, frames=10, size=(32, 32))


def rows_of(dest):
    return pq.read_table(dest / "manifest.parquet").to_pylist()


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


# -- the official label files -----------------------------------------------------------------


@pytest.fixture
def official(tmp_path):
    """A release world plus train/val txt files of ids (frames_dir as the authors' absolute
    paths), 512 text and 16 scene floats, and the JSON of id maps; ids follow labels_list.csv."""
    world = tmp_path / "world"
    make_world(str(world), **SMALL)
    with open(world / "labels_list.csv", newline="") as f:
        hierarchy = list(csv.DictReader(f))
    ids = {}
    for key in ("City", "State", "Country", "Continent"):
        for row in hierarchy:
            ids.setdefault(key, {}).setdefault(row[key], len(ids.get(key, {})))
    maps = {"city_state": {}, "state_country": {}, "country_continent": {}}
    for row in hierarchy:
        c, s, n, k = (ids[key][row[key]] for key in ("City", "State", "Country", "Continent"))
        maps["city_state"][str(c)], maps["state_country"][str(s)] = s, n
        maps["country_continent"][str(n)] = k
    (world / "hierarchy.json").write_text(json.dumps(maps))
    by_city = {row["City"]: row for row in hierarchy}
    for split in ("train", "val"):
        lines = []
        for clip in sorted((world / split).glob("*/*")):
            row = by_city[clip.parent.name]
            numbers = [ids[key][row[key]] for key in ("City", "State", "Country", "Continent")]
            scene = np.eye(16)[len(lines) % 16]
            values = [
                f"/home/authors/CityGuessr68k/{split}/{clip.parent.name}/{clip.name}",
                *map(str, numbers),
                *["0.01"] * 512,
                *[f"{v:g}" for v in scene],
            ]
            lines.append(",".join(values))
        (world / f"{split}_labels_final.txt").write_text("\n".join(lines) + "\n")
    return world, hierarchy


def test_official_label_files_with_names(official, tmp_path):
    world, hierarchy = official
    report = prepare("cityguessr", str(world), str(tmp_path / "out"))
    rows = rows_of(tmp_path / "out")
    assert report["clips"] == 24 and report["splits"] == {"train": 18, "val": 6}
    by_city = {row["City"]: row for row in hierarchy}
    for row in rows:
        expected = by_city[row["city"]]
        assert [row[level] for level in LEVELS] == [
            expected[k] for k in ("City", "State", "Country", "Continent")
        ]
        assert row["source"] == str(world / row["split"] / row["city"] / row["clip_id"])
        assert row["num_frames"] == 10 and sum(row["scene_soft"]) == 1.0
    assert decode_clip(rows[0]["source"], 4, 8).shape == (4, 8, 8, 3)


def test_official_label_files_without_names_and_bad_ids(official, tmp_path):
    world, _ = official
    (world / "labels_list.csv").unlink()
    prepare("cityguessr", str(world), str(tmp_path / "out"))
    rows = rows_of(tmp_path / "out")
    assert {r["city"] for r in rows} == {f"city_{i}" for i in range(6)}
    assert all(r["state"].startswith("state_") and r["continent"].startswith("continent_") for r in rows)
    text = (world / "val_labels_final.txt").read_text().splitlines()
    fields = text[1].split(",")
    fields[2] = str(int(fields[2]) + 1)  # a state id the id maps do not give this city
    (world / "val_labels_final.txt").write_text("\n".join([text[0], ",".join(fields)] + text[2:]))
    with pytest.raises(
        UserError,
        match=r"val_labels_final.txt line 2: city \d+ is under state "
        r"\d+ in hierarchy.json, but the line says \d+",
    ):
        prepare("cityguessr", str(world), str(tmp_path / "again"))
    (world / "hierarchy.json").unlink()
    with pytest.raises(UserError, match="no JSON file of id maps"):
        prepare("cityguessr", str(world), str(tmp_path / "again"))


# -- Mapillary SLS ----------------------------------------------------------------------------


def write_msls_subset(folder, sequences, panoramas=(), with_raw=True, missing=()):
    """sequences: {sequence_key: n frames}; frames listed shuffled in seq_info.csv."""
    rng = np.random.default_rng(len(sequences))
    (folder / "images").mkdir(parents=True)
    rows = []
    for seq, n in sequences.items():
        for frame in range(n):
            key = f"{seq}k{frame}"
            rows.append([key, seq, frame * 3])
            if key not in missing:
                grey = np.full((16, 24, 3), 10 * frame, dtype=np.uint8)
                Image.fromarray(grey).save(folder / "images" / f"{key}.jpg")
    order = rng.permutation(len(rows))
    write_csv(
        folder / "seq_info.csv",
        ["", "key", "sequence_key", "frame_number"],
        [[i, *rows[j]] for i, j in enumerate(order)],
    )
    write_csv(folder / "subtask_index.csv", ["", "key", "all"], [[0, rows[0][0], True]])
    if with_raw:
        write_csv(
            folder / "raw.csv",
            ["", "key", "lon", "lat", "ca", "captured_at", "pano"],
            [[i, r[0], 1.0, 2.0, 0.0, 0, r[0] in panoramas] for i, r in enumerate(rows)],
        )


@pytest.fixture
def msls(tmp_path):
    root = tmp_path / "msls"
    for city, part in (("london", "train_val"), ("tokyo", "train_val"), ("miami", "test")):
        for subset in ("query", "database"):
            sequences = {f"{city[:2]}{subset[0]}{i}": 16 + i for i in range(5)}
            sequences[f"{city[:2]}{subset[0]}short"] = 14  # below the default --min-frames 15
            # In train_val queries, panoramas take q0 from 16 frames to 15 (kept) and q1 from
            # 17 to 14 (dropped).
            panoramas = (
                {f"{city[:2]}q0k3"} | {f"{city[:2]}q1k{k}" for k in (0, 1, 2)}
                if subset == "query" and part == "train_val"
                else set()
            )
            write_msls_subset(root / part / city / subset, sequences, panoramas, with_raw=part == "train_val")
    return root


def test_msls_sequences_filter_and_split(msls, tmp_path):
    dest = tmp_path / "out"
    report = prepare("msls", str(msls), str(dest), seed=3)
    rows = rows_of(dest)
    # Per city and subset: 5 sequences kept; q1 of the train_val cities falls to 14 frames.
    kept = {r["clip_id"] for r in rows}
    assert "london/query/loq0" in kept and "london/query/loq1" not in kept
    assert "miami/query/miq1" in kept  # test cities have no raw.csv: nothing is a panorama
    assert len(rows) == report["clips"] == 6 * 5 - 2
    reasons = {s["clip_id"]: s["reason"] for s in report["skipped"]}
    assert reasons["london/query/loq1"] == "14 frames, fewer than --min-frames 15"
    assert reasons["tokyo/database/todshort"] == "14 frames, fewer than --min-frames 15"
    assert len(reasons) == 6 + 2
    london_q0 = next(r for r in rows if r["clip_id"] == "london/query/loq0")
    # Ordered by frame_number, panorama k3 gone.
    assert london_q0["frames"] == [f"loq0k{k}.jpg" for k in range(16) if k != 3]
    assert london_q0["num_frames"] == 15
    hierarchy = read_hierarchy(None)
    assert len(hierarchy) == 30
    for row in rows:
        assert [row[level] for level in LEVELS] == [hierarchy[row["city"]][level] for level in LEVELS]
    # Stratified 80:20 with the seed: every city in both splits, 2 of its ~10 in val.
    for city in ("london", "tokyo", "miami"):
        splits = [r["split"] for r in rows if r["city"] == city]
        assert "train" in splits and splits.count("val") == 2
    assert prepare("msls", str(msls), str(tmp_path / "again"), seed=3)["splits"] == report["splits"]
    assert rows_of(tmp_path / "again") == rows
    clip = decode_clip(london_q0["source"], 15, 8, frames=london_q0["frames"])
    # Frame k was written with grey level 10k: frame order survives (k3 is the panorama).
    np.testing.assert_allclose(clip[:, 0, 0, 0], [10 * k for k in range(16) if k != 3], atol=3)


def test_msls_cli_min_frames_hierarchy_and_bad_city(msls, tmp_path, capsys):
    assert (
        main(
            [
                "prepare",
                str(msls),
                "--layout",
                "msls",
                "--out",
                str(tmp_path / "a"),
                "--min-frames",
                "18",
                "--val-fraction",
                "0.4",
            ]
        )
        == 0
    )
    rows = rows_of(tmp_path / "a")
    assert rows and min(r["num_frames"] for r in rows) >= 18
    custom = tmp_path / "h.csv"
    write_csv(custom, list(LEVELS), [["london", "LDN", "UK", "Europe"], ["tokyo", "Kanto", "Japan", "Asia"]])
    code = main(
        ["prepare", str(msls), "--layout", "msls", "--out", str(tmp_path / "b"), "--hierarchy", str(custom)]
    )
    assert code == 2
    err = own(capsys.readouterr().err).splitlines()
    assert err == [
        "cg-ray prepare: error: MSLS city 'miami' (test/miami) is not in the hierarchy; "
        "add a row for it to a CSV and pass it with --hierarchy"
    ]


def test_msls_missing_image_is_skipped(msls, tmp_path):
    (msls / "test" / "miami" / "query" / "images" / "miq2k5.jpg").unlink()
    report = prepare("msls", str(msls), str(tmp_path / "out"))
    skipped = {s["clip_id"]: s["reason"] for s in report["skipped"]}
    assert skipped["miami/query/miq2"] == "1 of its images are missing, e.g. miq2k5.jpg"


def test_min_frames_applies_to_every_layout(tmp_path):
    make_world(str(tmp_path / "w"), **SMALL)
    clip = next((tmp_path / "w" / "train" / "Lyon").iterdir())
    for n in range(6, 11):
        (clip / f"{n}.jpg").unlink()
    report = prepare("cityguessr", str(tmp_path / "w"), str(tmp_path / "out"), min_frames=8)
    assert report["clips"] == 23 and report["min_frames"] == 8
    assert report["skipped"] == [
        {"clip_id": clip.name, "source": str(clip), "reason": "5 frames, fewer than --min-frames 8"}
    ]
    assert prepare("cityguessr", str(tmp_path / "w"), str(tmp_path / "all"))["clips"] == 24
