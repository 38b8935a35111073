"""`cg-ray` commands: each parses its options, calls one function of the package, prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import textwrap

from cg_ray.console import format_table, quiet_mode
from cg_ray.errors import UserError


def _write_json(path: str | None, data: dict) -> None:
    if path:
        from cg_ray import storage

        storage.write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


# -- commands -------------------------------------------------------------------------------------


def cmd_synth(args) -> None:
    from cg_ray.data.synthetic import make_world

    width, _, height = args.size.partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise UserError(f"--size '{args.size}' must look like WxH, e.g. 64x48")
    summary = make_world(
        args.out,
        cities=args.cities,
        clips_per_city=args.clips_per_city,
        frames=args.frames,
        size=(int(width), int(height)),
        fmt=args.format,
        seed=args.seed,
    )
    print(json.dumps(summary))


def cmd_prepare(args) -> None:
    from cg_ray.data.layouts import prepare

    report = prepare(
        args.layout,
        args.source,
        args.out,
        val_fraction=args.val_fraction,
        seed=args.seed,
        min_frames=args.min_frames,
        hierarchy=args.hierarchy,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "skipped"}))
    if report.get("skipped"):
        print(f"skipped {len(report['skipped'])} clips: see {args.out}/prepare_report.json")


def cmd_pack(args) -> None:
    from cg_ray.data.pack import PackOptions, pack

    report = pack(
        args.dest,
        PackOptions(
            num_frames=args.frames,
            image_size=args.size,
            quality=args.quality,
            clips_per_shard=args.clips_per_shard,
            min_frames=args.min_frames,
            seed=args.seed,
            sampling=args.sampling,
        ),
    )
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

    report = label_scenes(
        args.dest,
        SceneOptions(
            checkpoint=args.checkpoint,
            hierarchy=args.hierarchy,
            arch=args.arch,
            categories=args.categories,
            num_frames=args.frames,
            image_size=args.size,
            batch_size=args.batch_size,
            actors=args.actors,
            flush_every=args.flush_every,
        ),
    )
    print(
        json.dumps(
            {k: report[k] for k in ("clips", "labelled", "resumed", "skipped", "frames_per_s", "arch")}
        )
    )
    if report["skipped"]:
        print(f"skipped {report['skipped']} clips: see {args.dest}/scenes_report.json")


def cmd_compare(args) -> None:
    from cg_ray.report.compare import compare_runs

    print(compare_runs(args.runs, args.format, args.tracking_uri))


def cmd_train(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.train.driver import train

    overrides = list(args.set) + ([f"run.register_as={args.register_as}"] if args.register_as else [])
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    _write_json(args.metrics_out, result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k.endswith("top1") or k in ("checkpoint", "registered_model")}
        )
    )


def cmd_tune(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.tune.search import search

    overrides = list(args.set)
    if args.num_samples is not None:
        overrides.append(f"tune.num_samples={args.num_samples}")
    if args.max_concurrent is not None:
        overrides.append(f"tune.max_concurrent={args.max_concurrent}")
    summary = search(load_config(args.config, overrides), args.resume, args.best_config_out)
    _write_json(args.metrics_out, summary)
    print(
        json.dumps(
            {k: v for k, v in summary.items() if k != "best"} | {"best_run_id": summary["best"]["run_id"]}
        )
    )


def cmd_evaluate(args) -> None:
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
    _write_json(args.metrics_out, {"mode": modes[0], **metrics})
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


def cmd_predict(args) -> None:
    if bool(args.inputs) == bool(args.input_list):
        raise UserError("give either INPUT... or --input-list LIST --out OUT.parquet")
    if args.input_list:
        from cg_ray.predict.batch import batch_predict

        if not args.out:
            raise UserError("--input-list needs --out OUT.parquet")
        if args.views is not None:
            raise UserError(
                "--views goes with single inputs; batch prediction takes the checkpoint's eval.views"
            )
        print(
            json.dumps(
                batch_predict(
                    args.checkpoint,
                    args.input_list,
                    args.out,
                    args.mode,
                    args.top_k,
                    args.batch_size,
                    args.actors,
                )
            )
        )
        return
    if args.out or args.actors:
        raise UserError("--out and --actors go with --input-list; single inputs are printed")
    from cg_ray.predict.predictor import Predictor, format_outcome, open_checkpoint, predict_inputs

    loaded, _ = open_checkpoint(args.checkpoint)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU when there is one
    outcomes = predict_inputs(
        Predictor(loaded, args.mode, args.top_k, device, views=args.views), args.inputs, args.batch_size
    )
    for outcome in outcomes:
        if outcome.error:
            print(f"cg-ray predict: error: {outcome.error}", file=sys.stderr)
        if args.json:
            print(json.dumps(outcome.prediction or {"input": outcome.input, "error": outcome.error}))
        elif outcome.prediction:
            print(format_outcome(outcome, args.top_k))
    if all(outcome.error for outcome in outcomes):
        raise UserError(f"none of the {len(outcomes)} inputs could be read")


def cmd_serve(args) -> None:
    import os

    from cg_ray.predict.serve import ServeOptions, parse_autoscale, serve_forever

    if args.replicas is not None and args.autoscale:
        raise UserError("give either --replicas N or --autoscale MIN:MAX, not both")
    serve_forever(
        ServeOptions(
            checkpoint=args.checkpoint,
            host=args.host,
            port=args.port,
            replicas=args.replicas or 1,
            autoscale=parse_autoscale(args.autoscale) if args.autoscale else None,
            gpus_per_replica=args.gpus_per_replica,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            mode=args.mode,
            top_k=args.top_k,
            max_upload_mb=args.max_upload_mb,
            min_frames=args.min_frames,
            token=args.token or os.environ.get("CG_RAY_SERVE_TOKEN") or None,
            allow_local_paths=args.allow_local_paths,
            tracking_uri=args.tracking_uri,
            metrics_port=args.metrics_port,
        )
    )


def cmd_config_show(args) -> None:
    from cg_ray.config import describe, load_config

    print(describe(load_config(args.config, args.set)))


def cmd_config_check(args) -> None:
    from cg_ray.config import load_config

    bad = 0
    for path in args.files:
        try:
            load_config(path)
            print(f"{path}: ok")
        except UserError as exc:
            bad += 1
            print(f"{path}: {exc}")
    if bad:
        raise UserError(f"{bad} of {len(args.files)} config files are invalid")


def cmd_tracking_sync(args) -> None:
    from cg_ray.predict.pyfunc import register_checkpoint
    from cg_ray.tracking_sync import sync

    print(json.dumps(sync(args.run_dir, args.tracking_uri, args.wait, register_checkpoint)))


def cmd_demo(args) -> None:
    from cg_ray.demo import run_demo

    run_demo(args.out, workers=args.workers, epochs=args.epochs)


# -- parser ---------------------------------------------------------------------------------------


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; every option's help ends with its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (
            "default" not in text
            and action.option_strings
            and default not in (None, False, [])
            and default is not argparse.SUPPRESS
        ):
            text += f" (default: {default})"
        return text


def _command(sub, name: str, summary: str, description: str, examples: str, func):
    """A subcommand whose help reads like its docs: what it does, then examples."""
    p = sub.add_parser(
        name,
        help=summary,
        description=description.strip(),
        epilog="examples:\n" + textwrap.indent(examples.strip(), "  "),
        formatter_class=_HelpFormatter,
    )
    p.set_defaults(func=func)
    return p


def _config_options(p) -> None:
    p.add_argument(
        "--config",
        required=True,
        metavar="FILE",
        help="YAML config (configs/demo.yaml, configs/cityguessr68k.yaml, ...); "
        "`cg-ray config show --config FILE` lists every key with its doc",
    )
    p.add_argument(
        "--set",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. --set train.epochs=3 model.sca.heads=4; "
        "one or several pairs, and the flag may repeat",
    )


def _progress_option(p) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")


MODES = ["flat", "independent", "codependent", "official"]


def build_parser() -> argparse.ArgumentParser:
    from cg_ray import __version__

    parser = argparse.ArgumentParser(
        prog="cg-ray",
        formatter_class=_HelpFormatter,
        description="Train, search, evaluate and use video geolocalization models (CityGuessr) "
        "on Ray: a street-level video -> its city, state, country and continent.",
        epilog="the whole system on a laptop:\n  make demo\n"
        "a command's own help, with examples:\n  cg-ray train --help",
    )
    parser.add_argument("--version", action="version", version=f"cg-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(
        sub,
        "synth",
        "write a synthetic world of real encoded media",
        """
