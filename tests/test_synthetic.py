"""The synthetic world: its hierarchy, its files, determinism, and that it carries signal."""

import csv

import numpy as np
import pytest

from cg_ray.data.decode import count_frames, decode_clip
from cg_ray.data.synthetic import make_world, places
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

SMALL = dict(cities=6, clips_per_city=3, frames=10, size=(48, 32))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def decoded(root, num_frames=10, size=16):
    """{clip folder: (T, size, size, 3)} for every clip of a frames world."""
    return {
        str(p.relative_to(root)): decode_clip(str(p), num_frames, size)
        for p in sorted(root.glob("*/*/*"))
        if p.is_dir()
    }


def test_default_hierarchy_is_non_trivial():
    world = places(12)
    rows = [dict(zip(LEVELS, p)) for p in world]
    tax = Taxonomy.from_rows(rows)
    assert tax.sizes == [12, 11, 9, 6]
    assert any(tax.parents["city"].count(s) >= 2 for s in range(tax.sizes[1]))
    assert any(tax.parents["state"].count(c) >= 2 for c in range(tax.sizes[2]))
    big = places(40)  # past the real list, generated names stay unique and consistent
    assert len({p[0] for p in big}) == 40
    assert Taxonomy.from_rows([dict(zip(LEVELS, p)) for p in big]).sizes[3] == 6
    assert all(" " not in name for p in big for name in p)


def test_frames_world_has_release_layout(tmp_path):
    summary = make_world(str(tmp_path), **SMALL)
    assert summary["clips"] == 18 and summary["splits"] == {"train": 12, "val": 6}
    labels = read_csv(tmp_path / "labels_list.csv")
    assert list(labels[0]) == ["City", "State", "Country", "Continent"] and len(labels) == 6
    for row in labels:
        city = row["City"]
        assert len(list((tmp_path / "val" / city).iterdir())) == 1  # at least one val clip each
        clip = next((tmp_path / "train" / city).iterdir())
        assert clip.name.startswith(city + "_")
        assert sorted(p.name for p in clip.iterdir()) == sorted(f"{n}.jpg" for n in range(1, 11))
    scenes = read_csv(tmp_path / "scene_labels.csv")
    assert list(scenes[0]) == ["video_id"] + [f"scene_{i}" for i in range(16)]
    assert len(scenes) == 18
    for row in scenes:
        assert sum(float(row[f"scene_{i}"]) for i in range(16)) == pytest.approx(1, abs=1e-5)


def test_same_seed_same_world_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_world(str(a), seed=3, **SMALL)
    make_world(str(b), seed=3, **SMALL)
    make_world(str(c), seed=4, **SMALL)
    for name in ["labels_list.csv", "scene_labels.csv"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    clips_a, clips_b, clips_c = decoded(a), decoded(b), decoded(c)
    assert clips_a.keys() == clips_b.keys() and len(clips_a) == 18
    for key in clips_a:
        np.testing.assert_array_equal(clips_a[key], clips_b[key])
    common = clips_a.keys() & clips_c.keys()
    assert any(not np.array_equal(clips_a[k], clips_c[k]) for k in common)
    assert (a / "scene_labels.csv").read_bytes() != (c / "scene_labels.csv").read_bytes()


def test_mp4_world(tmp_path):
    summary = make_world(str(tmp_path), fmt="mp4", cities=3, clips_per_city=2, frames=12, size=(47, 33))
    assert summary["size"] == [46, 32]  # yuv420p needs even dimensions
    rows = read_csv(tmp_path / "labels.csv")
    assert list(rows[0]) == ["path", "city", "state", "country", "continent", "split"]
    assert len(rows) == 6 and {r["split"] for r in rows} == {"train", "val"}
    video = tmp_path / rows[0]["path"]
    assert video.suffix == ".mp4" and video.parent.name == rows[0]["city"]
    assert count_frames(str(video)) == 12
    assert decode_clip(str(video), 12, 16).shape == (12, 16, 16, 3)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown synthetic format 'avi'"):
        make_world(str(tmp_path), fmt="avi")
    with pytest.raises(UserError, match="16x16"):
        make_world(str(tmp_path), size=(8, 8))


def test_world_signal_is_learnable_at_32px(tmp_path):
    """Nearest class centroid on mean 32x32 frames: far above chance at every level."""
    make_world(str(tmp_path), cities=12, clips_per_city=8, frames=8, size=(64, 48))
    hierarchy = {r["City"]: r for r in read_csv(tmp_path / "labels_list.csv")}
    feats, labels, splits = [], [], []
    for clip in sorted(tmp_path.glob("*/*/*")):
        if clip.is_dir():
            feats.append(decode_clip(str(clip), 8, 32).astype(np.float32).mean(0).ravel())
            labels.append(hierarchy[clip.parent.name])
            splits.append(clip.parent.parent.name)
    feats, train = np.stack(feats), np.array(splits) == "train"
    for level in ["Continent", "Country", "State", "City"]:
        y = np.array([row[level] for row in labels])
        names = sorted(set(y))
        centroids = np.stack([feats[train & (y == n)].mean(0) for n in names])
        dist = ((feats[~train][:, None] - centroids[None]) ** 2).sum(-1)
        accuracy = (np.array(names)[dist.argmin(1)] == y[~train]).mean()
        # Continent (the background) must be near perfect; every level at least 4x chance.
        floor = 0.9 if level == "Continent" else 4 / len(names)
        assert accuracy >= floor, (level, accuracy, floor)
