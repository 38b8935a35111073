"""A search's report, read from its folder: every trial's hyper-parameters, status, epochs and
best metric as a table, which hyper-parameters mattered (Optuna's importance evaluator), a
parallel-coordinates picture and every trial's learning curve on one plot.

    run.storage_path/run.name/report/
      trials.csv                  one row per trial, best first
      summary.json                the same rows, the importances and how they were computed
      parallel_coordinates.png    each trial a line through its hyper-parameters to its metric
      learning_curves.png         the metric by epoch, every trial on one plot

Written when a search ends (and logged to its MLflow parent run as report/), or on demand for a
finished or interrupted search (`cg-ray tune --report SEARCH_DIR`). It reads only what Tune keeps
in the search folder (trial_<id>/params.json, result.json, error.txt), so it needs neither Ray nor
the tracking server.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field

from cg_ray import storage, tracking
from cg_ray.errors import UserError
from cg_ray.secrets import redact
from cg_ray.tune.space import _encode, _spec
from cg_ray.tune.trials import META, error_line

FOLDER = "report"
DPI = 100
LINE = {"completed": "-", "stopped_early": "--", "interrupted": ":", "failed": ":"}


@dataclass
class Trial:
    trial_id: str
    status: str  # completed, stopped_early (by ASHA), failed, interrupted
    params: dict  # dotted key -> the value Tune sampled (a list as its JSON text)
    curve: list[tuple[int, float]]  # (epochs done, metric) as reported
    error: str | None = None

    def best(self, mode: str) -> float | None:
        values = [v for _, v in self.curve]
        return (max if mode == "max" else min)(values) if values else None

    def rank(self, mode: str) -> float:
        """Its best metric; a trial without one sorts after all others."""
        best = self.best(mode)
        return (-math.inf if mode == "max" else math.inf) if best is None else best


@dataclass
class Report:
    name: str
    metric: str
    mode: str
    keys: list[str]  # the searched hyper-parameters, as tune.space lists them
    trials: list[Trial]  # best first
    importances: dict[str, float]  # every searched key, most important first
    how: str  # how the importances were computed, or why they were not
    files: dict[str, bytes] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        return [
            {
                "trial": t.trial_id,
                "status": t.status,
                "epochs": max((e for e, _ in t.curve), default=0),
                f"best {self.metric}": t.best(self.mode),
                **{key: t.params.get(key) for key in self.keys},
                "error": t.error or "",
            }
            for t in self.trials
        ]

    def text(self) -> str:
        """The table, then the importances: what `cg-ray tune` prints at the end."""
        rows = self.rows()
        columns = [c for c in (rows[0] if rows else {}) if c != "error" or any(r["error"] for r in rows)]
        cells = [[_cell(row[c]) for c in columns] for row in rows]
        widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
        lines = [f"search {self.name}: {len(rows)} trials, best {self.metric} ({self.mode}) first"]
        lines += [
            "  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in [columns, *cells]
        ]
        shares = ", ".join(f"{k} {v:.2f}" for k, v in self.importances.items())
        lines.append(f"importances ({self.how}): {shares}" if shares else f"importances: {self.how}")
        return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


# -- reading ---------------------------------------------------------------------------------------


def read_meta(search_dir: str) -> dict:
    """The search's cg_ray_search.json; a UserError when search_dir is not a search's folder."""
    path = storage.join(search_dir, META)
    if not storage.exists(path):
        raise UserError(
            f"{search_dir} is not a search folder (no {META} in it): give the folder of a "
            f"`cg-ray tune` search, run.storage_path/run.name (e.g. runs/demo)"
        )
    return json.loads(storage.read_text(path))


def read_trials(search_dir: str, config: dict, statuses: dict[str, str] | None = None) -> list[Trial]:
    """Every trial Tune started in the search folder. `statuses` (trial id -> status, as the
    search judged its trials) wins over the status read from the files."""
    from cg_ray.tune.scheduling import STOPPED, stopped_trials

    metric, epochs = config["tune"]["metric"], config["train"]["epochs"]
    stopped = stopped_trials(storage.join(search_dir, STOPPED))
    trials = []
    for entry in storage.list_dir(search_dir):
        if not entry.base_name.startswith("trial_"):
            continue
        folder = storage.join(search_dir, entry.base_name)
        trial_id = entry.base_name.removeprefix("trial_")
        params = _json(storage.join(folder, "params.json")) or {}
        points: dict[int, float] = {}  # a resumed trial may report an epoch again: the last wins
        for line in (_text(storage.join(folder, "result.json")) or "").splitlines():
            result = json.loads(line) if line.strip() else {}
            if isinstance(result.get(metric), (int, float)):
                points[int(result.get("epochs_done", result.get("training_iteration", 0)))] = result[metric]
        curve = sorted(points.items())
        error = _text(storage.join(folder, "error.txt"))
        done = max(points, default=0)
        status = (
            "completed"
            if done >= epochs
            else "failed"
            if error
            else "stopped_early"
            if trial_id in stopped
            else "interrupted"
        )
        status = (statuses or {}).get(trial_id, status)
        why = error_line(RuntimeError(error)) if status == "failed" and error else None  # as Tune wrote it
        trials.append(Trial(trial_id, status, params, curve, why))
    return trials


def _text(path: str) -> str | None:
    return storage.read_text(path) if storage.exists(path) else None


def _json(path: str):
    text = _text(path)
    return json.loads(text) if text else None


# -- importances -----------------------------------------------------------------------------------


def importances(trials: list[Trial], space: dict, mode: str) -> tuple[dict[str, float], str]:
    """Optuna's importance of every searched key over the completed trials (its default
    evaluator, PED-ANOVA), every key named (0 for one that did not vary); ({}, why) when there
    are too few completed trials."""
    import optuna
    from optuna.distributions import (
        BaseDistribution,
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    done = [t for t in trials if t.status == "completed" and t.best(mode) is not None]
    if len(done) < 2:
        return {}, f"not computed: they need 2 completed trials, the search has {len(done)}"
    if len({t.best(mode) for t in done}) == 1:  # nothing to tell the keys apart by
        return {}, f"not computed: the {len(done)} completed trials have the same best metric"
    distributions: dict[str, BaseDistribution] = {}
    for key, spec in space.items():
        kind, args = _spec(key, spec)
        seen = [t.params[key] for t in done if key in t.params]
        if kind in ("choice", "grid"):
            distributions[key] = CategoricalDistribution(
                list(dict.fromkeys([_encode(a) for a in args] + seen))
            )
        else:
            low, high = min([args[0], *seen]), max([args[1], *seen])
            if kind.endswith("randint"):
                distributions[key] = IntDistribution(int(low), int(high))
            else:
                distributions[key] = FloatDistribution(low, high, log=kind == "loguniform")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if mode == "max" else "minimize")
    for t in done:
        params = {k: t.params[k] for k in distributions if k in t.params}
        dists = {k: distributions[k] for k in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.best(mode)))
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        return {}, f"not computed: {exc}"
    shares = {key: float(found.get(key, 0.0)) for key in space}
    how = f"PED-ANOVA, Optuna's default evaluator, over {len(done)} completed trials"
    return dict(sorted(shares.items(), key=lambda kv: -kv[1])), how


# -- pictures ---------------------------------------------------------------------------------------


def _figure(width_px: int, height_px: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _axis(spec: dict | None, values: list) -> tuple:
    """(value -> height in [0, 1], [(height, tick label)]) of one vertical axis: a categorical
    key's options evenly spaced, a number's range (the searched one and what was seen) linear,
    or logarithmic for loguniform."""
    kind, args = _spec("", spec) if spec else ("number", [min(values), max(values)])
    if kind in ("choice", "grid"):
        options = list(dict.fromkeys([_encode(a) for a in args] + values))
        step = 1 / max(len(options) - 1, 1)
        at = {option: i * step if len(options) > 1 else 0.5 for i, option in enumerate(options)}
        return (lambda v: at[v]), [(at[o], str(o)[:24]) for o in options]
    scale = math.log10 if kind == "loguniform" else float
    low, high = scale(min([args[0], *values])), scale(max([args[1], *values]))
    span = (high - low) or 1.0
    ticks = [low + span * f for f in (0, 0.5, 1)]
    labels = [10**t if kind == "loguniform" else t for t in ticks]
    return (lambda v: (scale(v) - low) / span), [(f, f"{x:.3g}") for f, x in zip((0, 0.5, 1), labels)]


def parallel_coordinates_png(report: Report, space: dict) -> bytes:
    """Each trial with a metric as a line through its hyper-parameters (one vertical axis each)
    to its best metric; the colour is the metric (bright: better), dashed: stopped early."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    keys = list(space)
    shown = [t for t in report.trials if t.best(report.mode) is not None and set(keys) <= set(t.params)]
    best = [float(t.best(report.mode) or 0) for t in shown]
    axes = [_axis(space[k], [t.params[k] for t in shown if k in t.params]) for k in keys]
    axes.append(_axis(None, best or [0.0]))
    fig = _figure(max(900, 170 * len(axes)), 520)
    ax = fig.add_subplot()
    norm = Normalize(min(best, default=0), max(best, default=1))
    cmap = colormaps["viridis" if report.mode == "max" else "viridis_r"]
    for trial, value in sorted(zip(shown, best), key=lambda tv: tv[1], reverse=report.mode == "min"):
        heights = [axes[i][0](trial.params[k]) for i, k in enumerate(keys)] + [axes[-1][0](value)]
        style = LINE.get(trial.status, "-")
        ax.plot(range(len(axes)), heights, style, color=cmap(norm(value)), linewidth=2.2, alpha=0.9)
    for i, (_, ticks) in enumerate(axes):
        ax.axvline(i, color="#555555", linewidth=1)
        for height, label in ticks:
            ax.annotate(
                label, (i, height), xytext=(4, 0), textcoords="offset points", fontsize=8, va="center"
            )
    ax.set_xticks(range(len(axes)), [*keys, f"best {report.metric}"], rotation=15, ha="right")
    ax.set_yticks([])
    ax.set_xlim(-0.15, len(axes) - 0.5)
    ax.set_ylim(-0.05, 1.05)
    fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=f"best {report.metric}", pad=0.01)
    ax.set_title(
        f"search {report.name}: {len(shown)} trials (dashed: stopped early; dotted: failed, interrupted)"
    )
    return _png(fig)


