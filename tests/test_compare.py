import csv
import io

import pytest
from output import own

from cg_ray import tracking
from cg_ray.cli import main
from cg_ray.config import config_from_dict
from cg_ray.report.compare import compare_runs


def _log(uri, experiment, name, overrides, epochs, finish=True):
    """A run as training logs it: the resolved config as params, top-1 per epoch."""
    cfg = config_from_dict({}, overrides)
    run_id = tracking.start_run(uri, experiment, name, cfg.to_dict())
    for epoch, values in enumerate(epochs):
        tracking.log_metrics(
            uri,
            run_id,
            dict(zip(("city_top1", "state_top1", "country_top1", "continent_top1"), values)),
            step=epoch,
        )
    if finish:
        tracking.end_run(uri, run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ids = {
        "baseline": _log(
            uri,
            "paper",
            "table3-videomae",
            ["model.sca.enabled=false", "model.tla.enabled=false"],
            [(50.0, 51.0, 52.0, 60.0), (64.5, 64.5, 65.9, 74.4)],
        ),
        "full": _log(
            uri, "paper", "table3-tla-all", [], [(60.0, 60.0, 70.0, 80.0), (69.6, 70.2, 74.8, 83.8)]
        ),
        "running": _log(uri, "paper", "still-training", [], [(1.0, 2.0, 3.0, 4.0)], finish=False),
        "mae": _log(
            uri,
            "other",
            "table2-mae-random",
            [
                "model.backbone.name=mae",
                "model.backbone.frame=random",
                "model.sca.enabled=false",
                "model.tla.enabled=false",
            ],
            [(55.8, 56.3, 60.8, 74.1)],
        ),
    }
    return uri, ids


def test_text_table_has_final_values_of_finished_runs_and_named_runs(store, capsys):
    uri, ids = store
    assert main(["compare", "paper", ids["mae"], "--tracking-uri", uri]) == 0
    lines = own(capsys.readouterr().out).splitlines()
    assert lines[0].split() == ["Run", "Backbone", "Scenes", "TLA", "City", "State", "Country", "Continent"]
    assert lines[1].split() == ["table3-videomae", "videomae", "-", "-", "64.5", "64.5", "65.9", "74.4"]
    assert lines[2].split() == ["table3-tla-all", "videomae", "soft", "all", "69.6", "70.2", "74.8", "83.8"]
    assert lines[3].split() == [
        "table2-mae-random",
        "mae",
        "(random",
        "frame)",
        "-",
        "-",
        "55.8",
        "56.3",
        "60.8",
        "74.1",
    ]
    assert len(lines) == 4  # the unfinished run is left out


def test_markdown_and_csv(store):
    uri, ids = store
    markdown = compare_runs([ids["full"], ids["baseline"]], "markdown", uri).splitlines()
    assert markdown[0] == "| Run | Backbone | Scenes | TLA | City | State | Country | Continent |"
    assert markdown[1] == "|---|---|---|---|---:|---:|---:|---:|"
    assert markdown[2] == "| table3-tla-all | videomae | soft | all | 69.6 | 70.2 | 74.8 | 83.8 |"
    rows = list(csv.DictReader(io.StringIO(compare_runs(["paper", ids["full"]], "csv", uri))))
    assert [r["run"] for r in rows] == ["table3-videomae", "table3-tla-all"]  # each run once
    assert float(rows[1]["continent_top1"]) == 83.8 and rows[1]["run_id"] == ids["full"]


def test_same_names_are_told_apart_and_unknown_names_are_errors(store, capsys):
    uri, ids = store
    _log(uri, "twice", "run", [], [(1.0, 1.0, 1.0, 1.0)])
    _log(uri, "twice", "run", [], [(2.0, 2.0, 2.0, 2.0)])
    names = [line.split()[0:2] for line in compare_runs(["twice"], "text", uri).splitlines()[1:]]
    assert len({tuple(n) for n in names}) == 2 and all(n[1].startswith("(") for n in names)
    assert main(["compare", "no-such-experiment", "--tracking-uri", uri]) == 2
    err = own(capsys.readouterr().err)
    assert "'no-such-experiment' is neither an MLflow run id nor an experiment name" in err
    assert main(["compare", "paper", "--tracking-uri", "sqlite:////nowhere/mlflow.db"]) == 2


def test_recipe_switches_get_columns_only_when_a_run_sets_them():
    from cg_ray.report.compare import describe, format_rows

    def row(name, **params):
        base = {
            "model.backbone.name": "videomae",
            "model.sca.enabled": "True",
            "data.scene_labels": "soft",
            "model.tla.enabled": "True",
            "model.tla.levels": "all",
        }
        return {
            "run": name,
            "run_id": name,
            **describe({**base, **params}),
            "city_top1": 50.0,
            "state_top1": 60.0,
            "country_top1": 70.0,
            "continent_top1": 80.0,
        }

    paper = [row("paper"), row("old")]
    assert format_rows(paper).splitlines()[0].split() == [
        "Run",
        "Backbone",
        "Scenes",
        "TLA",
        "City",
        "State",
        "Country",
        "Continent",
    ]
    runs = paper + [
        row("authors", **{"data.sampling": "official", "loss.tla_reduction": "sum"}),
        row("views", **{"eval.views": "5"}),
    ]
    lines = format_rows(runs).splitlines()
    header = [h.strip() for h in lines[0].split("  ") if h.strip()]
    assert header == [
        "Run",
        "Backbone",
        "Scenes",
        "TLA",
        "Sampling",
        "Views",
        "TLA over batch",
        "City",
        "State",
        "Country",
        "Continent",
    ]
    assert lines[3].split()[:7] == ["authors", "videomae", "soft", "all", "official", "1", "sum"]
    assert (
        format_rows(runs, "csv").splitlines()[0]
        == "run,backbone,scenes,tla,sampling,views,tla_reduction,city_top1,state_top1,country_top1,"
        "continent_top1,run_id"
    )
    assert (
        format_rows(runs, "markdown").splitlines()[1] == "|---|---|---|---|---|---|---|---:|---:|---:|---:|"
    )
