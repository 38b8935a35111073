"""`cg-ray predict` on single inputs: mp4, frame folders, URIs, unreadable files, JSON shape,
and the listing of inputs for batch prediction. A tiny model trained in-process, no Ray."""

import json
import os

import pytest
import torch
from output import own
from predict_helpers import CITIES, mp4_world, train_tiny_checkpoint

from cg_ray.cli import main
from cg_ray.data.listing import list_inputs
from cg_ray.data.synthetic import make_world
from cg_ray.errors import UserError
from cg_ray.predict.predictor import level_scores
from cg_ray.ray_env import pool_plan
from cg_ray.taxonomy import LEVELS


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    rows = mp4_world(str(root / "mp4"), clips_per_city=2)
    taxonomy = train_tiny_checkpoint(str(root / "ckpt"), rows, steps=8)
    # The same world as frame folders (CityGuessr layout): other clips, same look.
    make_world(str(root / "frames"), cities=CITIES, clips_per_city=1, frames=8, size=(32, 32), seed=5)
    garbage = root / "garbage.mp4"
    garbage.write_bytes(os.urandom(4000))
    return {
        "root": root,
        "rows": rows,
        "ckpt": str(root / "ckpt"),
        "taxonomy": taxonomy,
        "garbage": str(garbage),
    }


def frame_folder(setup, city):
    split_dirs = [setup["root"] / "frames" / s / city for s in ("train", "val")]
    return str(next(d for d in split_dirs if d.exists()).iterdir().__next__())


def run_json(capsys, setup, *args):
    code = main(["predict", "--checkpoint", setup["ckpt"], "--json", *args])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in own(captured.out).splitlines()], captured.err


def test_predict_mp4_prints_a_table(setup, capsys):
    row = setup["rows"][0]
    assert main(["predict", "--checkpoint", setup["ckpt"], row["path"]]) == 0
    lines = own(capsys.readouterr().out).splitlines()
    assert lines[0] == row["path"]
    for line, level in zip(lines[1:5], LEVELS):
        # "  city      Abu_Dhabi   97.3%   top-5: Abu_Dhabi 97.3%  ..."
        assert line.split()[0] == level and line.split()[1] == row[level]
        assert "top-5:" in line and line.count("%") == 1 + min(5, len(setup["taxonomy"].labels[level]))


def test_predict_frame_folder(setup, capsys):
    folder = frame_folder(setup, "Lyon")
    code, out, err = run_json(capsys, setup, folder)
    assert code == 0 and err == ""
    assert out[0]["input"] == folder
    assert (out[0]["city"], out[0]["country"], out[0]["continent"]) == ("Lyon", "France", "Europe")


def test_unreadable_inputs_get_their_own_error_and_the_rest_are_predicted(setup, capsys):
    good, missing = setup["rows"][2]["path"], str(setup["root"] / "no_such.mp4")
    folder = frame_folder(setup, "Chicago")
    code, out, err = run_json(capsys, setup, good, setup["garbage"], missing, folder)
    assert code == 0
    assert [o["input"] for o in out] == [good, setup["garbage"], missing, folder]
    assert out[0]["city"] == setup["rows"][2]["city"] and out[3]["city"] == "Chicago"
    assert "error" in out[1] and "error" in out[2] and "city" not in out[1]
    errors = err.strip().splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("cg-ray predict: error: ") and setup["garbage"] in errors[0]
    assert missing in errors[1] and "does not exist" in errors[1]


def test_all_inputs_unreadable_is_an_error(setup, capsys):
    code = main(["predict", "--checkpoint", setup["ckpt"], setup["garbage"]])
    err = capsys.readouterr().err
    assert code == 2 and "none of the 1 inputs could be read" in err


@pytest.mark.parametrize("mode", ["flat", "independent", "codependent"])
def test_json_shape(setup, capsys, mode):
    taxonomy, row = setup["taxonomy"], setup["rows"][4]
    code, out, _ = run_json(capsys, setup, "--top-k", "3", "--mode", mode, row["path"])
    assert code == 0 and len(out) == 1
    result = out[0]
    assert set(result) == {"input", "city", "state", "country", "continent", "top_k"}
    assert set(result["top_k"]) == set(LEVELS)
    for level in LEVELS:
        top = result["top_k"][level]
        assert len(top) == min(3, len(taxonomy.labels[level]))
        assert all(set(t) == {"label", "prob"} and t["label"] in taxonomy.labels[level] for t in top)
        assert top[0]["label"] == result[level]
        assert 0 <= sum(t["prob"] for t in top) <= 1 + 1e-5
        if mode != "codependent":  # codependent forces the city's ancestors first
            assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
    # Whatever the mode, the picks of this trained model form one branch of the tree.
    city_id = taxonomy.index("city")[result["city"]]
    assert [taxonomy.labels[lvl][i] for lvl, i in zip(LEVELS, taxonomy.ancestors(city_id))] == [
        result[lvl] for lvl in LEVELS
    ]