def learning_curves_png(report: Report) -> bytes:
    """The metric of every trial by epoch on one plot, best trial first in the legend."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(1000, 520)
    ax = fig.add_subplot()
    for trial in report.trials:
        if trial.curve:
            epochs, values = zip(*trial.curve)
            label = f"{trial.trial_id} ({trial.status})"
            ax.plot(epochs, values, LINE.get(trial.status, "-"), marker="o", linewidth=2, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(report.metric)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(f"search {report.name}: {report.metric} by epoch ({len(report.trials)} trials)")
    return _png(fig)


# -- the report ------------------------------------------------------------------------------------


def build(search_dir: str, statuses: dict[str, str] | None = None) -> Report:
    """The report of the search in search_dir, tables and pictures in memory."""
    config = read_meta(search_dir)["config"]
    metric, mode, space = config["tune"]["metric"], config["tune"]["mode"], config["tune"]["space"]
    trials = read_trials(search_dir, config, statuses)
    if not trials:
        raise UserError(f"the search in {search_dir} has no trials yet: nothing to report")
    trials.sort(key=lambda t: t.rank(mode), reverse=mode == "max")
    shares, how = importances(trials, space, mode)
    report = Report(config["run"]["name"], metric, mode, list(space), trials, shares, how)
    rows = report.rows()
    out = io.StringIO()
    writer = csv.DictWriter(out, list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    summary = {"search": report.name, "metric": metric, "mode": mode, "trials": rows}
    report.files = {
        "trials.csv": out.getvalue().encode(),
        "summary.json": json.dumps(
            {**summary, "importances": shares, "importances_how": how}, indent=1
        ).encode(),
        "parallel_coordinates.png": parallel_coordinates_png(report, space),
        "learning_curves.png": learning_curves_png(report),
    }
    return report


def write(report: Report, search_dir: str) -> str:
    """The report's files into search_dir/report/; that folder."""
    folder = storage.join(search_dir, FOLDER)
    for name, data in report.files.items():
        storage.write_bytes(storage.join(folder, name), data)
    return folder


