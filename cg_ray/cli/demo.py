"""`cg-ray demo`: the whole system on one machine."""

from __future__ import annotations

from cg_ray.cli.common import command


def register(sub) -> None:
    p = command(
        sub,
        "demo",
        "synth -> prepare -> text -> train -> evaluate, all local",
        """
The whole system on one machine: a synthetic world, prepared, with text features, trained with
DDP workers on a local Ray, evaluated in three modes; everything under --out.""",
        """
cg-ray demo
cg-ray demo --out /tmp/demo --workers 1 --epochs 2""",
        demo,
    )
    p.add_argument("--out", default="demo_out", help="folder for everything the demo writes")
    p.add_argument("--workers", type=int, default=2, help="Ray Train workers")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: configs/demo.yaml's)")


def demo(args) -> None:
    from cg_ray.demo import run_demo

    run_demo(args.out, workers=args.workers, epochs=args.epochs)
