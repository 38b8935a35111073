"""Bad input at the command line: one clear line on stderr, exit status 2, no traceback."""

import subprocess
import sys

import pytest
from output import own

from cg_ray.cli import main


def run(args, capsys):
    code = main(args)
    err = own(capsys.readouterr().err)
    return code, err


def test_missing_source(tmp_path, capsys):
    code, err = run(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "does not exist" in err and "nowhere" in err and len(err.splitlines()) == 1


def test_empty_dataset(tmp_path, capsys):
    (tmp_path / "src" / "train").mkdir(parents=True)
    (tmp_path / "src" / "labels_list.csv").write_text(
        "City,State,Country,Continent\nParis,Ile_de_France,France,Europe\n"
    )
    code, err = run(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "no clips" in err


def test_city_folder_without_frames(tmp_path, capsys):
    (tmp_path / "src" / "train" / "Paris" / "Paris_0000").mkdir(parents=True)
    (tmp_path / "src" / "labels_list.csv").write_text(
        "City,State,Country,Continent\nParis,Ile_de_France,France,Europe\n"
    )
    code, err = run(["prepare", str(tmp_path / "src"), "--out", str(tmp_path / "d")], capsys)
    assert code == 2 and "Paris" in err and "frames" in err


@pytest.mark.parametrize(
    "override,message",
    [
        ("train.epochz=2", "unknown config key 'train.epochz'"),
        ("train.batch_size=big", "train.batch_size: expected int"),
    ],
)
def test_bad_config_values(tmp_path, capsys, override, message):
    code, err = run(["train", "--config", "configs/demo.yaml", "--set", override], capsys)
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_dataset_that_is_not_prepared(tmp_path, capsys):
    code, err = run(["train", "--config", "configs/demo.yaml", "--set", f"data.path={tmp_path}"], capsys)
    assert code == 2 and "not a prepared dataset" in err and "cg-ray prepare" in err


def test_checkpoint_that_is_not_one(tmp_path, capsys):
    fake = tmp_path / "ckpt"
    fake.mkdir()
    (fake / "checkpoint.pt").write_bytes(b"definitely not a torch file")
    code, err = run(["evaluate", "--checkpoint", str(fake), "--data", str(tmp_path)], capsys)
    assert code == 2 and "not a cg_ray checkpoint" in err
    code, err = run(["evaluate", "--checkpoint", str(tmp_path / "none"), "--data", str(tmp_path)], capsys)
    assert code == 2 and "does not exist" in err


def test_no_traceback_from_the_real_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cg_ray", "prepare", str(tmp_path / "missing"), "--out", str(tmp_path / "d")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("cg-ray prepare: error:")
