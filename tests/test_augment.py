"""Clip augmentation on uint8 batches: shape, dtype, range, one draw per clip, seeds, no flip."""

import pytest
import torch

from cg_ray.config import AugmentConfig
from cg_ray.data.augment import OPS, augment_batch, augment_clip, crop_box


def video(batch=3, frames=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, size, size, 3), generator=g, dtype=torch.uint8)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_keeps_dtype_shape_and_range_and_changes_the_clips():
    cfg = AugmentConfig(enabled=True)
    x = video()
    before = x.clone()
    out = augment_batch(x, cfg, gen())
    assert out is x  # in place: no second copy of the batch
    assert out.dtype == torch.uint8 and out.shape == before.shape
    assert int(out.min()) >= 0 and int(out.max()) <= 255
    assert all(not torch.equal(out[b], before[b]) for b in range(3))


def test_seeded_draws_repeat_and_differ_between_seeds():
    cfg = AugmentConfig(enabled=True)
    a = augment_batch(video(), cfg, gen(5))
    b = augment_batch(video(), cfg, gen(5))
    c = augment_batch(video(), cfg, gen(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_every_frame_of_a_clip_gets_the_same_transform():
    # A clip of four identical frames stays four identical frames.
    frame = video(1, 1, seed=3)[0, 0]
    clip = frame.expand(4, *frame.shape).contiguous().unsqueeze(0)
    out = augment_batch(clip, AugmentConfig(enabled=True, randaug_n=3), gen(1))
    assert all(torch.equal(out[0, t], out[0, 0]) for t in range(4))
    assert not torch.equal(out[0, 0], frame)


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_randaugment_operation_keeps_uint8_clips(name):
    clip = video(1)[0].permute(0, 3, 1, 2)
    for level, sign in ((0.0, 1.0), (0.7, -1.0), (1.0, 1.0)):
        out = OPS[name](clip, level, sign)
        assert out.dtype == torch.uint8 and out.shape == clip.shape


def test_crop_box_stays_inside_the_frame_and_covers_the_scale():
    g = gen(2)
    for _ in range(50):
        top, left, h, w = crop_box(48, 64, (0.3, 1.0), (0.75, 4 / 3), g)
        assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
        assert 0.25 * 48 * 64 <= h * w <= 48 * 64


def test_no_horizontal_flip_unless_asked():
    # Only the flip: an asymmetric clip comes out mirrored for some clips with hflip on, never
    # with it off.
    only_flip = dict(crop_scale=[1.0, 1.0], color_jitter=0.0, randaug_n=0)
    x = video(8)
    assert torch.equal(augment_batch(x.clone(), AugmentConfig(enabled=True, **only_flip), gen()), x)
    flipped = augment_batch(x.clone(), AugmentConfig(enabled=True, hflip=True, **only_flip), gen())
    mirrored = [torch.equal(flipped[b], x[b].flip(2)) for b in range(8)]
    assert any(mirrored) and not all(mirrored)


def test_refuses_float_or_channels_first_input():
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(video().float(), AugmentConfig(enabled=True), gen())
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(video().permute(0, 1, 4, 2, 3).contiguous(), AugmentConfig(enabled=True), gen())


def test_augment_clip_returns_a_new_tensor_for_one_clip():
    clip = video(1)[0].permute(0, 3, 1, 2)
    out = augment_clip(clip, AugmentConfig(enabled=True), gen())
    assert out.shape == clip.shape and out.dtype == torch.uint8


def test_views_of_a_clip_share_its_draw():
    # (B, V, T, H, W, 3): two identical views stay identical after augmentation.
    clip = video(2)
    views = torch.stack([clip, clip], dim=1)
    out = augment_batch(views, AugmentConfig(enabled=True), gen(4))
    assert out.shape == (2, 2, 4, 32, 32, 3)
    assert torch.equal(out[:, 0], out[:, 1]) and not torch.equal(out[:, 0], clip)
