import io
import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from output import own
from scene_helpers import TWO_FLAGS, places_resnet, save_csail, save_python2_style, sheet_flags, write_sheet

from cg_ray.cli import main
from cg_ray.data.decode import decode_clip
from cg_ray.data.tables import scene_targets
from cg_ray.errors import UserError
from cg_ray.labels.hierarchy import (
    category_weights,
    clip_label,
    frame_categories,
    read_categories,
    read_hierarchy,
)
from cg_ray.labels.labeler import SceneLabeler
from cg_ray.labels.places import load_places_weights, read_checkpoint_file

CATEGORIES = read_categories()


# -- the hierarchy rule, by hand -----------------------------------------------------------------


def test_a_class_with_two_flags_splits_its_probability_equally():
    flags = np.zeros((3, 16), dtype=np.int64)
    flags[0, [9, 10]] = 1  # class A: two level-2 categories
    flags[1, 12] = 1  # class B
    flags[2, 3] = 1  # class C
    weights = category_weights(flags)
    np.testing.assert_allclose(weights[0, [9, 10]], [0.5, 0.5])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    # A 0.5, B 0.3, C 0.2: scores 9 -> 0.25, 10 -> 0.25, 12 -> 0.3, 3 -> 0.2. Counting A fully for
    # each of its flags would pick 9 (0.5); splitting it picks 12.
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.7, 0.1, 0.2]])
    assert frame_categories(probs, torch.from_numpy(weights)).tolist() == [12, 9]


def test_clip_label_is_the_fraction_of_frames_and_majority_its_argmax():
    soft, majority = clip_label(np.array([3, 3, 7, 12, 3, 7, 7, 7]))
    expected = np.zeros(16, dtype=np.float32)
    expected[[3, 7, 12]] = [3 / 8, 4 / 8, 1 / 8]
    np.testing.assert_allclose(soft, expected)
    assert majority == 7 and math.isclose(float(soft.sum()), 1.0, rel_tol=1e-6)
    assert clip_label(np.array([5, 2, 2, 5]))[1] == 2  # ties: the lower id


def test_majority_training_targets_use_the_manifest_column():
    tie = [0.5, 0.5] + [0.0] * 14
    one = [0.0] * 16
    one[4] = 1.0
    soft_column = [tie, tie, one, None]
    targets = scene_targets(soft_column, 4, "majority", [1, None, float("nan"), None])
    assert targets[0].argmax() == 1 and targets[0].sum() == 1  # the column, not argmax 0
    assert targets[1].argmax() == 0 and targets[2].argmax() == 4  # no id: argmax of soft
    assert targets[3].sum() == 0
    np.testing.assert_allclose(scene_targets(soft_column, 4, "soft", [1, 1, 1, 1])[0], tie)


def test_sheet_in_the_official_format_reads_in_category_order(tmp_path):
    flags = write_sheet(tmp_path / "sheet.csv")
    weights = read_hierarchy(str(tmp_path / "sheet.csv"), CATEGORIES)
    assert weights.shape == (365, 16)
    np.testing.assert_allclose(weights, category_weights(flags))
    assert weights[CATEGORIES.index(TWO_FLAGS), 9] == 0.5


@pytest.mark.parametrize(
    "case,message",
    [
        ("missing", "no row for class '/a/alley'"),
        ("unknown", "unknown class '/z/zeppelin_hangar'"),
    ],
)
def test_sheet_with_a_missing_or_unknown_class_is_refused(tmp_path, case, message):
    names = [n for n in CATEGORIES if n != "/a/alley"] if case == "missing" else CATEGORIES
    write_sheet(tmp_path / "sheet.csv", names, extra_rows=["/z/zeppelin_hangar"] if case == "unknown" else [])
    with pytest.raises(UserError, match=message):
        read_hierarchy(str(tmp_path / "sheet.csv"), CATEGORIES)


def test_bad_flags_and_duplicate_rows_are_named(tmp_path):
    path = tmp_path / "sheet.csv"
    write_sheet(path)
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + [lines[3].replace(",0", ",x", 1)] + lines[4:]))
    with pytest.raises(UserError, match="row 4 .*flag 'x' must be 0 or 1"):
        read_hierarchy(str(path), CATEGORIES)
    path.write_text("\n".join(lines + [lines[5]]))
    with pytest.raises(UserError, match="listed twice"):
        read_hierarchy(str(path), CATEGORIES)


# -- checkpoints ---------------------------------------------------------------------------------


def test_csail_checkpoint_loads_without_module_prefixes(tmp_path):
    model = places_resnet()
    save_csail(model, tmp_path / "resnet18_places365.pth.tar")
    weights = load_places_weights(str(tmp_path / "resnet18_places365.pth.tar"))
    assert weights.arch == "resnet18" and weights.num_classes == 365
    for key, value in model.state_dict().items():
        torch.testing.assert_close(weights.state_dict[key], value)


