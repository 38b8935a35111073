"""JPEG decoding on the consumer's device (`data.decode: gpu`).

With `data.decode=gpu` the Ray Data tasks do not decode: they hand over each packed clip's T
JPEGs as one byte string (`jpeg`) plus where each frame starts (`jpeg_offsets`), about a tenth
of the decoded pixels, so only compressed bytes cross Ray's object store. The consumer (a
training worker, evaluation, a batch-prediction actor) decodes a whole batch at once with
torchvision's nvJPEG decoder on its GPU, resizes frames that are not S x S, and gets the same
(B, T, S, S, 3) uint8 video the CPU path gives.

    resolve_decode(mode, on_gpu, packed)   'cpu' | 'gpu' for data.decode = cpu | gpu | auto
    jpeg_batch(rows, ...)                   packed rows -> bytes columns (in a Ray Data task)
    decode_video(jpeg, offsets, ...)        bytes columns -> (B, T, S, S, 3) uint8 on a device
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pyarrow as pa

from cg_ray.data.tables import scene_targets
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

log = logging.getLogger(__name__)

DECODES = ("cpu", "gpu", "auto")


def resolve_decode(mode: str, on_gpu: bool, packed: bool, say=print) -> str:
    """Where JPEGs are decoded: 'cpu' (Ray Data tasks) or 'gpu' (the consumer's device).

    'gpu' without a GPU consumer, or without packed shards to read JPEG bytes from, is a
    UserError; 'auto' picks 'gpu' when both are there and says so when it falls back."""
    if mode not in DECODES:
        raise UserError(f"config data.decode={mode!r}: must be one of {', '.join(DECODES)}")
    if mode == "cpu":
        return "cpu"
    if mode == "gpu":
        if not on_gpu:
            raise UserError(
                "data.decode=gpu needs a GPU where the model runs, and there is none "
                "(no CUDA device, or train.use_gpu=false): set data.decode=cpu or auto"
            )
        if not packed:
            raise UserError(
                "data.decode=gpu decodes packed JPEG frames and this dataset has no "
                "pack for its num_frames and image_size: run `cg-ray pack` or set "
                "data.decode=cpu"
            )
        return "gpu"
    if on_gpu and packed:
        return "gpu"
    say(
        f"data.decode=auto: {'no GPU' if not on_gpu else 'no packed shards'}; "
        f"decoding JPEGs on the CPU in Ray Data tasks"
    )
    return "cpu"


def _clip_bytes(frames: pa.Array):
    """Per clip: (its T JPEGs as one contiguous uint8 view, (T+1,) offsets into it).
    Packed frames of a clip lie back to back in the Arrow buffer: no copy is made."""
    frames = frames.combine_chunks() if isinstance(frames, pa.ChunkedArray) else frames
    offsets = frames.offsets.to_numpy()
    values = frames.values
    width = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    starts = np.frombuffer(values.buffers()[1], dtype=width)[values.offset :]
    data = values.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    for i in range(len(frames)):
        if not frames[i].is_valid:
            yield data[:0], np.zeros(1, np.int64)
            continue
        bounds = starts[offsets[i] : offsets[i + 1] + 1].astype(np.int64)
        yield data[bounds[0] : bounds[-1]], bounds - bounds[0]


def jpeg_batch(
    batch: pa.Table,
    *,
    label_ids: dict[str, dict[str, int]],
    num_frames: int,
    image_size: int,
    scene_labels: str,
    keep_ids: bool,
) -> dict[str, np.ndarray]:
    """Packed rows -> the columns of cg_ray.data.shards.decode_packed_batch, with the video
    still compressed: jpeg (B,) bytes (a clip's T JPEGs back to back), jpeg_offsets (B, T+1)
    int64 (frame t is jpeg[off[t]:off[t+1]]), valid (B,) bool; an invalid clip has b''."""
    n = batch.num_rows
    jpeg = np.empty(n, dtype=object)
    offsets = np.zeros((n, num_frames + 1), dtype=np.int64)
    valid = np.ones(n, dtype=bool)
    errors = batch.column("error").to_pylist()
    for i, (data, bounds) in enumerate(_clip_bytes(batch.column("frames"))):
        if errors[i] is not None or len(bounds) != num_frames + 1:
            valid[i], jpeg[i] = False, b""
            continue
        jpeg[i], offsets[i] = data.tobytes(), bounds
    out = {"jpeg": jpeg, "jpeg_offsets": offsets, "valid": valid}
    for level in LEVELS:
        out[level] = np.array(
            [label_ids[level][name] for name in batch.column(level).to_pylist()], dtype=np.int64
        )
    out["scene"] = scene_targets(
        batch.column("scene_soft").to_pylist(), n, scene_labels, batch.column("scene_majority").to_pylist()
    )
    if keep_ids:
        out["clip_id"] = np.array(batch.column("clip_id").to_pylist(), dtype=str)
    return out


def _frame_tensors(data, bounds) -> list:
    import torch

    with warnings.catch_warnings():  # decode_jpeg only reads; bytes are not writable
        warnings.simplefilter("ignore", UserWarning)
        buffer = torch.frombuffer(data, dtype=torch.uint8) if len(data) else None
    return [buffer[int(a) : int(b)] for a, b in zip(bounds[:-1], bounds[1:])]


def _decode(frames: list, device) -> list:
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(frames, mode=ImageReadMode.RGB, device=device)


def _to_size(image, size: int):
    """(3, H, W) uint8 -> (3, size, size) uint8 (antialiased bilinear when it must resize)."""
    import torch

    if tuple(image.shape[-2:]) == (size, size):
        return image
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round_().clamp_(0, 255).to(torch.uint8)


def decode_video(jpeg, offsets, valid, image_size: int | None = None, device="cpu"):
    """jpeg (B,) bytes, offsets (B, T+1), valid (B,) -> (video (B, T, S, S, 3) uint8 on
    `device`, valid (B,) bool numpy). All frames of the batch go to one batched decode_jpeg
    call (nvJPEG on CUDA); frames not S x S are resized (S: `image_size`, else the size of
    the first decoded frame). A clip whose bytes fail to decode becomes zeros and invalid."""
    import torch

    valid = np.asarray(valid, dtype=bool).copy()
    offsets = np.asarray(offsets)
    n, num_frames = len(valid), offsets.shape[1] - 1
    clips = [i for i in range(n) if valid[i]]
    per_clip = {i: _frame_tensors(jpeg[i], offsets[i]) for i in clips}
    decoded = {}
    if clips:
        try:
            images = _decode([f for i in clips for f in per_clip[i]], device)
            decoded = {i: images[k * num_frames : (k + 1) * num_frames] for k, i in enumerate(clips)}
        except RuntimeError:  # one damaged clip fails the batched call: find it, keep the rest
            for i in clips:
                try:
                    decoded[i] = _decode(per_clip[i], device)
                except RuntimeError as exc:
                    log.warning("skipping a clip: cannot decode its packed frames: %s", exc)
                    valid[i] = False
    if image_size is None:
        first = next(iter(decoded.values()), None)
        image_size = int(first[0].shape[-1]) if first else 1
    video = torch.zeros((n, num_frames, image_size, image_size, 3), dtype=torch.uint8, device=device)
    for i, images in decoded.items():
        frames = torch.stack([_to_size(image, image_size) for image in images])  # (T, 3, S, S)
        video[i] = frames.permute(0, 2, 3, 1)
    return video, valid
