"""The package's shape: no import cycles, and data flowing down (storage -> data -> model ->
train/evaluate -> tracking). Imports inside functions count: they run too."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "cg_ray"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _imports(path: pathlib.Path) -> set[str]:
    """Every module this file imports (cg_ray modules resolved; others by their top name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:  # `from cg_ray import storage`: the module storage
                if f"{node.module}.{alias.name}" in MODULES:
                    found.add(f"{node.module}.{alias.name}")
    return found


GRAPH = {name: {m for m in _imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(GRAPH):
        if name not in state and (found := visit(name)):
            return found
    return None


def test_the_walk_sees_the_package():
    assert {"cg_ray.cli", "cg_ray.train.driver", "cg_ray.model.net"} <= set(GRAPH)
    assert "cg_ray.train.worker" in GRAPH["cg_ray.train.driver"]  # edges are found


def test_no_import_cycles():
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _below(package: str) -> dict[str, set[str]]:
    return {
        name: _imports(MODULES[name]) for name in MODULES if name == package or name.startswith(package + ".")
    }


@pytest.mark.parametrize(
    "package, forbidden",
    [
        # the model is plain nn.Modules: no Ray, no files, no MLflow
        (
            "cg_ray.model",
            (
                "ray",
                "mlflow",
                "pyarrow",
                "cg_ray.storage",
                "cg_ray.tracking",
                "cg_ray.data",
                "cg_ray.train",
                "cg_ray.tune",
                "cg_ray.predict",
            ),
        ),
        # training knows nothing of the stages that use its output: registration and the
        # learning curves' drawing come in from above (cg_ray.runs)
        ("cg_ray.train", ("cg_ray.predict", "cg_ray.report", "cg_ray.tune", "cg_ray.cli", "cg_ray.runs")),
        # reading data knows nothing of training, searching or predicting
        ("cg_ray.data", ("cg_ray.train", "cg_ray.tune", "cg_ray.predict", "cg_ray.model", "mlflow")),
        # the hierarchical evaluation and the label tree are pure
        ("cg_ray.evaluation", ("ray", "mlflow", "pyarrow", "cg_ray.storage")),
        ("cg_ray.taxonomy", ("ray", "mlflow", "pyarrow", "cg_ray.storage")),
    ],
)
def test_data_flows_down(package, forbidden):
    bad = sorted(
        f"{name} imports {m}"
        for name, found in _below(package).items()
        for m in found
        if any(m == f or m.startswith(f + ".") for f in forbidden)
    )
    assert not bad, "; ".join(bad)


def test_every_package_says_what_it_owns():
    for init in ROOT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        if init.parent.name == "geodata":
            continue  # package data only
        assert doc and len(doc) > 30, f"{init.relative_to(ROOT.parent)} needs a docstring"


def test_what_rays_helper_actors_unpickle_imports_no_torch():
    """Ray Train's dataset manager unpickles the split config, Ray Data's coordinators and tasks
    the pipeline's functions: torch there would cost every run a CPU-second and half a GB of
    memory per helper actor (the split config once lived beside the worker loop)."""
    code = "import sys, cg_ray.train.splits, cg_ray.data.stream; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_ci_lints_before_it_tests():
    """`.ci/run` runs `make lint` (ruff check, ruff format --check, mypy on the typed core) before
    `make test`, and pre-commit runs the same tools; the tree is ruff-clean as committed."""
    repo = ROOT.parent
    steps = re.findall(r"^make (\w+)", (repo / ".ci/run").read_text(), flags=re.M)
    assert steps == ["lint", "test"]
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (repo / "Makefile").read_text(), flags=re.M)
    assert lint, "Makefile has no lint target"
    assert [line.split()[0] for line in lint.group(1).splitlines()] == ["$(BIN)/ruff"] * 2 + ["$(BIN)/mypy"]
    assert "ruff format --check" in lint.group(1)
    typed = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["mypy"]["files"]
    assert {"cg_ray/model", "cg_ray/evaluation.py", "cg_ray/taxonomy.py", "cg_ray/config.py"} <= set(typed)
    hooks = (repo / ".pre-commit-config.yaml").read_text()
    assert all(f"entry: .venv/bin/{tool}" in hooks for tool in ("ruff check", "ruff format", "mypy"))
    ruff = [sys.executable, "-m", "ruff"]
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run(ruff + args, cwd=repo, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
