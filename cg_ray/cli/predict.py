"""`cg-ray predict`: where videos were filmed, one by one or as a batch job."""

from __future__ import annotations

import json
import sys

from cg_ray.cli.common import MODES, command, progress_option
from cg_ray.errors import UserError


def register(sub) -> None:
    p = command(
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
        predict,
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
    progress_option(p)


def predict(args) -> None:
    if bool(args.inputs) == bool(args.input_list):
        raise UserError("give either INPUT... or --input-list LIST --out OUT.parquet")
    if args.input_list:
        _batch(args)
        return
    if args.out or args.actors:
        raise UserError("--out and --actors go with --input-list; single inputs are printed")
    import torch

    from cg_ray.predict.predictor import Predictor, format_outcome, open_checkpoint, predict_inputs

    loaded, _ = open_checkpoint(args.checkpoint)
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


def _batch(args) -> None:
    from cg_ray.predict.batch import batch_predict

    if not args.out:
        raise UserError("--input-list needs --out OUT.parquet")
    if args.views is not None:
        raise UserError("--views goes with single inputs; batch prediction takes the checkpoint's eval.views")
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
