"""Video backbones behind one registry: name -> builder(config, num_frames, image_size).

A builder returns a module mapping normalized clips (B, T, 3, H, W) float to a clip feature
(B, D), with `feature_dim` and an `arch()` dict that rebuilds the same architecture without
fetching weights (checkpoints keep it, so a model trained from a hub id reloads offline). Later backbones (image MAE per frame, TimeSformer) register
here; nothing else branches on the backbone's name.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from cg_ray.config import BackboneConfig
from cg_ray.errors import UserError

Builder = Callable[[BackboneConfig, int, int, Optional[dict]], nn.Module]
BACKBONES: dict[str, Builder] = {}


def register(name: str):
    def wrap(builder):
        BACKBONES[name] = builder
        return builder

    return wrap


def build_backbone(cfg: BackboneConfig, num_frames: int, image_size: int,
                   arch: Optional[dict] = None) -> nn.Module:
    """The backbone a config names; with `arch` (from a checkpoint) the same architecture with
    fresh weights, to be overwritten by the checkpoint's."""
    if cfg.name not in BACKBONES:
        raise UserError(f"unknown backbone '{cfg.name}' (known: {', '.join(sorted(BACKBONES))})")
    return BACKBONES[cfg.name](cfg, num_frames, image_size, arch)


class VideoMAEEncoder(nn.Module):
    """VideoMAE (transformers) encoder; the clip feature is the mean of the last hidden state
    over tokens, as in the official CityGuessr code."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = encoder.config.hidden_size

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, T, 3, H, W) normalized float -> (B, D)."""
        return self.encoder(pixel_values=video).last_hidden_state.mean(dim=1)

    def arch(self) -> dict:
        return self.encoder.config.to_dict()


@register("videomae")
def build_videomae(cfg: BackboneConfig, num_frames: int, image_size: int,
                   arch: Optional[dict] = None) -> nn.Module:
    from transformers import VideoMAEConfig, VideoMAEModel

    if arch is not None:
        config = VideoMAEConfig.from_dict(arch)
        config._attn_implementation = cfg.attn_implementation
        return VideoMAEEncoder(VideoMAEModel(config))
    if cfg.pretrained:
        try:
            # A hub id or a local directory written by save_pretrained: the same call loads both.
            # Loading the encoder out of a VideoMAEForVideoClassification checkpoint is intended.
            encoder = VideoMAEModel.from_pretrained(
                cfg.pretrained, attn_implementation=cfg.attn_implementation
            )
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot load VideoMAE weights from '{cfg.pretrained}': {first}") from None
        got = (encoder.config.num_frames, encoder.config.image_size)
        if got != (num_frames, image_size):
            raise UserError(
                f"pretrained VideoMAE '{cfg.pretrained}' expects {got[0]} frames at {got[1]}px, "
                f"but data.num_frames={num_frames} and data.image_size={image_size}: set them to match"
            )
    else:
        if num_frames % cfg.tubelet_size or image_size % cfg.patch_size:
            raise UserError(
                f"data.num_frames={num_frames} must be a multiple of tubelet_size={cfg.tubelet_size} "
                f"and data.image_size={image_size} of patch_size={cfg.patch_size}"
            )
        config = VideoMAEConfig(
            image_size=image_size, num_frames=num_frames, patch_size=cfg.patch_size,
            tubelet_size=cfg.tubelet_size, hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size, use_mean_pooling=True,
        )
        config._attn_implementation = cfg.attn_implementation
        encoder = VideoMAEModel(config)
    return VideoMAEEncoder(encoder)
