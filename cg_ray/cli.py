"""`cg-ray` commands. The CLI only wires: each command parses, calls one function, prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from cg_ray.errors import UserError


def _write_json(path: str | None, data: dict) -> None:
    if path:
        from cg_ray import storage

        storage.write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def format_table(rows: dict[str, dict]) -> str:
    """Rows (name -> metrics) as a fixed-width table of top-1 and top-5 per level."""
    from cg_ray.taxonomy import LEVELS

    head = f"{'':<14}" + "".join(f"{lvl + ' @1':>14}{'@5':>8}" for lvl in LEVELS)
    lines = [head]
    for name, m in rows.items():
        lines.append(f"{name:<14}" + "".join(
            f"{m[f'{lvl}_top1']:>14.1f}{m[f'{lvl}_top5']:>8.1f}" for lvl in LEVELS))
    return "\n".join(lines)


# -- commands -------------------------------------------------------------------------------------


def cmd_synth(args) -> None:
    from cg_ray.data.synthetic import make_world

    width, _, height = args.size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise UserError(f"--size '{args.size}' must look like WxH, e.g. 64x48")
    summary = make_world(args.out, cities=args.cities, clips_per_city=args.clips_per_city,
                         frames=args.frames, size=(int(width), int(height)), fmt=args.format,
                         seed=args.seed)
    print(json.dumps(summary))


def cmd_prepare(args) -> None:
    from cg_ray.data.layouts import prepare

    report = prepare(args.layout, args.source, args.out, val_fraction=args.val_fraction, seed=args.seed,
                     min_frames=args.min_frames, hierarchy=args.hierarchy)
    print(json.dumps({k: v for k, v in report.items() if k != "skipped"}))
    if report.get("skipped"):
        print(f"skipped {len(report['skipped'])} clips: see {args.out}/prepare_report.json")


def cmd_pack(args) -> None:
    from cg_ray.data.pack import PackOptions, pack

    report = pack(args.dest, PackOptions(
        num_frames=args.frames, image_size=args.size, quality=args.quality,
        clips_per_shard=args.clips_per_shard, min_frames=args.min_frames, seed=args.seed))
    print(json.dumps({k: v for k, v in report.items() if k not in ("skipped", "shards")}))
    if report["skipped"]:
        print(f"skipped {len(report['skipped'])} clips: see {report['dest']}/pack_report.json")


def cmd_bench_data(args) -> None:
    from cg_ray.data.bench import bench_data

    result = bench_data(args.dest, args.clips, args.split, args.frames, args.size, args.batch_size)
    _write_json(args.metrics_out, result)
    print(json.dumps(result))


def cmd_text(args) -> None:
    from cg_ray.data.stream import load_taxonomy
    from cg_ray.labels.text import encode_label_names, save_text_features

    taxonomy = load_taxonomy(args.dest)
    features = encode_label_names(taxonomy, args.model, args.pretrained, args.template, args.seed)
    print(save_text_features(args.dest, features, taxonomy))


def cmd_scenes(args) -> None:
    from cg_ray.labels.scenes import SceneOptions, label_scenes

    report = label_scenes(args.dest, SceneOptions(
        checkpoint=args.checkpoint, hierarchy=args.hierarchy, arch=args.arch,
        categories=args.categories, num_frames=args.frames, image_size=args.size,
        batch_size=args.batch_size, actors=args.actors, flush_every=args.flush_every))
    print(json.dumps({k: report[k] for k in ("clips", "labelled", "resumed", "skipped",
                                             "frames_per_s", "arch")}))
    if report["skipped"]:
        print(f"skipped {report['skipped']} clips: see {args.dest}/scenes_report.json")


def cmd_compare(args) -> None:
    from cg_ray.compare import compare_runs

    print(compare_runs(args.runs, args.format, args.tracking_uri))


def cmd_train(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.train import train

    overrides = list(args.set) + ([f"run.register_as={args.register_as}"] if args.register_as else [])
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    _write_json(args.metrics_out, result)
    print(json.dumps({k: v for k, v in result.items()
                      if k.endswith("top1") or k in ("checkpoint", "registered_model")}))


def cmd_tune(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.tune import search

    overrides = list(args.set)
    if args.num_samples is not None:
        overrides.append(f"tune.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        overrides.append(f"tune.max_concurrent={args.max_concurrent}")
    summary = search(load_config(args.config, overrides), args.resume, args.best_config_out)
    _write_json(args.metrics_out, summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "best"} |
                     {"best_run_id": summary["best"]["run_id"]}))


def cmd_evaluate(args) -> None:
    from cg_ray.inference import evaluate

    modes = [args.mode] if args.mode else ["codependent"]
    if (args.coordinates or args.tracking_uri) and not args.report:
        raise UserError("--coordinates and --tracking-uri go with --report DIR")
    if args.report:
        from cg_ray.report import evaluate_with_report

        metrics, note = evaluate_with_report(
            args.checkpoint, args.data, args.report, args.split, modes[0], args.coordinates,
            args.predictions_out, args.batch_size, args.tracking_uri)
    else:
        metrics = evaluate(args.checkpoint, args.data, args.split, modes, args.predictions_out,
                           args.batch_size)[modes[0]]
    _write_json(args.metrics_out, {"mode": modes[0], **metrics})
    print(format_table({modes[0]: metrics}))
    print(f"{metrics['num_clips']} clips, {metrics['bad_clips']} skipped, "
          f"{metrics['clips_per_s']:.1f} clips/s")
    if args.report:
        print(f"report: {args.report}/index.html; median error "
              f"{metrics.get('geo_median_km', float('nan')):.0f} km; {note}")


def cmd_predict(args) -> None:
    if bool(args.inputs) == bool(args.input_list):
        raise UserError("give either INPUT... or --input-list LIST --out OUT.parquet")
    if args.input_list:
        from cg_ray.batch_predict import batch_predict

        if not args.out:
            raise UserError("--input-list needs --out OUT.parquet")
        print(json.dumps(batch_predict(args.checkpoint, args.input_list, args.out, args.mode,
                                       args.top_k, args.batch_size, args.actors)))
        return
    if args.out or args.actors:
        raise UserError("--out and --actors go with --input-list; single inputs are printed")
    from cg_ray.predict import Predictor, format_outcome, open_checkpoint, predict_inputs

    loaded, _ = open_checkpoint(args.checkpoint)
    outcomes = predict_inputs(Predictor(loaded, args.mode, args.top_k), args.inputs,
                              args.batch_size)
    for outcome in outcomes:
        if outcome.error:
            print(f"cg-ray predict: error: {outcome.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(outcome.prediction or {"input": outcome.input, "error": outcome.error}))
        elif outcome.prediction:
            print(format_outcome(outcome, args.top_k))
    if all(outcome.error for outcome in outcomes):
        raise UserError(f"none of the {len(outcomes)} inputs could be read")


def cmd_demo(args) -> None:
    from cg_ray.demo import run_demo

    run_demo(args.out, workers=args.workers, epochs=args.epochs)


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cg-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic world of real encoded media")
    p.add_argument("out")
    p.add_argument("--cities", type=int, default=12)
    p.add_argument("--clips-per-city", type=int, default=30)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", default="64x48", help="WxH")
    p.add_argument("--format", choices=["frames", "mp4"], default="frames")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="dataset layout -> manifest.parquet + taxonomy.json")
    p.add_argument("source")
    p.add_argument("--layout", default="cityguessr")
    p.add_argument("--out", required=True)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-frames", type=int, default=None,
                   help="skip shorter clips (default: 15 for msls, 1 otherwise)")
    p.add_argument("--hierarchy", metavar="CSV", help="msls: city,state,country,continent rows "
                   "(default: the 30-city hierarchy shipped with cg_ray)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("pack", help="raw clips -> parquet shards of T JPEG frames at SxS (Ray Data)")
    p.add_argument("dest", help="a prepared dataset (folder or s3:// URI)")
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored frames")
    p.add_argument("--clips-per-shard", type=int, default=120)
    p.add_argument("--min-frames", type=int, default=1, help="skip clips with fewer frames")
    p.add_argument("--seed", type=int, default=0, help="order of clips over the shards")
    p.set_defaults(func=cmd_pack)

    p = sub.add_parser("bench", help="measure a part of the system")
    bench = p.add_subparsers(dest="target", required=True)
    b = bench.add_parser("data", help="clips/s delivered after iter_torch_batches, peak memory")
    b.add_argument("dest", help="a prepared (ideally packed) dataset")
    b.add_argument("--clips", type=int, default=512)
    b.add_argument("--split", default="train")
    b.add_argument("--frames", type=int, default=16)
    b.add_argument("--size", type=int, default=224)
    b.add_argument("--batch-size", type=int, default=12)
    b.add_argument("--metrics-out")
    b.set_defaults(func=cmd_bench_data)

    p = sub.add_parser("text", help="open_clip text features of every label name (TLA targets)")
    p.add_argument("dest")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default=None, help="open_clip tag (openai) or weights file; "
                                                      "none: random weights")
    p.add_argument("--template", default="a street in {}.")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_text)

    p = sub.add_parser("scenes", help="Places365 soft scene labels per clip (Ray Data batch "
                                      "inference) -> manifest scene_soft, scene_majority")
    p.add_argument("dest", help="a prepared dataset (folder or s3:// URI)")
    p.add_argument("--checkpoint", required=True, help="Places365 CNN (CSAIL .pth.tar)")
    p.add_argument("--hierarchy", required=True, metavar="SHEET.csv",
                   help="the Places365 scene hierarchy sheet, exported as CSV")
    p.add_argument("--arch", help="torchvision architecture (default: the checkpoint's arch, "
                                  "else resnet18)")
    p.add_argument("--categories", help="class names in output order (default: Places365)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (evenly spaced)")
    p.add_argument("--size", type=int, default=224, help="frames go to the CNN at SIZE x SIZE")
    p.add_argument("--batch-size", type=int, default=8, help="clips per inference batch")
    p.add_argument("--actors", type=int, help="inference actors (default: one per GPU, else "
                                              "one per CPU)")
    p.add_argument("--flush-every", type=int, default=256,
                   help="clips per partial results file (what a resumed run skips)")
    p.set_defaults(func=cmd_scenes)

    p = sub.add_parser("compare", help="the paper-style table of runs tracked in MLflow")
    p.add_argument("runs", nargs="+", metavar="RUN_OR_EXPERIMENT",
                   help="an MLflow run id, or an experiment name (all its finished runs)")
    p.add_argument("--format", choices=["text", "markdown", "csv"], default="text")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
                                          "./mlflow.db)")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("train", help="train with Ray Train (DDP), tracked in MLflow")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--metrics-out")
    p.add_argument("--resume", action="store_true",
                   help="continue run.name from its latest checkpoint (an error if there is none)")
    p.add_argument("--register-as", metavar="NAME",
                   help="register the best checkpoint in the MLflow model registry")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("tune", help="hyper-parameter search over tune.space with Ray Tune (ASHA "
                                    "or FIFO, random or Optuna); MLflow child run per trial")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--num-samples", type=int, metavar="N", help="trials (tune.num_samples)")
    p.add_argument("--max-concurrent", type=int, metavar="M",
                   help="trials at once (tune.max_concurrent; default: what the cluster fits)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted search run.storage_path/run.name")
    p.add_argument("--best-config-out", metavar="PATH",
                   help="also write the best trial's ready-to-train config here")
    p.add_argument("--metrics-out", metavar="PATH", help="the search summary as JSON")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("evaluate", help="hierarchical evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or models:/NAME/VERSION")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--mode", choices=["flat", "independent", "codependent"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--metrics-out")
    p.add_argument("--predictions-out")
    p.add_argument("--report", metavar="DIR", help="write an HTML report with per-city/country "
                   "accuracy, confusion matrices, geodesic error and a world map")
    p.add_argument("--coordinates", metavar="CSV", help="city,lat,lon rows that add to or replace "
                   "the shipped city centres")
    p.add_argument("--tracking-uri", help="MLflow store of the checkpoint's training run "
                   "(default: the checkpoint's config, then $MLFLOW_TRACKING_URI)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="city/state/country/continent of videos or frame folders")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video file, frames folder, or URI")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or models:/NAME/VERSION")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--mode", choices=["flat", "independent", "codependent"], default="codependent")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.add_argument("--input-list", metavar="CSV|DIR|URI",
                   help="batch prediction with Ray Data over a folder or a list of clips")
    p.add_argument("--out", metavar="OUT.parquet", help="where batch predictions go")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--actors", type=int, help="predictor actors (default: one per GPU, else "
                                              "one per CPU of the cluster)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="synth -> prepare -> text -> train -> evaluate, all local")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cg_ray.ray_env import quiet_environment

    quiet_environment()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as exc:
        print(f"cg-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cg-ray {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