Write a synthetic world in the CityGuessr68k release layout (labels_list.csv, train/ and val/
with <City>/<video_id>/<n>.jpg) or as mp4 files with a labels CSV, plus per-clip soft scene
labels. Continent, country, state and city each leave their own visual mark; deterministic.""",
        """
cg-ray synth world/
cg-ray synth world_mp4/ --format mp4 --cities 6 --clips-per-city 10""",
        cmd_synth,
    )
    p.add_argument("out", help="folder (or s3:// URI) to write the world to")
    p.add_argument("--cities", type=int, default=12, help="cities (spread over 6 continents)")
    p.add_argument("--clips-per-city", type=int, default=30, help="clips of each city")
    p.add_argument("--frames", type=int, default=16, help="frames per clip")
    p.add_argument("--size", default="64x48", help="frame size WxH")
    p.add_argument(
        "--format", choices=["frames", "mp4"], default="frames", help="JPEG frame folders or mp4 files"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the world")

    p = _command(
        sub,
        "prepare",
        "dataset layout -> manifest.parquet + taxonomy.json",
        """
Turn a dataset layout into DEST/manifest.parquet (one row per clip), DEST/taxonomy.json and
DEST/prepare_report.json (clips per split and label, skipped clips with their reasons).""",
        """
cg-ray prepare world/ --out data/
cg-ray prepare s3://raw/cityguessr68k --out s3://work/cg68k
cg-ray prepare msls/ --out msls_data/ --layout msls
cg-ray prepare videos.csv --out mine/ --layout videos""",
        cmd_prepare,
    )
    p.add_argument("source", help="the dataset: a folder, s3:// URI, or (videos) a CSV")
    p.add_argument(
        "--layout",
        default="cityguessr",
        help="cityguessr (the release or the official code's label files), msls, "
        "or videos (CSV path,city,state,country,continent[,split])",
    )
    p.add_argument("--out", required=True, metavar="DEST", help="where the prepared dataset goes")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.2,
        help="share of each city's clips for val, where the layout has no split",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    p.add_argument(
        "--min-frames", type=int, default=None, help="skip shorter clips (default: 15 for msls, 1 otherwise)"
    )
    p.add_argument(
        "--hierarchy",
        metavar="CSV",
        help="msls: city,state,country,continent rows (default: the 30-city hierarchy shipped with cg_ray)",
    )

    p = _command(
        sub,
        "pack",
        "raw clips -> parquet shards of T JPEG frames at SxS (Ray Data)",
        """
