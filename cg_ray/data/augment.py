"""Training-time augmentation of uint8 clip batches, on the device where the batch lives.

    augment_batch(video, cfg, generator)   (B, T, H, W, 3) uint8, changed in place

Each clip gets one random draw of parameters, applied to all of its frames alike (a crop that
moved from frame to frame would be camera shake the data never had): a random resized crop, a
colour jitter (brightness, contrast, saturation, hue, in a random order) and a RandAugment-style
policy (`n` operations drawn from the list below, each at magnitude `m` of 10, with Gaussian
noise `mstd` on the magnitude per clip, as timm's `rand-m7-n4-mstd0.5`). The results are
written back into the batch one clip at a time, so the extra memory is one clip's worth, never a
second copy of the batch.

No horizontal flip unless `hflip` is set: a mirrored street drives on the other side and its
signs read backwards, and both are location cues. Intensity operations compute their statistics
(contrast's mean, equalize's histogram) per frame with the clip's shared parameters.

The parameters come from `generator` (a CPU torch.Generator), so a seed gives the same
augmentation on any device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from cg_ray.config import AugmentConfig

# RandAugment operations: name -> f(frames (T, 3, H, W) uint8, level in [0, 1], sign) -> frames.
# `level` is magnitude / 10; `sign` (+1 or -1) picks the direction of signed operations.
_Op = Callable[[torch.Tensor, float, float], torch.Tensor]
_BILINEAR = InterpolationMode.BILINEAR


def _affine(frames: torch.Tensor, **kwargs) -> torch.Tensor:
    args = dict(angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0])
    args.update(kwargs)
    return TF.affine(frames, interpolation=_BILINEAR, fill=0, **args)


def _shift(extent: int, level: float, sign: float) -> int:
    """Pixels of a translation: up to 45% of the frame's extent at full magnitude."""
    return int(round(sign * 0.45 * level * extent))


OPS: dict[str, _Op] = {
    "identity": lambda x, level, sign: x,
    "autocontrast": lambda x, level, sign: TF.autocontrast(x),
    "equalize": lambda x, level, sign: TF.equalize(x),
    "rotate": lambda x, level, sign: _affine(x, angle=sign * 30.0 * level),
    "solarize": lambda x, level, sign: TF.solarize(x, threshold=float(round(255 * (1 - level)))),
    "posterize": lambda x, level, sign: TF.posterize(x, bits=max(1, 8 - int(round(4 * level)))),
    "color": lambda x, level, sign: TF.adjust_saturation(x, 1.0 + sign * 0.9 * level),
    "contrast": lambda x, level, sign: TF.adjust_contrast(x, 1.0 + sign * 0.9 * level),
    "brightness": lambda x, level, sign: TF.adjust_brightness(x, 1.0 + sign * 0.9 * level),
    "sharpness": lambda x, level, sign: TF.adjust_sharpness(x, 1.0 + sign * 0.9 * level),
    "shear_x": lambda x, level, sign: _affine(x, shear=[math.degrees(math.atan(sign * 0.3 * level)), 0.0]),
    "shear_y": lambda x, level, sign: _affine(x, shear=[0.0, math.degrees(math.atan(sign * 0.3 * level))]),
    "translate_x": lambda x, level, sign: _affine(x, translate=[_shift(x.shape[-1], level, sign), 0]),
    "translate_y": lambda x, level, sign: _affine(x, translate=[0, _shift(x.shape[-2], level, sign)]),
}


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def crop_box(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop covering a `scale` fraction of the area with aspect
    ratio in `ratio` (log-uniform), as torchvision's RandomResizedCrop; the whole frame when ten
    tries fail."""
    area = height * width
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    return 0, 0, height, width


def _jitter(frames: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s], hue in [-s/4, s/4] (at
    most 0.5), applied in a random order."""
    hue = min(strength / 4, 0.5)
    factors = [_uniform(generator, max(0.0, 1 - strength), 1 + strength) for _ in range(3)]
    shift = _uniform(generator, -hue, hue)
    steps = [
        lambda x: TF.adjust_brightness(x, factors[0]),
        lambda x: TF.adjust_contrast(x, factors[1]),
        lambda x: TF.adjust_saturation(x, factors[2]),
        lambda x: TF.adjust_hue(x, shift) if hue > 0 else x,
    ]
    for i in torch.randperm(4, generator=generator).tolist():
        frames = steps[i](frames)
    return frames


def _rand_augment(frames: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    names = sorted(OPS)
    for _ in range(cfg.randaug_n):
        name = names[int(torch.randint(len(names), (), generator=generator))]
        magnitude = cfg.randaug_m + cfg.randaug_mstd * float(torch.randn((), generator=generator))
        level = min(max(magnitude, 0.0), 10.0) / 10.0
        sign = 1.0 if float(torch.rand((), generator=generator)) < 0.5 else -1.0
        frames = OPS[name](frames, level, sign)
    return frames


def augment_clip(frames: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """One clip (T, 3, H, W) uint8 -> a new (T, 3, H, W) uint8 tensor, one draw for all frames."""
    height, width = frames.shape[-2:]
    if tuple(cfg.crop_scale) != (1.0, 1.0):
        top, left, h, w = crop_box(height, width, tuple(cfg.crop_scale), tuple(cfg.crop_ratio), generator)
        frames = TF.resized_crop(
            frames, top, left, h, w, [height, width], interpolation=_BILINEAR, antialias=True
        )
    if cfg.color_jitter > 0:
        frames = _jitter(frames, cfg.color_jitter, generator)
    if cfg.randaug_n > 0:
        frames = _rand_augment(frames, cfg, generator)
    if cfg.hflip and float(torch.rand((), generator=generator)) < 0.5:
        frames = TF.horizontal_flip(frames)
    return frames


def augment_batch(video: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augment a batch (B, T, H, W, 3) uint8 in place, clip by clip, and return it. Views of a
    clip ((B, V, T, H, W, 3): bidirectional, multi-view) share the clip's one draw."""
    if video.dtype != torch.uint8 or video.dim() < 5 or video.shape[-1] != 3:
        raise ValueError(
            f"augment_batch expects (B, T, H, W, 3) uint8, got {tuple(video.shape)} {video.dtype}"
        )
    for b in range(video.shape[0]):
        frames = video[b].reshape(-1, *video.shape[-3:])  # (T', H, W, 3), a view when contiguous
        out = augment_clip(frames.permute(0, 3, 1, 2), cfg, generator).permute(0, 2, 3, 1)
        video[b].copy_(out.reshape(video[b].shape))
    return video
