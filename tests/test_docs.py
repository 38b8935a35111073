"""The documentation site: its generated pages match the code, `mkdocs build --strict` passes (a
broken link or anchor, or a page left out of the nav, fails it), and every benchmark script is
in a `make bench` set, ends with print_result's JSON line and has its section on the benchmarks
page. benchmarks/run.py (what `make bench` runs) keeps each one's log and figures."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
NOT_BENCHMARKS = {"run"}  # make bench's runner; scripts without a __main__ are libraries
# Owned elsewhere and not yet switched to result_line.print_result (issue 27, part 4): remove a
# name once its script prints its figures through it.
PENDING: set[str] = set()


def _module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_pages_are_current():
    gen = _module(ROOT / "docs" / "gen_reference.py")
    stale = [name for name, make in gen.PAGES.items() if (ROOT / "docs" / name).read_text() != make()]
    assert not stale, f"stale: {stale}: run `.venv/bin/python docs/gen_reference.py` (or make docs)"


def test_reference_covers_every_command_and_config_key():
    from cg_ray.config import Config

    gen = _module(ROOT / "docs" / "gen_reference.py")
    from cg_ray.cli import build_parser

    cli = (ROOT / "docs" / "reference" / "cli.md").read_text()
    for path, _, _ in gen.commands(build_parser()):
        assert f"## `cg-ray {' '.join(path)}`" in cli
    assert "`--register-as NAME`" in cli and "(default: 224)" in cli

    config = (ROOT / "docs" / "reference" / "config.md").read_text()

    def keys(obj, prefix=""):
        import dataclasses

        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from keys(value, f"{prefix}{f.name}.")
            else:
                yield prefix + f.name

    missing = [key for key in keys(Config()) if f"| `{key}` |" not in config]
    assert not missing, missing
    assert "| `train.batch_size` | `int` | `12` |" in config


def test_mkdocs_build_strict(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.fail("mkdocs is not installed: pip install -e '.[test]'")
    done = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "guides" / "data" / "index.html").exists()
    assert (tmp_path / "site" / "images" / "serve_page.png").exists()


def _make_list(name: str) -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    found = re.search(rf"^{name}\s*:=(.*)$", text, flags=re.M)
    assert found, f"Makefile has no {name}"
    return found.group(1).split()


def _benchmark_scripts() -> list[str]:
    return sorted(
        p.stem
        for p in BENCHMARKS.glob("*.py")
        if 'if __name__ == "__main__":' in p.read_text() and p.stem not in NOT_BENCHMARKS
    )


def test_every_benchmark_is_in_a_make_bench_set():
    cpu, gpu = _make_list("BENCH_CPU"), _make_list("BENCH_GPU")
    assert not set(cpu) & set(gpu)
    assert sorted(cpu + gpu) == _benchmark_scripts(), "add a new benchmark to BENCH_CPU or BENCH_GPU"
    # What a plain `make bench` runs (not this shell's BENCH, nor the flags of a make above us).
    unset = ("BENCH", "BENCH_OUT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    make = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "bench"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert make.returncode == 0, make.stderr
    assert f"benchmarks/run.py --out bench_results {' '.join(cpu)}" in make.stdout


@pytest.mark.parametrize("name", _benchmark_scripts())
def test_benchmark_ends_with_print_result_and_is_documented(name):
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert f"{{#{name}}}" in page and f"(#{name})" in page, f"docs/benchmarks.md has no section for {name}"
    if name in PENDING:
        pytest.skip(f"benchmarks/{name}.py: not yet switched to result_line.print_result")
    assert "print_result(" in (BENCHMARKS / f"{name}.py").read_text()


def test_make_bench_runner_keeps_logs_and_figures(tmp_path, monkeypatch):
    run = _module(BENCHMARKS / "run.py")
    fake = tmp_path / "benchmarks"
    fake.mkdir()
    (fake / "good.py").write_text(
        "import json, sys\n"
        "print('a table')\n"
        "print('(raylet) a line of Ray', file=sys.stderr)\n"
        "print(json.dumps({'clips_per_s': 1.5}))\n"
    )
    (fake / "noisy.py").write_text("print('{\"x\": 1}')\nprint('Ray said something last')\n")
    (fake / "broken.py").write_text("raise SystemExit(3)\n")
    monkeypatch.setattr(run, "ROOT", tmp_path)
    out = tmp_path / "results"
    assert run.main(["--out", str(out), "good", "noisy", "broken"]) == 1
    assert json.loads((out / "good.json").read_text()) == {"clips_per_s": 1.5}
    assert "(raylet) a line of Ray" in (out / "good.log").read_text()
    assert not (out / "noisy.json").exists() and not (out / "broken.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["machine"]["cpus"] == os.cpu_count()
    rows = summary["benchmarks"]
    assert rows["good"]["figures"] == {"clips_per_s": 1.5} and "error" not in rows["good"]
    assert "not a JSON object" in rows["noisy"]["error"]
    assert rows["broken"]["exit_status"] == 3 and "error" in rows["broken"]
    with pytest.raises(SystemExit):
        run.main(["--out", str(out), "no_such_benchmark"])


def test_print_result_is_the_last_line_after_ray(tmp_path):
    """print_result shuts down a Ray this process started before it prints (here a stand-in
    module named ray: starting a real Ray costs seconds, and cg_ray.ray_env's shutdown is tested
    with real clusters elsewhere)."""
    (tmp_path / "ray.py").write_text(
        "import atexit, sys\n"
        "up = True\n"
        "def is_initialized():\n    return up\n"
        "def shutdown(**kwargs):\n    global up\n    up = False\n"
        "atexit.register(lambda: up and print('ray: late line', flush=True))\n"
    )
    shutil.copy(BENCHMARKS / "result_line.py", tmp_path)
    script = (
        "import sys, ray\n"
        "import cg_ray.ray_env as env\n"
        "env.shutdown_ray = lambda exiting=False: ray.shutdown()\n"
        "from result_line import print_result\n"
        "print_result({'a': 1})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == '{"a": 1}'