def test_top_k_larger_than_a_level_gives_the_whole_level(setup, capsys):
    _, out, _ = run_json(capsys, setup, "--top-k", "50", setup["rows"][0]["path"])
    assert len(out[0]["top_k"]["continent"]) == 6 and len(out[0]["top_k"]["city"]) == CITIES
    assert sum(t["prob"] for t in out[0]["top_k"]["city"]) == pytest.approx(1, abs=1e-4)


def test_predict_file_uri(setup, capsys):
    path = setup["rows"][1]["path"]
    code, out, _ = run_json(capsys, setup, "file://" + path)
    assert code == 0 and out[0]["city"] == setup["rows"][1]["city"]


def test_predict_s3_uri(setup, capsys, monkeypatch):
    from moto.server import ThreadedMotoServer

    from cg_ray import storage

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }.items():
            monkeypatch.setenv(key, value)
        import boto3

        boto3.client("s3", endpoint_url=f"http://{host}:{port}").create_bucket(Bucket="clips")
        row = setup["rows"][3]
        with open(row["path"], "rb") as f:
            storage.write_bytes("s3://clips/a/clip.mp4", f.read())
        capsys.readouterr()  # moto's start-up banner
        code, out, _ = run_json(capsys, setup, "s3://clips/a/clip.mp4", "s3://clips/a/none.mp4")
        assert code == 0 and out[0]["city"] == row["city"] and "error" in out[1]
    finally:
        server.stop()


def test_bad_arguments_are_one_line_errors(setup, capsys):
    cases = [
        ([], "give either INPUT"),
        (["--out", "x.parquet", setup["rows"][0]["path"]], "--out and --actors go with --input-list"),
        (["--input-list", str(setup["root"] / "mp4")], "--input-list needs --out"),
        (["--top-k", "0", setup["rows"][0]["path"]], "--top-k must be at least 1"),
    ]
    for args, message in cases:
        assert main(["predict", "--checkpoint", setup["ckpt"], *args]) == 2
        assert message in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(setup["root"]), setup["rows"][0]["path"]]) == 2
    assert "does not exist" in capsys.readouterr().err  # a folder without checkpoint.pt


def test_level_scores_by_hand(small_taxonomy):
    """Cities Austin, Lyon, Paris, Versailles; states IDF, Rhone, Texas; countries France, USA;
    continents America, Europe (ids in sorted order)."""
    from cg_ray.train.checkpoint import LoadedModel

    loaded = LoadedModel(None, None, small_taxonomy, 0)
    probs = {
        "city": torch.tensor([[0.1, 0.2, 0.3, 0.4]]),
        "state": torch.tensor([[0.5, 0.3, 0.2]]),
        "country": torch.tensor([[0.6, 0.4]]),
        "continent": torch.tensor([[0.3, 0.7]]),
    }
    flat = level_scores(probs, loaded, "flat")
    assert torch.allclose(flat["city"], probs["city"])
    product = level_scores(probs, loaded, "independent")
    # Austin: .1*.2*.4*.3, Lyon: .2*.3*.6*.7, Paris: .3*.5*.6*.7, Versailles: .4*.5*.6*.7
    raw = torch.tensor([0.0024, 0.0252, 0.063, 0.084])
    assert torch.allclose(product["city"][0], raw / raw.sum())
    assert torch.allclose(product["continent"], probs["continent"])


def test_list_inputs_from_folder_csv_and_text(tmp_path):
    for name in ["a/one.mp4", "a/two.MKV", "b/notes.txt", "c/clip7/1.jpg", "c/clip7/2.jpg", "x.webm"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    assert list_inputs(str(tmp_path)) == [
        str(tmp_path / p) for p in ("a/one.mp4", "a/two.MKV", "x.webm", "c/clip7")
    ]
    (tmp_path / "list.csv").write_text("path,city\na/one.mp4,Lyon\n/abs/v.mp4,Lima\n")
    assert list_inputs(str(tmp_path / "list.csv")) == [str(tmp_path / "a/one.mp4"), "/abs/v.mp4"]
    (tmp_path / "list.txt").write_text("# clips\nx.webm\n\ns3://bucket/k.mp4\n")
    assert list_inputs(str(tmp_path / "list.txt")) == [str(tmp_path / "x.webm"), "s3://bucket/k.mp4"]
    (tmp_path / "bad.csv").write_text("video\na.mp4\n")
    with pytest.raises(UserError, match="no 'path' column"):
        list_inputs(str(tmp_path / "bad.csv"))
    with pytest.raises(UserError, match="does not exist"):
        list_inputs(str(tmp_path / "missing"))


def test_pool_is_sized_to_the_cluster():
    assert pool_plan({"CPU": 16.0}) == {"actors": 16, "num_gpus": 0, "use_gpu": False}
    assert pool_plan({"CPU": 1.0}) == {"actors": 1, "num_gpus": 0, "use_gpu": False}
    assert pool_plan({"CPU": 32.0, "GPU": 4.0}) == {"actors": 4, "num_gpus": 1, "use_gpu": True}
    assert pool_plan({"CPU": 8.0}, actors=3)["actors"] == 3
    with pytest.raises(UserError):
        pool_plan({"CPU": 8.0}, actors=0)
