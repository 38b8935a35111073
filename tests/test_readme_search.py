"""The README's search example, as written, on a fresh local Ray (the 2-core laptop case):

    cg-ray tune --config configs/demo.yaml --set data.path=demo_out/data --num-samples 3

Its trials have 2 training workers of 1 CPU. A local Ray of 3 CPUs (2 workers + 1 data CPU, as
the search once sized it) left its trial 0.99 free CPUs beside the trial function's 0.01: Ray
Data's first task (ListFiles, 1 CPU) never ran and the search hung at 0%. The command runs in a
folder of its own (configs/demo.yaml copied, demo_out/data a link to the test world) so its
runs/ and mlflow.db stay there. Its output has cg_ray's progress lines and none of Ray Data's
bars."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from output import own
from tmpdirs import short_tmpdir

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
README_COMMAND = "cg-ray tune --config configs/demo.yaml --set data.path=demo_out/data --num-samples 3"


def test_the_readme_search_runs_on_a_laptop(tiny_dataset, tmp_path):
    assert README_COMMAND in (ROOT / "README.md").read_text().replace("\\\n    ", "")
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "demo.yaml", tmp_path / "configs" / "demo.yaml")
    (tmp_path / "demo_out").mkdir()
    os.symlink(tiny_dataset, tmp_path / "demo_out" / "data")
    # A user's shell: no cluster, no tracking server, no progress settings of the tests.
    unset = ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "CG_RAY_PROGRESS", "RAY_DATA_DISABLE_PROGRESS_BARS")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    # Its own local Ray, never the session's (a short path: Ray's socket paths are limited).
    env["RAY_TMPDIR"] = short_tmpdir("cgr-")
    cg_ray = os.path.join(os.path.dirname(sys.executable), "cg-ray")
    done = subprocess.run(
        [cg_ray, *README_COMMAND.split()[1:]],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=900,
    )
    out = own(done.stdout)
    assert done.returncode == 0, done.stderr[-3000:] + out[-3000:]
    # One trial at a time on a local Ray sized for it (4 CPUs: 2 workers, 1 data, the sliver).
    assert "running at most 1 trials at once" in out
    # cg_ray's own lines only: Ray Data's bars (from the trials' coordinator actors, hundreds
    # of lines of cursor codes) are off unless CG_RAY_PROGRESS=1.
    assert "epoch 1/" in done.stdout
    # Each epoch's summary once (Ray Train's print patch showed every printed line twice).
    summaries = [line for line in (done.stdout + done.stderr).splitlines() if ": train_loss=" in line]
    assert summaries and len(summaries) == len(set(summaries)), summaries
    assert "Running Dataset" not in done.stdout + done.stderr and "%|" not in done.stdout + done.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("cg_ray-demo")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(client.get_metric_history(r.info.run_id, "city_top1") for r in children)