def log(report: Report, uri: str, run_id: str) -> None:
    """Queue the report's files as artifacts report/* of the search's MLflow parent run."""
    for name, data in report.files.items():
        tracking.log_bytes(uri, run_id, data, f"{FOLDER}/{name}")


def report_search(search_dir: str) -> str:
    """`cg-ray tune --report`: the report of a finished or interrupted search, written to its
    folder and logged to its parent run when the tracking store answers; what to print."""
    meta = read_meta(search_dir)
    report = build(search_dir)
    folder = write(report, search_dir)
    return f"{report.text()}\nreport: {folder}/\n{_log_now(report, meta)}"


def _log_now(report: Report, meta: dict) -> str:
    """Log the report to the parent run and wait for it; what happened, in words (the report in
    the folder is the result: MLflow gets a copy when it can)."""
    uri, run_id = meta.get("tracking_uri") or tracking.tracking_uri(None), meta["parent_run_id"]
    try:
        tracking.check_reachable(uri)
        tracking.get_run(uri, run_id)
        log(report, uri, run_id)
        if tracking.flush():
            return f"not logged to MLflow: {redact(uri)} went away while the report was uploaded"
    except Exception as exc:  # an unreachable store, a run deleted since: MLflow raises many types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"not logged to MLflow run {run_id} at {redact(uri)}: {redact(first)}"
    return f"logged to MLflow run {run_id} ({redact(uri)}) as artifacts {FOLDER}/"


