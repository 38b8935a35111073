"""Clip decoding: a folder of frames or a video file -> T evenly spaced RGB frames.

Every source is a local path or a URI that cg_ray.storage understands, so the same code reads a
CityGuessr68k frame folder on disk, an mp4 on S3, or a clip written by the synthetic world.
"""

from __future__ import annotations

import io
import os

import av
import numpy as np
from PIL import Image

from cg_ray import storage
from cg_ray.errors import UserError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class ClipError(UserError):
    """A clip that cannot be decoded; the message names the source and the reason."""


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """(T,) int64 indices spread evenly over [0, num_available - 1], first and last included.

    When the clip is shorter than T, indices repeat, so a short clip still gives T frames.
    """
    if num_available <= 0:
        raise ValueError(f"cannot sample {num_frames} frames from {num_available}")
    return np.round(np.linspace(0, num_available - 1, num_frames)).astype(np.int64)


def is_frame_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in FRAME_SUFFIXES


def frame_sort_key(name: str) -> tuple:
    """Numeric stems first, in numeric order (2.jpg before 10.jpg), then the rest by name."""
    stem = os.path.splitext(os.path.basename(name))[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def list_frames(folder: str) -> list[str]:
    """The JPEG/PNG frames of a frame folder (local path or URI), in playing order."""
    infos = [i for i in storage.list_dir(folder) if i.is_file and is_frame_name(i.base_name)]
    infos.sort(key=lambda info: frame_sort_key(info.base_name))
    return [storage.uri_of(folder, info.path) for info in infos]


def _resize(image: Image.Image, size: int) -> np.ndarray:
    """PIL image -> (size, size, 3) uint8. Aspect ratio is not kept: the model wants squares."""
    return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.uint8)


def _decode_frame(path: str, size: int) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(storage.read_bytes(path))) as image:
            # draft() lets libjpeg decode at 1/2, 1/4 or 1/8 scale (never below `size`), which is
            # most of the speed-up when 1280x720 frames become 224x224; PNGs ignore it.
            image.draft("RGB", (size, size))
            return _resize(image, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ClipError(f"cannot decode frame '{path}': {exc}") from None


def _decode_frames(folder: str, num_frames: int, size: int) -> np.ndarray:
    frames = list_frames(folder)
    if not frames:
        raise ClipError(f"clip '{folder}' has no frames (no .jpg/.jpeg/.png files)")
    # Only the sampled frames are read: a CityGuessr clip has 100 frames and we want 16.
    picks = sample_indices(len(frames), num_frames)
    decoded = {i: _decode_frame(frames[i], size) for i in sorted(set(picks.tolist()))}
    return np.stack([decoded[i] for i in picks.tolist()])


def _open_video(source: str):
    """An open PyAV container; URIs are read through pyarrow's random-access file."""
    if storage.is_uri(source) and not source.startswith("file://"):
        fs, path = storage.filesystem(source)
        return av.open(fs.open_input_file(path))
    return av.open(storage.filesystem(source)[1])


def _video_frames(source: str, size: int, wanted: set[int] | None):
    """Yield (index, (size, size, 3) uint8) for decoded frames whose index is wanted (all if None)."""
    with _open_video(source) as container:
        if not container.streams.video:
            raise ClipError(f"video '{source}' has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        last = max(wanted) if wanted else None
        for index, frame in enumerate(container.decode(stream)):
            if wanted is None or index in wanted:
                yield index, _resize(Image.fromarray(frame.to_ndarray(format="rgb24")), size)
            if last is not None and index >= last:
                break  # the rest of the video is not needed


def _decode_video(source: str, num_frames: int, size: int) -> np.ndarray:
    try:
        known = count_frames(source, decode_if_unknown=False)
        if known > 0:
            picks = sample_indices(known, num_frames)
            got = dict(_video_frames(source, size, set(picks.tolist())))
            if len(got) == len(set(picks.tolist())):
                return np.stack([got[i] for i in picks.tolist()])
            # The container's frame count was wrong (it happens with edited files): fall through.
        frames = [f for _, f in _video_frames(source, size, None)]
    except av.FFmpegError as exc:
        raise ClipError(f"cannot decode video '{source}': {exc}") from None
    except OSError as exc:
        raise ClipError(f"cannot read video '{source}': {exc}") from None
    if not frames:
        raise ClipError(f"video '{source}' has no frames")
    return np.stack([frames[i] for i in sample_indices(len(frames), num_frames).tolist()])


def count_frames(source: str, decode_if_unknown: bool = True) -> int:
    """Frames in a video: the stream's own count, else (if asked) the packets demuxed.

    Raises ClipError for a file PyAV cannot open or one without a video stream.
    """
    try:
        with _open_video(source) as container:
            if not container.streams.video:
                raise ClipError(f"video '{source}' has no video stream")
            stream = container.streams.video[0]
            if stream.frames > 0 or not decode_if_unknown:
                return int(stream.frames)
            # Counting packets needs no decoding; one packet holds one frame for video codecs.
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except av.FFmpegError as exc:
        raise ClipError(f"cannot open video '{source}': {exc}") from None
    except OSError as exc:
        raise ClipError(f"cannot read video '{source}': {exc}") from None


def decode_clip(source: str, num_frames: int, size: int) -> np.ndarray:
    """A frames folder or a video file -> (T, size, size, 3) uint8 RGB, T = num_frames.

    Frames are spread evenly over the whole clip; a clip shorter than T repeats frames.
    Raises ClipError (naming the source) when the clip is missing, empty or corrupt.
    """
    try:
        if storage.is_dir(source):
            return _decode_frames(source, num_frames, size)
        if not storage.exists(source):
            raise ClipError(f"clip '{source}' does not exist")
    except ClipError:
        raise
    except OSError as exc:  # storage errors: permissions, network, bad credentials
        raise ClipError(f"cannot read clip '{source}': {exc}") from None
    return _decode_video(source, num_frames, size)