def test_python2_pickle_loads_with_latin1(tmp_path):
    path = tmp_path / "old.pth.tar"
    save_python2_style(places_resnet(), path)
    with pytest.raises(UnicodeDecodeError):
        torch.load(path, weights_only=True)
    assert read_checkpoint_file(str(path))["note"] == "caf\u00e9"
    assert load_places_weights(str(path)).arch == "resnet18"


def test_wrong_architecture_names_the_arch_and_the_keys(tmp_path):
    save_csail(places_resnet(), tmp_path / "r18.pth.tar")
    with pytest.raises(UserError) as err:
        load_places_weights(str(tmp_path / "r18.pth.tar"), "resnet34")
    text = str(err.value)
    assert "not a resnet34 network" in text and "checkpoint says arch 'resnet18'" in text
    assert "missing keys: layer1.2." in text and "\n" not in text
    with pytest.raises(UserError, match="shape mismatches.*conv1.weight"):
        load_places_weights(str(tmp_path / "r18.pth.tar"), "resnet50")


# -- the labeller (what every actor runs) --------------------------------------------------------


def test_labeller_applies_the_two_flag_rule_to_real_network_outputs():
    """A network whose output is fixed (fc weight 0, bias = log-probabilities): /a/airfield 0.5
    (flags 9 and 10), class 12 0.3 (flag 12 only), the other 363 classes 0.2 together."""
    model = places_resnet()
    second = 12  # the class at index 12 has the single flag 12 in the test sheet
    probs = np.full(365, 0.2 / 363)
    probs[CATEGORIES.index(TWO_FLAGS)], probs[second] = 0.5, 0.3
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.log(torch.tensor(probs, dtype=torch.float32)))
    weights = category_weights(sheet_flags(CATEGORIES))
    expected = probs @ weights
    assert expected.argmax() == 12 and (probs @ (sheet_flags(CATEGORIES) > 0)).argmax() == 9
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    labeller = SceneLabeler([buffer.getvalue()], "resnet18", 365, weights)
    videos = np.random.default_rng(0).integers(0, 256, (2, 3, 32, 32, 3), dtype=np.uint8)
    soft, majority = labeller.clip_labels(videos)
    assert soft.shape == (2, 16) and majority.tolist() == [12, 12]
    np.testing.assert_allclose(soft[:, 12], 1.0)


# -- `cg-ray scenes` end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenes_inputs(tmp_path_factory):
    from cg_ray.data.layouts import prepare
    from cg_ray.data.synthetic import make_world

    root = tmp_path_factory.mktemp("scenes")
    make_world(str(root / "world"), cities=3, clips_per_city=4, frames=6, size=(32, 32), seed=3)
    prepare("cityguessr", str(root / "world"), str(root / "data"))
    model = places_resnet(seed=1)
    save_csail(model, root / "resnet18_places365.pth.tar")
    flags = write_sheet(root / "sheet.csv")
    return {
        "root": root,
        "data": str(root / "data"),
        "model": model,
        "flags": flags,
        "checkpoint": str(root / "resnet18_places365.pth.tar"),
        "sheet": str(root / "sheet.csv"),
    }


def _scenes_args(inputs, *extra):
    return [
        "scenes",
        inputs["data"],
        "--checkpoint",
        inputs["checkpoint"],
        "--hierarchy",
        inputs["sheet"],
        "--frames",
        "4",
        "--size",
        "32",
        "--batch-size",
        "3",
        "--flush-every",
        "4",
        *extra,
    ]


@pytest.mark.parametrize(
    "change,message",
    [
        (["--arch", "resnet34"], "is not a resnet34 network"),
        (["--hierarchy", "/nowhere/sheet.csv"], "hierarchy sheet '/nowhere/sheet.csv' does not exist"),
        (["--checkpoint", "/nowhere/r18.pth.tar"], "checkpoint '/nowhere/r18.pth.tar' does not exist"),
        (["--actors", "0"], "--actors must be at least 1, got 0"),
    ],
)
def test_scenes_bad_inputs_get_one_line_errors(scenes_inputs, capsys, change, message):
    args = _scenes_args(scenes_inputs)
    for i in range(0, len(change), 2):
        if change[i] in args:
            args[args.index(change[i]) + 1] = change[i + 1]
        else:
            args += change[i : i + 2]
    assert main(args) == 2
    err = own(capsys.readouterr().err)
    assert err.startswith("cg-ray scenes: error:") and message in err and "\n" not in err


def _expected_soft(inputs, source: str) -> np.ndarray:
    """The rule, recomputed here from the decoded frames: probabilities of the network, W from
    the flags, top category per frame, fraction per category."""
    frames = decode_clip(source, 4, 32)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(
        1, 3, 1, 1
    )
    with torch.no_grad():
        probs = torch.softmax(inputs["model"](x), dim=-1).numpy()
    flags = inputs["flags"].astype(np.float64)
    top = (probs @ (flags / flags.sum(axis=1, keepdims=True))).argmax(axis=1)
    return np.bincount(top, minlength=16) / 4


