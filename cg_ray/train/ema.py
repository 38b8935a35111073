"""An exponential moving average (EMA) of a model's weights, kept beside the live model.

    ema = WeightEMA(model, decay=0.9999)
    ... after every optimizer step: ema.update(model)
    evaluate ema.module; checkpoint ema.state_dict() next to the live weights

With `warmup`, the decay of update k is min(decay, (1 + k) / (10 + k)) (TensorFlow's
ExponentialMovingAverage with num_updates): the average follows the live weights closely at
the start instead of remembering the random initialisation for 1 / (1 - decay) steps. Buffers
that are not floating point (counters) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s weights (the bare module, not DDP's wrapper)."""
        d = self.current_decay()
        live = model.state_dict()
        for name, avg in self.module.state_dict().items():
            value = live[name].detach()
            if avg.is_floating_point():
                avg.lerp_(value.to(avg.dtype), 1.0 - d)
            else:
                avg.copy_(value)
        self.updates += 1

    def to(self, device: torch.device) -> WeightEMA:
        self.module.to(device)
        return self

    def state_dict(self) -> dict:
        return {
            "model": self.module.state_dict(),
            "updates": self.updates,
            "decay": self.decay,
            "warmup": self.warmup,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["model"])
        self.updates = int(state["updates"])


def build_ema(model: nn.Module, cfg) -> WeightEMA | None:
    """The EMA `cfg` (train.ema) asks for, of `model` as it is now; None when it is off."""
    return WeightEMA(model, cfg.decay, cfg.warmup) if cfg.enabled else None
