"""Video backbones behind one registry: name -> builder(config, num_frames, image_size, arch).

A builder returns a module mapping normalized clips (B, T, 3, H, W) float to a clip feature
(B, D), with `feature_dim`, an `arch()` dict that rebuilds the same architecture without
fetching weights (checkpoints keep it, so a model trained from a hub id reloads offline), and
the wrapped transformers model as `.encoder`. Each builder honours `pretrained` (a hub id or a
local save_pretrained folder: one code path), `arch` and the from-scratch fields of the config.
Nothing else branches on the backbone's name.

    videomae      VideoMAE (the paper's encoder); mean of the last hidden state over tokens
    vit, mae      an image ViT / MAE encoder on one frame of the clip (`frame`); mean of the
                  patch tokens (paper Table 2 uses MAE)
    timesformer   TimeSformer, divided space-time attention; its CLS token (paper Table 5)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cg_ray.config import BackboneConfig
from cg_ray.errors import UserError


class Backbone(nn.Module):
    """A clip encoder: (B, T, 3, H, W) normalized float -> (B, feature_dim). Each one also has
    `arch() -> dict`, what rebuilds the same architecture (saved with every checkpoint)."""

    feature_dim: int


Builder = Callable[[BackboneConfig, int, int, dict | None], Backbone]
BACKBONES: dict[str, Builder] = {}
FRAMES = ("first", "middle", "last", "random")


def register(name: str):
    def wrap(builder):
        BACKBONES[name] = builder
        return builder

    return wrap


def build_backbone(
    cfg: BackboneConfig, num_frames: int, image_size: int, arch: dict | None = None
) -> Backbone:
    """The backbone a config names; with `arch` (from a checkpoint) the same architecture with
    fresh weights, to be overwritten by the checkpoint's."""
    if cfg.name not in BACKBONES:
        raise UserError(f"unknown backbone '{cfg.name}' (known: {', '.join(sorted(BACKBONES))})")
    return BACKBONES[cfg.name](cfg, num_frames, image_size, arch)


def _hf_encoder(
    model_cls,
    config_cls,
    cfg: BackboneConfig,
    arch: dict | None,
    scratch: dict,
    sdpa: bool = True,
    config_kwargs: dict | None = None,
    model_kwargs: dict | None = None,
) -> Any:
    """A transformers encoder: from `arch`, else from `cfg.pretrained`, else from the `scratch`
    config values. `config_kwargs` override config fields on every path; `model_kwargs` go to
    the model's constructor; `sdpa`: whether the model takes cfg.attn_implementation."""
    config_kwargs, model_kwargs = config_kwargs or {}, model_kwargs or {}
    attn = {"attn_implementation": cfg.attn_implementation} if sdpa else {}
    if arch is not None:
        config = config_cls.from_dict({**arch, **config_kwargs})
    elif cfg.pretrained:
        try:
            # A hub id or a local directory written by save_pretrained: the same call loads both.
            # Loading the encoder out of a *ForVideoClassification / *ForPreTraining checkpoint
            # is intended.
            return model_cls.from_pretrained(cfg.pretrained, **attn, **config_kwargs, **model_kwargs)
        except (OSError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            what = model_cls.__name__.removesuffix("Model")  # VideoMAE, ViT, ViTMAE, Timesformer
            raise UserError(f"cannot load {what} weights from '{cfg.pretrained}': {first}") from None
    else:
        if scratch["image_size"] % scratch["patch_size"]:
            raise UserError(
                f"data.image_size={scratch['image_size']} must be a multiple of "
                f"model.backbone.patch_size={scratch['patch_size']}"
            )
        config = config_cls(**scratch, **config_kwargs)
    if sdpa:
        config._attn_implementation = cfg.attn_implementation
    return model_cls(config, **model_kwargs)


class _DropPath:
    """A forward hook giving a transformers encoder layer stochastic depth: in training, each
    clip skips the whole layer (output = input) with probability `rate`, and the kept layers'
    residual updates are scaled by 1 / (1 - rate). A hook, not a wrapper, so parameter names
    (and checkpoints) stay those of the plain encoder."""

    def __init__(self, rate: float):
        self.rate = rate

    def __call__(self, module: nn.Module, args: tuple, output):
        if not module.training or self.rate <= 0:
            return None
        hidden = output[0] if isinstance(output, tuple) else output
        x = args[0]
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep) / keep
        hidden = x + (hidden - x) * mask
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