Read each clip once, decode the T frames it samples, resize them to S x S and store them as
JPEG in DEST/shards/frames{T}_size{S}/; training and evaluation then read the shards. An
interrupted pack resumes where it stopped.""",
        """
cg-ray pack data/ --frames 16 --size 224
cg-ray pack s3://work/cg68k --frames 16 --size 224""",
        cmd_pack,
    )
    p.add_argument("dest", help="a prepared dataset (folder or s3:// URI)")
    p.add_argument("--frames", type=int, default=16, help="frames stored per clip (T)")
    p.add_argument("--size", type=int, default=224, help="stored frame size S (S x S)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the stored frames")
    p.add_argument("--clips-per-shard", type=int, default=120, help="clips per parquet shard")
    p.add_argument("--min-frames", type=int, default=1, help="skip clips with fewer frames")
    p.add_argument("--seed", type=int, default=0, help="order of clips over the shards")
    p.add_argument(
        "--sampling",
        choices=["uniform", "official"],
        default="uniform",
        help="which frames are stored: evenly spaced (serves data.sampling uniform, "
        "random, bidirectional; random and bidirectional need --frames 2T) or "
        "the official picks, every 5th from the first (data.sampling=official)",
    )
    _progress_option(p)

    p = _command(
        sub,
        "bench",
        "measure a part of the system",
        """
Measure a part of the system and print its figures as JSON.""",
        """
cg-ray bench data data/ --clips 2400""",
        None,
    )
    bench = p.add_subparsers(dest="target", required=True, metavar="TARGET")
    b = _command(
        bench,
        "data",
        "clips/s delivered after iter_torch_batches, peak memory",
        """
Stream clips of a prepared (ideally packed) dataset the way training reads them, and print
clips/s, CPU-seconds per clip and peak memory.""",
        """
cg-ray bench data data/ --clips 2400 --metrics-out bench.json""",
        cmd_bench_data,
    )
    b.add_argument("dest", help="a prepared (ideally packed) dataset")
    b.add_argument("--clips", type=int, default=512, help="clips to stream in all")
    b.add_argument("--split", default="train", help="split to stream")
    b.add_argument("--frames", type=int, default=16, help="frames per clip (T)")
    b.add_argument("--size", type=int, default=224, help="frame size S")
    b.add_argument("--batch-size", type=int, default=12, help="clips per batch")
    b.add_argument("--metrics-out", metavar="PATH", help="also write the figures as JSON here")

    p = _command(
        sub,
        "text",
        "open_clip text features of every label name (TLA targets)",
        """
Embed every label name of every level with an open_clip text encoder and store
DEST/text_features.parquet (level, label, vector): the TLA targets.""",
        """
cg-ray text data/
cg-ray text data/ --pretrained openai
cg-ray text data/ --pretrained /models/open_clip_vit_b32.pt""",
        cmd_text,
    )
    p.add_argument("dest", help="a prepared dataset")
    p.add_argument("--model", default="ViT-B-32", help="open_clip model name")
    p.add_argument(
        "--pretrained", default=None, help="open_clip tag (openai) or weights file (default: random weights)"
    )
    p.add_argument("--template", default="a street in {}.", help="text around each label name")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")

    p = _command(
        sub,
        "scenes",
        "Places365 soft scene labels per clip (Ray Data batch "
        "inference) -> manifest scene_soft, scene_majority",
        """
Label every sampled frame with a Places365 CNN and store each clip's soft scene label (fraction
of its frames in each of the 16 level-2 categories) in the manifest. Resumable.""",
        """
cg-ray scenes data/ --checkpoint resnet18_places365.pth.tar --hierarchy places365_hierarchy.csv""",
        cmd_scenes,
    )
    p.add_argument("dest", help="a prepared dataset (folder or s3:// URI)")
    p.add_argument("--checkpoint", required=True, help="Places365 CNN (CSAIL .pth.tar)")
    p.add_argument(
        "--hierarchy",
        required=True,
        metavar="SHEET.csv",
        help="the Places365 scene hierarchy sheet, exported as CSV",
    )
    p.add_argument("--arch", help="torchvision architecture (default: the checkpoint's arch, else resnet18)")
    p.add_argument("--categories", help="class names in output order (default: Places365)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (evenly spaced)")
    p.add_argument("--size", type=int, default=224, help="frames go to the CNN at SIZE x SIZE")
    p.add_argument("--batch-size", type=int, default=8, help="clips per inference batch")
    p.add_argument("--actors", type=int, help="inference actors (default: one per GPU, else one per CPU)")
    p.add_argument(
        "--flush-every",
        type=int,
        default=256,
        help="clips per partial results file (what a resumed run skips)",
    )
    _progress_option(p)

    p = _command(
        sub,
        "compare",
        "the paper-style table of runs tracked in MLflow",
        """
One row per run: what it trained and the final top-1 of the four levels.""",
        """
cg-ray compare cg_ray
cg-ray compare RUN_ID_1 RUN_ID_2 --format markdown""",
        cmd_compare,
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_OR_EXPERIMENT",
        help="an MLflow run id, or an experiment name (all its finished runs)",
    )
    p.add_argument("--format", choices=["text", "markdown", "csv"], default="text", help="output format")
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)")

    p = _command(
        sub,
        "train",
        "train with Ray Train (DDP), tracked in MLflow",
        """
Train the configured model with train.num_workers Ray Train workers (DDP), evaluating the val
split after every epoch, writing a checkpoint per epoch under run.storage_path/run.name/ and
logging one MLflow run.""",
        """
cg-ray train --config configs/demo.yaml --set data.path=demo_out/data
cg-ray train --config configs/demo.yaml --set data.path=s3://work/cg68k \\
    --set run.storage_path=s3://work/runs --metrics-out m.json
cg-ray train --config configs/cityguessr68k.yaml --set train.epochs=3 train.num_workers=4
cg-ray train --config configs/demo.yaml --resume
cg-ray train --config configs/demo.yaml --resume auto""",
        cmd_train,
    )
    _config_options(p)
    p.add_argument(
        "--metrics-out",
        metavar="PATH",
        help="write the final metrics and the best checkpoint's path as JSON here",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="must",
        choices=["must", "auto"],
        help="continue run.name from its latest checkpoint: --resume (= must) is an error if "
        "there is none; --resume auto starts a new run then (so does no --resume: a run folder "
        "with checkpoints is always continued)",
    )
    p.add_argument(
        "--register-as", metavar="NAME", help="register the best checkpoint in the MLflow model registry"
    )
    _progress_option(p)

    p = _command(
        sub,
        "tune",
        "hyper-parameter search over tune.space with Ray Tune (ASHA "
        "or FIFO, random or Optuna); MLflow child run per trial",
        """
Search the config's tune.space with Ray Tune: each trial is a full training run (an MLflow
child run under one parent); the best trial's config is written as YAML.""",
        """
cg-ray tune --config configs/demo.yaml --set data.path=demo_out/data --num-samples 3
cg-ray tune --config configs/search.yaml --num-samples 16 --best-config-out best.yaml
cg-ray tune --config configs/search.yaml --resume
cg-ray tune --config configs/search.yaml --resume auto""",
        cmd_tune,
    )
    _config_options(p)
    p.add_argument("--num-samples", type=int, metavar="N", help="trials (tune.num_samples)")
    p.add_argument(
        "--max-concurrent",
        type=int,
        metavar="M",
        help="trials at once (tune.max_concurrent; default: what the cluster fits)",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="must",
        choices=["must", "auto"],
        help="continue the interrupted search run.storage_path/run.name: --resume (= must) is "
        "an error if there is none; --resume auto starts a new search then (for jobs that "
        "restart themselves)",
    )
    p.add_argument(
        "--best-config-out", metavar="PATH", help="also write the best trial's ready-to-train config here"
    )
    p.add_argument("--metrics-out", metavar="PATH", help="the search summary as JSON")

    p = _command(
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
        cmd_evaluate,
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
    p.add_argument(
        "--tracking-uri",
        help="MLflow store of the checkpoint's training run "
        "(default: the checkpoint's config, then $MLFLOW_TRACKING_URI)",
    )
    _progress_option(p)

    p = _command(
        sub,
        "predict",
        "city/state/country/continent of videos or frame folders",
        """
Predict where videos were filmed: single inputs are printed (or one JSON object each with
--json); --input-list runs batch prediction with Ray Data into one parquet file.""",
        """
cg-ray predict --checkpoint CKPT clip.mp4 frames_folder/ --top-k 5
cg-ray predict --checkpoint models:/cityguessr/1 s3://bucket/clip.mp4 --json
cg-ray predict --checkpoint CKPT --input-list clips.csv --out predictions.parquet""",
        cmd_predict,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="video file, frames folder, or URI")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or models:/NAME/VERSION")
    p.add_argument("--top-k", type=int, default=5, help="candidates listed per level")
    p.add_argument("--mode", choices=MODES, default="codependent", help="hierarchical evaluation mode")
    p.add_argument("--json", action="store_true", help="one JSON object per input")
    p.add_argument(
        "--views",
        type=int,
        metavar="K",
        help="temporal clips per input, probabilities averaged (default: the checkpoint's eval.views)",
    )
    p.add_argument(
        "--input-list",
        metavar="CSV|DIR|URI",
        help="batch prediction with Ray Data over a folder or a list of clips",
    )
    p.add_argument("--out", metavar="OUT.parquet", help="where batch predictions go")
    p.add_argument("--batch-size", type=int, default=16, help="clips per batch")
    p.add_argument(
        "--actors", type=int, help="predictor actors (default: one per GPU, else one per CPU of the cluster)"
    )
    _progress_option(p)

    p = _command(
        sub,
        "serve",
        "an online endpoint (Ray Serve) and a web page to try a video",
        """
Serve a checkpoint over HTTP with Ray Serve until Ctrl-C: POST /predict takes a clip (multipart
field `video`, raw video bytes, a zip of a frames folder, or JSON {"uri": "s3://..."}) and answers
the `cg-ray predict --json` object plus mode and latency_ms; GET / is a page to try a video;
GET /info, GET /healthz. Decoding runs in the HTTP deployment, requests are batched on the model
replicas. Binds 127.0.0.1 unless --host says otherwise.""",
        """
cg-ray serve --checkpoint runs/demo/checkpoint_000002 --port 8000
cg-ray serve --checkpoint models:/cityguessr/1 --autoscale 1:4 --gpus-per-replica 1 --max-batch 16
CG_RAY_SERVE_TOKEN=... cg-ray serve --checkpoint CKPT --host 0.0.0.0""",
        cmd_serve,
    )
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder or URI, or models:/NAME/VERSION")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 exposes the endpoint to the network (use --token)",
    )
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--replicas", type=int, help="model replicas (default: 1)")
    p.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="autoscale the model replicas between "
        "MIN and MAX on ongoing requests (default: off, fixed --replicas)",
    )
    p.add_argument(
        "--gpus-per-replica",
        type=float,
        default=0.0,
        help="GPUs each model replica holds (fractions share a GPU)",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=8,
        help="most clips per batched forward pass on a replica (1: no batching)",
    )
    p.add_argument(
        "--batch-wait-ms", type=float, default=10.0, help="how long a replica waits to fill a batch"
    )
    p.add_argument("--mode", choices=MODES, default="codependent", help="hierarchical evaluation mode")
    p.add_argument("--top-k", type=int, default=5, help="candidates answered per level")
    p.add_argument(
        "--max-upload-mb", type=float, default=200.0, help="largest accepted upload; larger bodies get 413"
    )
    p.add_argument("--min-frames", type=int, default=1, help="clips with fewer frames get 422")
    p.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' on /predict and /info "
        "(default: $CG_RAY_SERVE_TOKEN, else no authentication)",
    )
    p.add_argument(
        "--allow-local-paths",
        action="store_true",
        help="let JSON requests name files on the server (default: object store URIs only)",
    )
    p.add_argument(
        "--tracking-uri",
        help="MLflow store for models:/ references (default: $MLFLOW_TRACKING_URI, else ./mlflow.db)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="Ray's Prometheus metrics port (default: one Ray picks, printed at start)",
    )

    p = _command(
        sub,
        "config",
        "show or check a config file",
        """
show: the resolved config (file plus --set overrides) as YAML, every field with its one-line
doc. check: validate config files; one line per file, exit status 2 if any is invalid.""",
        """
cg-ray config show --config configs/demo.yaml --set train.epochs=3
cg-ray config check configs/*.yaml configs/paper/*.yaml""",
        None,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = _command(
        actions,
        "show",
        "print the resolved config with each field's doc",
        """
Print the resolved config (defaults, the file, then --set overrides) as YAML that loads back,
each field followed by its one-line doc.""",
        """
cg-ray config show --config configs/demo.yaml
cg-ray config show --config configs/demo.yaml --set train.epochs=3 model.sca.heads=4""",
        cmd_config_show,
    )
    _config_options(c)
    c = _command(
        actions,
        "check",
        "validate config files",
        """
Load and validate each file as `cg-ray train` would; print one line per file.""",
        """
cg-ray config check configs/demo.yaml
cg-ray config check configs/*.yaml configs/paper/*.yaml""",
        cmd_config_check,
    )
    c.add_argument("files", nargs="+", metavar="FILE", help="YAML config files")

    p = _command(
        sub,
        "tracking",
        "deliver tracking records kept while MLflow was away",
        """
While the MLflow server is away, training goes on: its metrics, params, tags, artifacts and
registrations wait and are retried. What is still waiting when a command ends is kept in the run
folder (RUN_DIR/tracking/); sync delivers it.""",
        """
cg-ray tracking sync runs/demo
cg-ray tracking sync s3://work/runs/search-1 --tracking-uri http://mlflow:5000""",
        None,
    )
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = _command(
        actions,
        "sync",
        "replay a run's kept tracking records into MLflow",
        """
Deliver, in order, the tracking records that a run (or a search, with its trials) kept in its
folder: into its own store, the records it lacks; into another one (a fresh server), each run is
created (name, params, tags) and all its records added. Running it again adds nothing twice.""",
        """
cg-ray tracking sync runs/demo
cg-ray tracking sync runs/search-1 --tracking-uri http://127.0.0.1:5000""",
        cmd_tracking_sync,
    )
    c.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder: run.storage_path/run.name")
    c.add_argument(
        "--tracking-uri",
        help="MLflow store to deliver to (default: $MLFLOW_TRACKING_URI, else the one the records name)",
    )
    c.add_argument(
        "--wait",
        type=float,
        metavar="S",
        help="seconds to keep retrying an unreachable server (default: $CG_RAY_TRACKING_WAIT_S or 120)",
    )

    p = _command(
        sub,
        "demo",
        "synth -> prepare -> text -> train -> evaluate, all local",
        """
The whole system on one machine: a synthetic world, prepared, with text features, trained with
DDP workers on a local Ray, evaluated in three modes; everything under --out.""",
        """
cg-ray demo
cg-ray demo --out /tmp/demo --workers 1 --epochs 2""",
        cmd_demo,
    )
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: configs/demo.yaml's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from cg_ray.ray_env import quiet_environment

    quiet_environment()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        with quiet_mode(getattr(args, "quiet", False)):
            args.func(args)
    except UserError as exc:
        print(f"cg-ray {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cg-ray {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        # A storage fault, however deep Ray wrapped it: one line, not a traceback. Permanent
        # (fix something, exit 2) or transient and out of retries (try later, exit 1).
        from cg_ray.storage import max_attempts
        from cg_ray.storage_errors import from_failure

        found = from_failure(exc, max_attempts())
        if found is None:
            raise
        print(f"cg-ray {args.command}: error: {found}", file=sys.stderr)
        return 2 if isinstance(found, UserError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
