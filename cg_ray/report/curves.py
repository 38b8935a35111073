"""The learning curves of a training run as one PNG: loss terms and top-1 per level by epoch."""

from __future__ import annotations

import io

from cg_ray.report.plots import _figure
from cg_ray.taxonomy import LEVELS

LOSSES = (
    "train_loss",
    *(f"train_{level}" for level in LEVELS),
    "train_scene",
    "train_tla",
    "train_consistency",
)
ACCURACY = tuple(f"{level}_top1" for level in LEVELS)


def learning_curves_png(history: dict[str, list[tuple[int, float]]], title: str) -> bytes:
    """`history`: metric name -> [(epoch, value)] as MLflow holds it. Two panels side by side:
    the training loss terms, and the val top-1 of each level in percent."""
    fig = _figure(1200, 450, layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, names, ylabel in ((ax_loss, LOSSES, "training loss"), (ax_acc, ACCURACY, "val top-1 (%)")):
        for name in names:
            points = sorted(history.get(name, []))
            if points:
                epochs, values = zip(*points)
                style = {"linewidth": 2.5} if name in ("train_loss", "city_top1") else {}
                ax.plot([e + 1 for e in epochs], values, marker="o", label=name, **style)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
