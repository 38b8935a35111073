"""`cg-ray evaluate` and `cg-ray compare`: how good a checkpoint is, and runs side by side."""

from __future__ import annotations

from cg_ray.cli.common import MODES, command, progress_option, tracking_option, write_json
from cg_ray.console import format_table
from cg_ray.errors import UserError


def register(sub) -> None:
    _evaluate(sub)
    _compare(sub)


def _compare(sub) -> None:
    p = command(
        sub,
        "compare",
        "the paper-style table of runs tracked in MLflow",
        """
One row per run: what it trained and the final top-1 of the four levels.""",
        """
cg-ray compare cg_ray
cg-ray compare RUN_ID_1 RUN_ID_2 --format markdown""",
        compare,
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_OR_EXPERIMENT",
        help="an MLflow run id, or an experiment name (all its finished runs)",
    )
    p.add_argument("--format", choices=["text", "markdown", "csv"], default="text", help="output format")
    tracking_option(p)


def compare(args) -> None:
    from cg_ray.report.compare import compare_runs

    print(compare_runs(args.runs, args.format, args.tracking_uri))


def _evaluate(sub) -> None:
    p = command(
        sub,
        "evaluate",
        "hierarchical evaluation of a checkpoint",
        """
Top-1 and top-5 per level (city, state, country, continent) of a checkpoint over a split, in
percent, optionally with per-clip predictions and an HTML report.""",
        """
cg-ray evaluate --checkpoint demo_out/runs/demo-1/checkpoint_000002 --data demo_out/data
cg-ray evaluate --checkpoint models:/cityguessr/1 --data s3://work/cg68k --mode independent
cg-ray evaluate --checkpoint CKPT --data data/ --report report/""",
        evaluate,
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or models:/NAME/VERSION")
    p.add_argument("--data", required=True, metavar="DEST", help="a prepared dataset")
    p.add_argument("--split", default="val", help="split to evaluate")
    p.add_argument("--mode", choices=MODES, help="hierarchical evaluation mode (default: codependent)")
    p.add_argument("--batch-size", type=int, default=32, help="clips per batch")
    p.add_argument(
        "--views",
        type=int,
        metavar="K",
        help="temporal clips per video, probabilities averaged (default: the checkpoint's eval.views)",
    )
    p.add_argument("--metrics-out", metavar="PATH", help="also write the metrics as JSON here")
    p.add_argument(
        "--predictions-out",
        metavar="PATH",
        help="write one parquet row per clip: true and predicted labels, probabilities",
    )
    p.add_argument(
        "--report",
        metavar="DIR",
        help="write an HTML report with per-city/country "
        "accuracy, confusion matrices, geodesic error and a world map",
    )
    p.add_argument(
        "--coordinates",
        metavar="CSV",
        help="city,lat,lon rows that add to or replace the shipped city centres",
    )
    tracking_option(
        p,
        "the checkpoint's config, then $MLFLOW_TRACKING_URI",
        "MLflow store of the checkpoint's training run",
    )
    progress_option(p)


def evaluate(args) -> None:
    from cg_ray.predict.evaluate import evaluate

    modes = [args.mode] if args.mode else ["codependent"]
    if (args.coordinates or args.tracking_uri) and not args.report:
        raise UserError("--coordinates and --tracking-uri go with --report DIR")
    if args.report:
        from cg_ray.report import evaluate_with_report

        metrics, note = evaluate_with_report(
            args.checkpoint,
            args.data,
            args.report,
            args.split,
            modes[0],
            args.coordinates,
            args.predictions_out,
            args.batch_size,
            args.tracking_uri,
            views=args.views,
        )
    else:
        metrics = evaluate(
            args.checkpoint,
            args.data,
            args.split,
            modes,
            args.predictions_out,
            args.batch_size,
            views=args.views,
        )[modes[0]]
    write_json(args.metrics_out, {"mode": modes[0], **metrics})
    print(format_table({modes[0]: metrics}))
    print(
        f"evaluated {metrics['num_clips']} of the {metrics['split_clips']} clips of split "
        f"'{args.split}' ({metrics['bad_clips']} bad, skipped), {metrics['clips_per_s']:.1f} clips/s"
    )
    if args.report:
        print(
            f"report: {args.report}/index.html; median error "
            f"{metrics.get('geo_median_km', float('nan')):.0f} km; {note}"
        )