def at_search_end(search_dir: str, uri: str, parent_run_id: str, rows: list[dict]) -> None:
    """The report of a search that just ended (its trials' statuses as the search judged them):
    written, queued for the parent run (still open: its end delivers it) and printed. It never
    fails the search: a report that cannot be made is a warning saying how to make it later."""
    try:
        report = build(search_dir, {row["trial_id"]: row["status"] for row in rows})
        folder = write(report, search_dir)
        log(report, uri, parent_run_id)
    except Exception as exc:  # noqa: BLE001 - the search's result stands without its report
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(
            f"cg-ray: warning: no search report ({first}); make it with: cg-ray tune --report {search_dir}",
            file=sys.stderr,
            flush=True,
        )
        return
    print(f"{report.text()}\nreport: {folder}/ (also in MLflow run {parent_run_id}, {FOLDER}/)", flush=True)


def report_command(search_dir: str, config: str | None, overrides: list[str]) -> str:
    """`cg-ray tune --report [SEARCH_DIR]`: the report of SEARCH_DIR, or (given "") of the
    search that --config (with --set) names, run.storage_path/run.name."""
    if not search_dir:
        if not config:
            raise UserError("--report needs SEARCH_DIR (run.storage_path/run.name) or --config FILE")
        from cg_ray.config import load_config

        cfg = load_config(config, overrides)
        search_dir = storage.join(cfg.run.storage_path, cfg.run.name)
    return report_search(search_dir)
