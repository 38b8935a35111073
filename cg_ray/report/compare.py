"""`cg-ray compare`: the paper-style table of runs tracked in MLflow.

Each argument is a run id or an experiment name (all of its finished runs, oldest first). One
row per run: its name, what it trained (backbone, frame, scene labels, TLA target, read from the
run's params) and the final top-1 of the four levels (the last logged value of `city_top1`, ...,
in percent), as fixed-width text, a markdown table or CSV. The recipe switches (SWITCHES: frame
sampling, evaluation views, TLA reduction, head, optimizer, EMA) get a column each when some run
of the table differs from the paper's value, so the paper's tables stay as they were.
"""

from __future__ import annotations

import csv
import io
import os

from cg_ray import tracking
from cg_ray.errors import UserError
from cg_ray.secrets import redact
from cg_ray.taxonomy import LEVELS

COLUMNS = ("run", "backbone", "scenes", "tla", *(f"{level}_top1" for level in LEVELS))
HEADERS = ("Run", "Backbone", "Scenes", "TLA", "City", "State", "Country", "Continent")
# (column, header, config key, the paper's value: what a run logged before the key existed)
SWITCHES = (
    ("sampling", "Sampling", "data.sampling", "uniform"),
    ("views", "Views", "eval.views", "1"),
    ("tla_reduction", "TLA over batch", "loss.tla_reduction", "mean"),
    ("head", "Head", "model.head", "linear"),
    ("optim", "Optimizer", "optim.name", "adam"),
    ("ema", "EMA", "train.ema.enabled", "False"),
)


def _is_true(value: str | None) -> bool:
    return str(value).lower() == "true"


def describe(params: dict[str, str]) -> dict[str, str]:
    """What a run trained, from its flattened config params: the Table 2/3/5 columns."""
    backbone = params.get("model.backbone.name", "?")
    if backbone in ("vit", "mae"):
        backbone += f" ({params.get('model.backbone.frame', '?')} frame)"
    scenes = params.get("data.scene_labels", "?") if _is_true(params.get("model.sca.enabled")) else "-"
    tla = params.get("model.tla.levels", "?") if _is_true(params.get("model.tla.enabled")) else "-"
    switches = {column: params.get(key, paper) for column, _, key, paper in SWITCHES}
    return {"backbone": backbone, "scenes": scenes, "tla": tla, **switches}


def _layout(rows: list[dict]) -> tuple[list[str], list[str], int]:
    """(columns, headers, how many of them are text) of a table: the fixed ones, with the
    switches some run sets differently from the paper before the four accuracies."""
    shown = [(c, h) for c, h, _, paper in SWITCHES if any(str(r.get(c, paper)) != paper for r in rows)]
    text = len(COLUMNS) - len(LEVELS)
    columns = [*COLUMNS[:text], *(c for c, _ in shown), *COLUMNS[text:]]
    headers = [*HEADERS[:text], *(h for _, h in shown), *HEADERS[text:]]
    return columns, headers, text + len(shown)


def _runs_of(client, token: str) -> list:
    """The run with id `token`, or the finished runs of the experiment named `token`."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(token)
    if experiment is not None:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string="attributes.status = 'FINISHED'",
            order_by=["attributes.start_time ASC"],
            max_results=5000,
        )
        if not runs:
            raise UserError(f"MLflow experiment '{token}' has no finished runs")
        return list(runs)
    try:
        return [client.get_run(token)]
    except MlflowException:
        raise UserError(
            f"'{token}' is neither an MLflow run id nor an experiment name in this "
            f"store (pass --tracking-uri, or check the name)"
        ) from None


def collect(tokens: list[str], tracking_uri: str | None = None) -> list[dict]:
    """One row per run named by `tokens` (run ids or experiment names), in order, each run once."""
    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///") :]):
        # MLflow would create an empty store there and find nothing.
        raise UserError(f"MLflow store {uri} does not exist (pass --tracking-uri)")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    rows, seen = [], set()
    for token in tokens:
        for run in _runs_of(client, token):
            if run.info.run_id in seen:
                continue
            seen.add(run.info.run_id)
            metrics = run.data.metrics  # the latest value of each: the final epoch's
            rows.append(
                {
                    "run": run.info.run_name or run.info.run_id,
                    "run_id": run.info.run_id,
                    **describe(run.data.params),
                    **{f"{level}_top1": metrics.get(f"{level}_top1") for level in LEVELS},
                }
            )
    names = [row["run"] for row in rows]
    for row in rows:  # two runs of one name: tell them apart by their id
        if names.count(row["run"]) > 1:
            row["run"] = f"{row['run']} ({row['run_id'][:8]})"
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def format_rows(rows: list[dict], fmt: str = "text") -> str:
    """The table as 'text' (fixed width), 'markdown' or 'csv' (full precision, run ids)."""
    columns, headers, text = _layout(rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*columns, "run_id"])
        for row in rows:
            writer.writerow([("" if row.get(c) is None else row[c]) for c in columns] + [row["run_id"]])
        return out.getvalue().rstrip("\n")
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    if fmt == "markdown":
        lines = [
            "| " + " | ".join(headers) + " |",
            "|" + "|".join(["---"] * text + ["---:"] * len(LEVELS)) + "|",
        ]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    if fmt != "text":
        raise UserError(f"unknown format '{fmt}' (text, markdown, csv)")
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda values: "  ".join(
        v.ljust(w) if i < text else v.rjust(w)  # noqa: E731
        for i, (v, w) in enumerate(zip(values, widths))
    )
    return "\n".join([line(headers)] + [line(r) for r in cells])


def compare_runs(tokens: list[str], fmt: str = "text", tracking_uri: str | None = None) -> str:
    """The table for `cg-ray compare`."""
    rows = collect(tokens, tracking_uri)
    if not rows:
        raise UserError(
            f"no runs found for {', '.join(tokens)} in {redact(tracking.tracking_uri(tracking_uri))}"
        )
    return format_rows(rows, fmt)
