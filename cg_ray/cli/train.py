"""`cg-ray train`: a training run."""

from __future__ import annotations

import json

from cg_ray.cli.common import command, config_options, progress_option, resume_option, write_json


def register(sub) -> None:
    p = command(
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
cg-ray train --config configs/paper/table3_tla_all.yaml --set data.path=s3://work/cg68k train.num_workers=4
cg-ray train --config configs/demo.yaml --resume
cg-ray train --config configs/demo.yaml --resume auto""",
        train,
    )
    config_options(p)
    p.add_argument(
        "--metrics-out",
        metavar="PATH",
        help="write the final metrics and the best checkpoint's path as JSON here",
    )
    resume_option(
        p,
        "continue run.name from its latest checkpoint: --resume (= must) is an error if "
        "there is none; --resume auto starts a new run then (so does no --resume: a run folder "
        "with checkpoints is always continued)",
    )
    p.add_argument(
        "--register-as", metavar="NAME", help="register the best checkpoint in the MLflow model registry"
    )
    progress_option(p)


def train(args) -> None:
    from cg_ray.config import load_config
    from cg_ray.runs import train

    overrides = list(args.set) + ([f"run.register_as={args.register_as}"] if args.register_as else [])
    cfg = load_config(args.config, overrides)
    result = train(cfg, resume=args.resume)
    write_json(args.metrics_out, result)
    print(
        json.dumps(
            {k: v for k, v in result.items() if k.endswith("top1") or k in ("checkpoint", "registered_model")}
        )
    )