@pytest.mark.slow
def test_scenes_labels_every_clip_resumes_and_skips_corrupt_clips(scenes_inputs, ray_session, capsys):
    from cg_ray.labels.scenes import PARTIAL, SceneOptions, _settings, write_part

    data = scenes_inputs["data"]
    before = pq.read_table(os.path.join(data, "manifest.parquet")).to_pylist()
    broken = before[0]
    for name in os.listdir(broken["source"]):  # every frame of one clip unreadable
        with open(os.path.join(broken["source"], name), "wb") as f:
            f.write(b"not a jpeg")
    # An interrupted earlier run with the same settings left labels for two clips.
    weights = read_hierarchy(scenes_inputs["sheet"], CATEGORIES)
    settings = _settings(
        SceneOptions(scenes_inputs["checkpoint"], scenes_inputs["sheet"], num_frames=4, image_size=32),
        weights,
        "resnet18",
    )
    os.makedirs(os.path.join(data, PARTIAL))
    with open(os.path.join(data, PARTIAL, "settings.json"), "w") as f:
        json.dump(settings, f)
    resumed = {before[1]["clip_id"], before[2]["clip_id"]}
    write_part(
        data,
        [
            {"clip_id": c, "scene_soft": [0.0] * 7 + [1.0] + [0.0] * 8, "scene_majority": 7, "error": None}
            for c in resumed
        ],
    )

    assert main(_scenes_args(scenes_inputs)) == 0
    out = capsys.readouterr()
    summary = json.loads(own(out.out).splitlines()[0])
    assert summary["clips"] == 12 and summary["resumed"] == 2 and summary["skipped"] == 1
    assert summary["labelled"] == 9 and "scenes [####################] 10/10 clips" in out.err
    assert "skipped 1" in out.err

    after = pq.read_table(os.path.join(data, "manifest.parquet"))
    assert after.schema.field("scene_soft").type.value_type.bit_width == 32
    rows = after.to_pylist()
    assert [{k: v for k, v in r.items() if k not in ("scene_soft", "scene_majority")} for r in rows] == [
        {k: v for k, v in r.items() if k != "scene_soft"} for r in before
    ]
    for row in rows:
        if row["clip_id"] == broken["clip_id"]:
            assert row["scene_soft"] is None and row["scene_majority"] is None
            continue
        soft = np.asarray(row["scene_soft"])
        assert soft.shape == (16,) and math.isclose(soft.sum(), 1.0, rel_tol=1e-6)
        assert row["scene_majority"] == int(np.argmax(soft))
        if row["clip_id"] in resumed:
            assert row["scene_majority"] == 7  # kept from the earlier run, not relabelled
        else:
            np.testing.assert_allclose(soft, _expected_soft(scenes_inputs, row["source"]), atol=1e-6)
    assert any(0 < max(r["scene_soft"]) < 1 for r in rows if r["scene_soft"])  # truly soft
    assert not os.path.exists(os.path.join(data, PARTIAL))
    report = json.loads(open(os.path.join(data, "scenes_report.json")).read())
    assert report["skipped_clips"][0]["clip_id"] == broken["clip_id"]
    assert "cannot decode frame" in report["skipped_clips"][0]["reason"]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_partial_results_and_manifest_update_on_local_and_s3_storage(where, tmp_path, request):
    """The driver side of resuming, on both kinds of storage: part files are read back, parts of
    other settings are dropped, and the manifest is rewritten with every other column kept."""
    import pyarrow as pa

    from cg_ray import storage
    from cg_ray.labels.scenes import PARTIAL, load_partial, update_manifest, write_part

    dest = request.getfixturevalue("s3")() + "/data" if where == "s3" else str(tmp_path)
    manifest = storage.join(dest, "manifest.parquet")
    sink = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "clip_id": ["a", "b", "c"],
                "city": ["X", "Y", "Z"],
                "scene_soft": pa.array([None, None, [1.0] + [0.0] * 15], pa.list_(pa.float32())),
            }
        ),
        sink,
    )
    storage.write_bytes(manifest, sink.getvalue())
    settings = {"checkpoint": "c.pth.tar", "num_frames": 4}
    assert load_partial(dest, settings) == {}
    soft = [0.25] * 4 + [0.0] * 12
    write_part(
        dest,
        [
            {"clip_id": "a", "scene_soft": soft, "scene_majority": 0, "error": None},
            {"clip_id": "b", "scene_soft": None, "scene_majority": None, "error": "bad"},
        ],
    )
    done = load_partial(dest, settings)
    assert list(done) == ["a"]  # the failed clip is tried again
    table = update_manifest(manifest, done)
    again = pq.read_table(io.BytesIO(storage.read_bytes(manifest)))
    assert again.equals(table) and again.column_names == ["clip_id", "city", "scene_soft", "scene_majority"]
    assert again.column("scene_soft").to_pylist() == [soft, None, None]
    assert again.column("scene_majority").to_pylist() == [0, None, None]
    assert [i.base_name for i in storage.list_dir(dest) if "tmp" in i.base_name] == []
    assert load_partial(dest, {**settings, "num_frames": 8}) == {}  # other settings: dropped
    assert [i.base_name for i in storage.list_dir(storage.join(dest, PARTIAL))] == ["settings.json"]
