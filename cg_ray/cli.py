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

    report = prepare(args.layout, args.source, args.out, val_fraction=args.val_fraction, seed=args.seed)
    print(json.dumps({k: v for k, v in report.items() if k != "skipped"}))
    if report.get("skipped"):
        print(f"skipped {len(report['skipped'])} clips: see {args.out}/prepare_report.json")


def cmd_text(args) -> None:
    from cg_ray.data.stream import load_taxonomy
    from cg_ray.labels.text import encode_label_names, save_text_features

    taxonomy = load_taxonomy(args.dest)
    features = encode_label_names(taxonomy, args.model, args.pretrained, args.template, args.seed)
    print(save_text_features(args.dest, features, taxonomy))


def cmd_train(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.train import train

    overrides = list(args.set) + ([f"run.register_as={args.register_as}"] if args.register_as else [])
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    _write_json(args.metrics_out, result)
    print(json.dumps({k: v for k, v in result.items()
                      if k.endswith("top1") or k in ("checkpoint", "registered_model")}))


def cmd_evaluate(args) -> None:
    from cg_ray.inference import evaluate

    modes = [args.mode] if args.mode else ["codependent"]
    metrics = evaluate(args.checkpoint, args.data, args.split, modes, args.predictions_out,
                       args.batch_size)[modes[0]]
    _write_json(args.metrics_out, {"mode": modes[0], **metrics})
    print(format_table({modes[0]: metrics}))
    print(f"{metrics['num_clips']} clips, {metrics['bad_clips']} skipped, "
          f"{metrics['clips_per_s']:.1f} clips/s")


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
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("text", help="open_clip text features of every label name (TLA targets)")
    p.add_argument("dest")
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--pretrained", default=None, help="open_clip tag (openai) or weights file; "
                                                      "none: random weights")
    p.add_argument("--template", default="a street in {}.")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_text)

    p = sub.add_parser("train", help="train with Ray Train (DDP), tracked in MLflow")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--metrics-out")
    p.add_argument("--resume", action="store_true",
                   help="continue run.name from its latest checkpoint (an error if there is none)")
    p.add_argument("--register-as", metavar="NAME",
                   help="register the best checkpoint in the MLflow model registry")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="hierarchical evaluation of a checkpoint")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or models:/NAME/VERSION")
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--mode", choices=["flat", "independent", "codependent"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--metrics-out")
    p.add_argument("--predictions-out")
    p.set_defaults(func=cmd_evaluate)

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