def encoder_layers(encoder: Any) -> nn.ModuleList:
    """The transformer layers of a transformers encoder (VideoMAE: encoder.layer; ViT and
    ViTMAE in transformers 5: layers)."""
    for path in ("encoder.layer", "layers", "encoder.layers"):
        module: object = encoder
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.ModuleList):
            return module
    raise TypeError(f"{type(encoder).__name__}: no transformer layer list found")


def add_drop_path(layers: nn.ModuleList, rate: float) -> None:
    """Stochastic depth on `layers` at rates rising linearly from 0 (first) to `rate` (last), as
    timm's and VideoMAE's drop path schedule. transformers' VideoMAE and ViT have none of their
    own; where they drop each of a block's two residual branches, this drops the block."""
    for i, layer in enumerate(layers):
        layer_rate = rate * i / max(len(layers) - 1, 1)
        if layer_rate > 0:
            layer.register_forward_hook(_DropPath(layer_rate))


def _vit_fields(cfg: BackboneConfig, image_size: int) -> dict:
    """The from-scratch config values every ViT-like encoder shares."""
    return dict(
        image_size=image_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
    )


# -- VideoMAE --------------------------------------------------------------------------------------


class VideoMAEEncoder(Backbone):
    """VideoMAE (transformers) encoder; the clip feature is the mean of the last hidden state
    over tokens, as in the official CityGuessr code."""

    def __init__(self, encoder: Any):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = encoder.config.hidden_size

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, T, 3, H, W) normalized float -> (B, D)."""
        return self.encoder(pixel_values=video).last_hidden_state.mean(dim=1)

    def arch(self) -> dict:
        return self.encoder.config.to_dict()


@register("videomae")
def build_videomae(
    cfg: BackboneConfig, num_frames: int, image_size: int, arch: dict | None = None
) -> Backbone:
    from transformers import VideoMAEConfig, VideoMAEModel

    if arch is None and not cfg.pretrained and (num_frames % cfg.tubelet_size or image_size % cfg.patch_size):
        raise UserError(
            f"data.num_frames={num_frames} must be a multiple of tubelet_size={cfg.tubelet_size} "
            f"and data.image_size={image_size} of patch_size={cfg.patch_size}"
        )
    encoder = _hf_encoder(
        VideoMAEModel,
        VideoMAEConfig,
        cfg,
        arch,
        dict(
            _vit_fields(cfg, image_size),
            num_frames=num_frames,
            tubelet_size=cfg.tubelet_size,
            use_mean_pooling=True,
        ),
    )
    add_drop_path(encoder_layers(encoder), cfg.drop_path)
    got = (encoder.config.num_frames, encoder.config.image_size)
    if arch is None and cfg.pretrained and got != (num_frames, image_size):
        raise UserError(
            f"pretrained VideoMAE '{cfg.pretrained}' expects {got[0]} frames at {got[1]}px, "
            f"but data.num_frames={num_frames} and data.image_size={image_size}: set them to match"
        )
    return VideoMAEEncoder(encoder)


# -- image encoders on one frame ------------------------------------------------------------------


class FrameEncoder(Backbone):
    """An image ViT (or MAE encoder) applied to one frame of each clip.

    `frame`: first, middle (index T // 2), last, or random: a random frame per clip while
    training and the middle one in eval mode, so that evaluation is repeatable.
    The feature is the mean of the patch tokens (the MAE paper's global pooling).
    """

    def __init__(self, encoder: Any, frame: str):
        super().__init__()
        if frame not in FRAMES:
            raise UserError(f"config model.backbone.frame={frame!r}: must be one of {', '.join(FRAMES)}")
        self.encoder, self.frame = encoder, frame
        self.feature_dim = encoder.config.hidden_size

    def frame_index(self, batch: int, frames: int, device) -> torch.Tensor:
        """(B,) index of the frame each clip shows the encoder."""
        if self.frame == "random" and self.training:
            return torch.randint(frames, (batch,), device=device)
        fixed = {"first": 0, "middle": frames // 2, "last": frames - 1, "random": frames // 2}
        return torch.full((batch,), fixed[self.frame], dtype=torch.long, device=device)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, T, 3, H, W) normalized float -> (B, D)."""
        b, t = video.shape[:2]
        image = video[torch.arange(b, device=video.device), self.frame_index(b, t, video.device)]
        resize = image.shape[-1] != self.encoder.config.image_size
        hidden = self.encoder(pixel_values=image, interpolate_pos_encoding=resize).last_hidden_state
        return hidden[:, 1:].mean(dim=1)  # token 0 is CLS

    def arch(self) -> dict:
        return self.encoder.config.to_dict()


@register("vit")
def build_vit(cfg: BackboneConfig, num_frames: int, image_size: int, arch: dict | None = None) -> Backbone:
    from transformers import ViTConfig, ViTModel

    encoder = _hf_encoder(
        ViTModel,
        ViTConfig,
        cfg,
        arch,
        _vit_fields(cfg, image_size),
        model_kwargs={"add_pooling_layer": False},
    )
    add_drop_path(encoder_layers(encoder), cfg.drop_path)
    return FrameEncoder(encoder, cfg.frame)


@register("mae")
def build_mae(cfg: BackboneConfig, num_frames: int, image_size: int, arch: dict | None = None) -> Backbone:
    from transformers import ViTMAEConfig, ViTMAEModel

    # mask_ratio 0: the encoder sees every patch (MAE's pre-training masks 75% of them).
    encoder = _hf_encoder(
        ViTMAEModel, ViTMAEConfig, cfg, arch, _vit_fields(cfg, image_size), config_kwargs={"mask_ratio": 0.0}
    )
    add_drop_path(encoder_layers(encoder), cfg.drop_path)
    return FrameEncoder(encoder, cfg.frame)


# -- TimeSformer ----------------------------------------------------------------------------------


class TimesformerEncoder(Backbone):
    """TimeSformer (divided space-time attention); the clip feature is its CLS token, as its
    own video classifier reads it."""

    def __init__(self, encoder: Any):
        super().__init__()
        self.encoder = encoder
        self.feature_dim = encoder.config.hidden_size

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, T, 3, H, W) normalized float -> (B, D)."""
        return self.encoder(pixel_values=video).last_hidden_state[:, 0]

    def arch(self) -> dict:
        return self.encoder.config.to_dict()


def fit_timesformer(encoder: Any, num_frames: int, image_size: int) -> None:
    """Resize a loaded TimeSformer's time and position embeddings to T frames at S px (linear in
    time, bicubic in space), so a model pretrained on 8 frames trains on the paper's 16; the
    config follows, so `arch()` rebuilds the resized shapes."""
    config, emb = encoder.config, encoder.embeddings
    if num_frames != config.num_frames and hasattr(emb, "time_embeddings"):
        time = emb.time_embeddings.data.transpose(1, 2)  # (1, D, T0)
        resized = F.interpolate(time, size=num_frames, mode="linear", align_corners=True)
        emb.time_embeddings = nn.Parameter(resized.transpose(1, 2).contiguous())
        config.num_frames = num_frames
    if image_size != config.image_size:
        grid0, grid = config.image_size // config.patch_size, image_size // config.patch_size
        cls, patches = emb.position_embeddings.data[:, :1], emb.position_embeddings.data[:, 1:]
        patches = patches.reshape(1, grid0, grid0, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
        emb.position_embeddings = nn.Parameter(
            torch.cat([cls, patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1).contiguous()
        )
        config.image_size = image_size


@register("timesformer")
def build_timesformer(
    cfg: BackboneConfig, num_frames: int, image_size: int, arch: dict | None = None
) -> Backbone:
    from transformers import TimesformerConfig, TimesformerModel

    # TimeSformer has a drop path of its own, but transformers 5.24 types its config's
    # drop_path_rate as int and refuses 0.1: the layer hook serves it as the others.
    encoder = _hf_encoder(
        TimesformerModel,
        TimesformerConfig,
        cfg,
        arch,
        dict(_vit_fields(cfg, image_size), num_frames=num_frames),
        sdpa=False,
    )
    add_drop_path(encoder_layers(encoder), cfg.drop_path)
    if arch is None and cfg.pretrained:
        if image_size % encoder.config.patch_size:
            raise UserError(
                f"data.image_size={image_size} must be a multiple of the pretrained "
                f"TimeSformer's patch size {encoder.config.patch_size}"
            )
        fit_timesformer(encoder, num_frames, image_size)
    return TimesformerEncoder(encoder)
