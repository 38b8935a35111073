"""`make gpu-check`: without a GPU one line and exit 0; with CPU=1 every step runs end to end at
tiny sizes (the script that a lent GPU runs unchanged) and reports its figures."""

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest
from tmpdirs import short_tmpdir

ROOT = Path(__file__).resolve().parent.parent


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_flops_by_device_name():
    peak = gpu_check().peak_flops
    assert peak("NVIDIA H100 80GB HBM3") == peak("NVIDIA H200") == 989e12
    assert peak("NVIDIA H100 PCIe") == 756e12 and peak("NVIDIA GH200 480GB") == 989e12
    assert peak("NVIDIA A100-SXM4-80GB") == 312e12 and peak("NVIDIA A10G") == 70e12
    assert peak("NVIDIA RTX A6000") == 155e12 and peak("NVIDIA RTX 6000 Ada Generation") == 364e12
    assert peak("NVIDIA L4") == 121e12 and peak("NVIDIA L40S") == 362e12
    assert peak("NVIDIA RTX A4000") == 77e12 and peak("NVIDIA A40") == 150e12
    assert peak("Tesla V100-SXM2-16GB") is None  # no bf16 tensor cores: MFU not claimed


def test_without_a_gpu_it_says_so_in_one_line(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert gpu_check().main([]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("gpu-check: no CUDA GPU here") and "\n" not in out


@pytest.mark.slow
def test_make_gpu_check_cpu_runs_every_step(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "RAY_TMPDIR": short_tmpdir("cgr-gct-")}
    env.pop("RAY_ADDRESS", None)
    before = set(os.listdir("/tmp"))
    # -o: the venv counts as installed (a test installs nothing, even after pyproject.toml changed)
    proc = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed", "gpu-check", "CPU=1", f"OUT={out}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not [p for p in os.listdir("/tmp") if p.startswith("cgr-gc-") and p not in before]  # it used ours
    print(proc.stdout[proc.stdout.find("gpu-check on") :])  # the table, with pytest -s
    result = json.loads(out.read_text())
    steps = result["steps"]
    assert list(steps) == [
        "dataset",
        "ray_start",
        "bare_loop",
        "train",
        "overhead",
        "train_compile",
        "evaluate",
        "predict_one",
        "batch_predict",
        "scenes",
        "object_store",
        "jpeg_decode",
    ]
    failed = {name: row for name, row in steps.items() if row["status"] == "failed"}
    assert not failed, failed
    assert steps["train_compile"]["status"] == "skipped"  # inductor on a small CPU: minutes
    assert steps["dataset"]["sizes"] == [166, 157, 91, 6]
    assert 0 < steps["train"]["data_wait_fraction"] < 1 and steps["train"]["clips_per_s"] > 0
    assert steps["overhead"]["overhead_ratio"] > 0 and steps["bare_loop"]["gflops_per_clip"] > 0
    assert steps["evaluate"]["clips"] == 24 and steps["batch_predict"]["clips"] == 8
    assert steps["predict_one"]["warm_ms"] > 0 and steps["scenes"]["frames"] == 8 * 4
    # Only the JPEG bytes cross the object store with data.decode=gpu.
    store = steps["object_store"]
    assert store["bytes_per_clip_gpu"] < store["bytes_per_clip_cpu"]
    assert steps["jpeg_decode"]["cpu_images_per_s_per_core"] > 0
    table = proc.stdout[proc.stdout.index("gpu-check on CPU") :]
    for name in steps:
        assert f"\n{name} " in table
