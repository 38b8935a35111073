"""The tune section of the config, the search space, the resource plan and the bookkeeping of
`cg-ray tune`, without Ray running (the searches themselves: tests/test_tune.py)."""

import json
from pathlib import Path

import pytest

from cg_ray.config import load_config
from cg_ray.errors import UserError
from cg_ray.resources import ClusterView, NodeType
from cg_ray.tune.scheduling import LastEpochASHA, expected_trials, stopped_trials
from cg_ray.tune.search import plan_concurrency, trial_config, trial_needs
from cg_ray.tune.space import apply_params, tune_space
from cg_ray.tune.trials import error_line, settle_children

DEMO = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")


def space(entries: dict) -> list[str]:
    return ["tune.space=" + json.dumps(entries)]


def test_demo_space_covers_the_issue_hyper_parameters():
    cfg = load_config(DEMO)
    assert cfg.tune.metric == "city_top1" and cfg.tune.scheduler == "asha"
    assert {
        "model.sca.heads",
        "model.sca.embed_dim",
        "model.sca.scene_widths",
        "model.tla.widths",
        "loss.scene",
        "loss.tla",
        "optim.lr",
        "train.batch_size",
    } <= set(cfg.tune.space)


@pytest.mark.parametrize(
    "entries, message",
    [
        ({"optim.lrr": {"uniform": [0.1, 0.2]}}, "unknown config key 'optim.lrr'"),
        ({"lr": {"uniform": [0.1, 0.2]}}, "did you mean optim.lr"),
        ({"optim": {"uniform": [0.1, 0.2]}}, "'optim' is a section"),
        ({"run.name": {"choice": ["a", "b"]}}, "'run.name' is fixed"),
        ({"train.num_workers": {"choice": [1, 2]}}, "'train.num_workers' is fixed"),
        ({"optim.lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
        ({"optim.lr": {"loguniform": [0, 1]}}, "loguniform needs 0 < low < high"),
        ({"optim.lr": {"uniform": [0.2, 0.1]}}, "uniform needs low < high"),
        ({"optim.lr": {"choice": []}}, "choice takes a non-empty list"),
        ({"optim.lr": 0.1}, "expected one distribution"),
        ({"train.batch_size": {"uniform": [4, 16]}}, "train.batch_size: expected int"),
        ({"model.sca.heads": {"choice": [2, 4]}}, "embed_dim=6 must be divisible by model.sca.heads=4"),
        (
            {"model.sca.heads": {"choice": [2, 3]}, "model.sca.embed_dim": {"choice": [6, 4]}},
            "model.sca.heads=3 model.sca.embed_dim=4 would fail",
        ),
        ({"eval.mode": {"choice": ["flat", "nearest"]}}, "eval.mode='nearest': must be one of"),
    ],
)
def test_bad_spaces_are_refused_naming_the_key(entries, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_config(DEMO, space(entries))


def test_bad_tune_settings_are_refused():
    for override, message in [
        ("tune.scheduler=hyperband", "tune.scheduler='hyperband'"),
        ("tune.search=bayes", "tune.search='bayes'"),
        ("tune.mode=best", "tune.mode='best'"),
        ("tune.num_samples=0", "tune.num_samples=0"),
        ("tune.reduction_factor=1", "tune.reduction_factor=1.0"),
    ]:
        with pytest.raises(UserError, match=message):
            load_config(DEMO, [override])
    with pytest.raises(UserError, match="grid distributions need tune.search=random"):
        load_config(DEMO, ["tune.search=optuna"] + space({"loss.scene": {"grid": [0.0, 1.0]}}))


def test_sampled_params_become_a_valid_trial_config():
    from ray.tune.search.sample import Categorical, Float, Integer

    cfg = load_config(
        DEMO,
        space(
            {
                "optim.lr": {"loguniform": ["1e-4", "1e-2"]},
                "train.batch_size": {"randint": [2, 9]},
                "model.sca.scene_widths": {"choice": [[64, 32], [16]]},
            }
        ),
    )
    domains = tune_space(cfg.tune.space)
    assert isinstance(domains["optim.lr"], Float) and domains["optim.lr"].lower == 1e-4
    assert isinstance(domains["train.batch_size"], Integer)
    # Lists travel as JSON text (Optuna's categorical takes scalars) and come back as lists.
    assert isinstance(domains["model.sca.scene_widths"], Categorical)
    assert domains["model.sca.scene_widths"].categories == ["[64, 32]", "[16]"]
    params = {"optim.lr": 0.003, "train.batch_size": 5, "model.sca.scene_widths": "[16]"}
    data = apply_params(cfg.to_dict(), params)
    assert data["optim"]["lr"] == 0.003 and data["train"]["batch_size"] == 5
    assert data["model"]["sca"]["scene_widths"] == [16]
    trial = trial_config(cfg.to_dict(), params, "/runs/search", "search", "ab12c_00003", "sqlite:///x")
    assert trial.model.sca.scene_widths == [16] and trial.optim.lr == 0.003
    assert (trial.run.name, trial.run.storage_path) == ("search-00003", "/runs/search/trials")
    assert trial.run.tracking_uri == "sqlite:///x" and trial.run.register_as is None


def test_concurrency_fits_the_cluster_or_the_search_is_refused(capsys):
    cfg = load_config(DEMO, ["train.num_workers=2", "tune.num_samples=6", "tune.data_cpus=1"])
    # 2 workers + 1 whole CPU for Ray Data + the trial function's 0.01
    assert trial_needs(cfg, use_gpu=False).total() == {"CPU": 3.01, "GPU": 0.0}
    # Three 4-CPU nodes hold 3 trials (never two on 4 CPUs: 0.99 CPU runs no data task); 6 wanted.
    assert plan_concurrency(cfg, False, ClusterView([{"CPU": 4.0}] * 3))[0] == 3
    assert "running at most 3 trials at once" in capsys.readouterr().out
    assert plan_concurrency(cfg, False, ClusterView([{"CPU": 12.0}]))[0] == 3
    limited = load_config(DEMO, ["train.num_workers=2", "tune.max_concurrent=2"])
    assert plan_concurrency(limited, False, ClusterView([{"CPU": 4.0}] * 3))[0] == 2
    # The README's search on a 3-CPU Ray: the trial's data would never get a CPU.
    with pytest.raises(UserError, match=r"one trial needs 3.01 CPUs .* the cluster has 3 CPUs"):
        plan_concurrency(cfg, False, ClusterView([{"CPU": 3.0}]))
    with pytest.raises(UserError, match="no node can host one training worker"):
        plan_concurrency(cfg, True, ClusterView([{"CPU": 12.0}]))
    big = load_config(DEMO, ["train.cpus_per_worker=8"])
    with pytest.raises(UserError, match="no node can host one training worker"):
        plan_concurrency(big, False, ClusterView([{"CPU": 4.0}] * 6))
    unchecked = load_config(DEMO, ["tune.check_resources=false", "tune.num_samples=5"])
    assert plan_concurrency(unchecked, True, ClusterView([{"CPU": 1.0}]))[0] == 5


def test_concurrency_counts_the_node_types_the_autoscaler_can_launch(capsys):
    """A 0-CPU head whose autoscaler launches up to two 4-CPU workers: no trial fits now, three
    fit once it has scaled up (the search waits, saying for what); 9-CPU workers fit no type."""
    view = ClusterView([{"CPU": 0.0}], [NodeType("worker", {"CPU": 4.0}, 2)], True, "test")
    cfg = load_config(DEMO, ["train.num_workers=1", "tune.num_samples=3"])
    concurrency, verdict = plan_concurrency(cfg, False, view)
    assert (concurrency, verdict.now, verdict.at_most) == (3, 0, 3)  # 2.01 CPUs each, 8 in all
    assert "waiting for 1 node with 4 CPUs (type worker)" in capsys.readouterr().out
    big = load_config(DEMO, ["train.cpus_per_worker=9"])
    with pytest.raises(
        UserError,
        match=r"one training worker \(9 CPUs\): the largest node type "
        r"has 4 CPUs",
    ):
        plan_concurrency(big, False, view)


def test_asha_leaves_a_trial_alone_at_its_last_epoch(tmp_path):
    """Tune's ASHA stops every trial that reaches max_t, killing the end of its training run;
    ours lets it finish, still stops weak trials at the rungs before, and records them."""
    from ray.tune.experiment import Trial

    record = str(tmp_path / "stopped_early.json")
    asha = LastEpochASHA(
        record=record,
        time_attr="epochs_done",
        metric="city_top1",
        mode="max",
        max_t=2,
        grace_period=1,
        reduction_factor=2,
    )
    good, weak = Trial("fn", stub=True), Trial("fn", stub=True)
    for trial in (good, weak):
        asha.on_trial_add(None, trial)
    assert asha.on_trial_result(None, good, {"epochs_done": 1, "city_top1": 50.0}) == "CONTINUE"
    assert asha.on_trial_result(None, weak, {"epochs_done": 1, "city_top1": 10.0}) == "STOP"
    assert asha.on_trial_result(None, good, {"epochs_done": 2, "city_top1": 60.0}) == "CONTINUE"
    assert stopped_trials(record) == {weak.trial_id}


def test_the_search_settles_each_child_run_as_it_judged_the_trial(tmp_path):
    """A trial ASHA stopped whose own train() ended its run FAILED (the stop reached the trainer
    mid-fit) or left it RUNNING ends FINISHED; a failed trial's run ends FAILED."""
    from cg_ray import tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = tracking.start_run(uri, "search", "s", {}, tags={"cg_ray.kind": "search"})
    ended = {"t_00000": "FAILED", "t_00001": None, "t_00002": "FINISHED", "t_00003": "FAILED"}
    verdict = {
        "t_00000": "stopped_early",
        "t_00001": "stopped_early",
        "t_00002": "completed",
        "t_00003": "failed",
    }
    for trial_id, status in ended.items():
        tags = {"mlflow.parentRunId": parent, "cg_ray.trial_id": trial_id}
        child = tracking.start_run(uri, "search", trial_id, {}, tags=tags)
        if status:
            tracking.end_run(uri, child, status)
    rows = [
        {"trial_id": t, "status": s, "error": "boom" if s == "failed" else None} for t, s in verdict.items()
    ]
    settle_children(uri, parent, rows)
    runs = {row["trial_id"]: tracking.get_run(uri, row["run_id"]) for row in rows}
    assert {t: r.info.status for t, r in runs.items()} == {
        "t_00000": "FINISHED",
        "t_00001": "FINISHED",
        "t_00002": "FINISHED",
        "t_00003": "FAILED",
    }
    assert {t: r.data.tags["cg_ray.trial_status"] for t, r in runs.items()} == verdict


def test_expected_trials_count_grid_points():
    assert expected_trials(load_config(DEMO, ["tune.num_samples=3"])) == 3
    grid = load_config(
        DEMO,
        ["tune.num_samples=2"] + space({"loss.scene": {"grid": [0, 1, 2]}, "loss.tla": {"grid": [0, 1]}}),
    )
    assert expected_trials(grid) == 12


def test_the_error_line_of_a_failed_trial():
    wrapped = RuntimeError(
        'ray::ImplicitFunc.train() (pid=1, ip=x)\n  File "a.py", line 1\n'
        "cg_ray.errors.UserError: 'data' is not a prepared dataset\n"
    )
    assert error_line(wrapped) == "UserError: 'data' is not a prepared dataset"
    assert error_line(None) is None


def test_tune_cli_refuses_an_empty_space_and_a_missing_search(tmp_path, capsys, tiny_dataset):
    from cg_ray.cli import main

    common = [
        "--config",
        DEMO,
        "--set",
        f"data.path={tiny_dataset}",
        "--set",
        f"run.storage_path={tmp_path}",
        "--set",
        "tune.space={}",
    ]
    assert main(["tune", *common]) == 2
    assert "tune.space is empty" in capsys.readouterr().err
    assert main(["tune", "--config", DEMO, "--set", "data.path=/nonexistent/data"]) == 2
    assert "not a prepared dataset" in capsys.readouterr().err
    common[-1] = "run.name=nothing-here"
    assert main(["tune", *common[:-2], "--resume"]) == 2  # refused before Ray starts
    assert "nothing to resume: no search under" in capsys.readouterr().err
