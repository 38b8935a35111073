"""Optimizer and learning-rate schedule: Adam at a constant lr (the paper) by default, or a
linear warm-up followed by a cosine decay; AdamW with weight decay and VideoMAE's layer-wise lr
decay for fine-tuning recipes.

Parameter groups (when weight_decay > 0 or layer_decay < 1; otherwise one group, as the paper):
  - layer ids as VideoMAE's fine-tuning code: backbone embeddings 0, backbone layer i (0-based)
    i + 1, everything else (final norms, heads, SCA, FFNs) L + 1; a group's lr is
    lr * layer_decay ** (L + 1 - id), so the heads train at lr and the embeddings at
    lr * layer_decay ** (L + 1);
  - no weight decay on biases, norms (1-d parameters), position/time embeddings, class tokens
    and what a module lists in `no_weight_decay_names` (the graph head's node embeddings).
"""

from __future__ import annotations

import math
import re

import torch

from cg_ray.config import OptimConfig

EMBEDDING_NAMES = ("position_embeddings", "time_embeddings", "cls_token", "mask_token")
_LAYER = re.compile(r"\.layers?\.(\d+)\.")  # VideoMAE: encoder.layer.i; ViT: layers.i


def layer_id(name: str, num_layers: int) -> int:
    """VideoMAE's layer id of a parameter of the CityGuessr network (see the module docstring)."""
    if not name.startswith("backbone."):
        return num_layers + 1
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if ".embeddings." in name else num_layers + 1


def _no_decay_names(model: torch.nn.Module) -> set[str]:
    names = set()
    for prefix, module in model.named_modules():
        for name in getattr(module, "no_weight_decay_names", ()):
            names.add(f"{prefix}.{name}" if prefix else name)
    return names


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """The optimizer's parameter groups: one per (layer id, decayed or not), each with its lr,
    weight_decay and the `lr_scale` and `layer_id` it came from."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    num_layers = 1 + max(
        (int(m.group(1)) for n, _ in named if n.startswith("backbone.") for m in [_LAYER.search(n)] if m),
        default=-1,
    )
    skip = _no_decay_names(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in named:
        no_decay = (
            param.ndim <= 1
            or name.endswith(".bias")
            or name in skip
            or any(k in name for k in EMBEDDING_NAMES)
        )
        layer = layer_id(name, num_layers)
        scale = cfg.layer_decay ** (num_layers + 1 - layer)
        group = groups.setdefault(
            (layer, no_decay),
            {
                "params": [],
                "lr": cfg.lr * scale,
                "lr_scale": scale,
                "layer_id": layer,
                "weight_decay": 0.0 if no_decay else cfg.weight_decay,
            },
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Adam or AdamW; one group when nothing needs groups (so older checkpoints still resume)."""
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.name]
    if cfg.weight_decay == 0 and cfg.layer_decay == 1.0:
        return cls(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return cls(param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Multiplier of cfg.lr at optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_schedule(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, total_steps))
