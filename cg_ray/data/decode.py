"""Clip decoding: a folder of frames or a video file -> T evenly spaced RGB frames.

Every source is a local path or a URI that cg_ray.storage understands, so the same code reads a
CityGuessr68k frame folder on disk, an mp4 on S3, or a clip written by the synthetic world.
"""

from __future__ import annotations

import bisect
import io
import os

import av
import numpy as np
from PIL import Image

try:  # libjpeg-turbo with DCT-domain downscaling, faster than PIL; PIL stands in without it
    import simplejpeg
except ImportError:  # pragma: no cover
    simplejpeg = None

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


def decode_jpeg_at(data: bytes, size: int) -> np.ndarray:
    """JPEG bytes -> (size, size, 3) uint8, decoded at the smallest DCT scale (1/2, 1/4, 1/8) that
    stays >= size: most of the speed-up when a 1280x720 frame becomes 224x224."""
    if simplejpeg is not None:
        pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=size, min_width=size)
        return _resize(Image.fromarray(pixels), size)
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (size, size))
        return _resize(image, size)


def _decode_frame(path: str, size: int) -> np.ndarray:
    try:
        data = storage.read_bytes(path)
        if data[:3] == b"\xff\xd8\xff":  # JPEG magic, whatever the file is called
            return decode_jpeg_at(data, size)
        with Image.open(io.BytesIO(data)) as image:  # PNG and anything else PIL reads
            return _resize(image, size)
    except FileNotFoundError:
        raise ClipError(f"frame '{path}' does not exist") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ClipError(f"cannot decode frame '{path}': {exc}") from None


def _check_length(source: str, available: int, min_frames: int) -> None:
    if available == 0:
        raise ClipError(f"clip '{source}' has no frames (no .jpg/.jpeg/.png files)")
    if available < min_frames:
        raise ClipError(f"clip '{source}' has {available} frames, fewer than the {min_frames} "
                        f"required (min_frames)")


def _decode_frame_files(source: str, frames: list[str], num_frames: int, size: int,
                        min_frames: int) -> np.ndarray:
    _check_length(source, len(frames), min_frames)
    # Only the sampled frames are read: a CityGuessr clip has 100 frames and we want 16.
    picks = sample_indices(len(frames), num_frames)
    decoded = {i: _decode_frame(frames[i], size) for i in sorted(set(picks.tolist()))}
    return np.stack([decoded[i] for i in picks.tolist()])


def _open_video(source: str):
    """An open PyAV container. Remote objects are read whole, once: PyAV's many small reads
    would each be a request to the object store."""
    if storage.is_uri(source) and not source.startswith("file://"):
        return av.open(io.BytesIO(storage.read_bytes(source)))
    return av.open(storage.filesystem(source)[1])


def _frame_index(container, stream) -> tuple[list[int], list[int]] | None:
    """(sorted pts of every frame, sorted pts of the keyframes), from demuxing alone (no
    decoding); None when some packet has no timestamp."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    return sorted(pts), sorted(keys)


def _decode_at(container, stream, wanted: list[int], keys: list[int],
               size: int) -> tuple[dict[int, np.ndarray], int]:
    """Frames at the wanted pts (sorted) -> ({pts: (size, size, 3) uint8}, frames decoded).

    For each wanted frame, seek to its keyframe when that keyframe lies past what was decoded
    already, else decode on: at most one GOP is decoded per wanted frame, never the whole video.
    """
    out: dict[int, np.ndarray] = {}
    wanted_set, frames, last, decoded = set(wanted), None, None, 0
    for target in wanted:
        if target in out:
            continue
        before = bisect.bisect_right(keys, target) - 1
        key = keys[before] if before >= 0 else None
        if frames is None or (key is not None and last is not None and key > last):
            container.seek(key if key is not None else 0, stream=stream, backward=True)
            frames = container.decode(stream)
        for frame in frames:
            decoded += 1
            last = frame.pts
            if frame.pts in wanted_set and frame.pts not in out:
                out[frame.pts] = _resize(frame.to_image(), size)
            if frame.pts is None or frame.pts >= target:
                break
    return out, decoded


def read_video(source: str, num_frames: int, size: int,
               min_frames: int = 1) -> tuple[np.ndarray, int]:
    """A video -> ((T, size, size, 3) uint8, frames decoded to get them)."""
    try:
        with _open_video(source) as container:
            if not container.streams.video:
                raise ClipError(f"video '{source}' has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = _frame_index(container, stream)
            if index and index[0]:
                pts, keys = index
                _check_length(source, len(pts), min_frames)
                picks = [pts[i] for i in sample_indices(len(pts), num_frames).tolist()]
                got, decoded = _decode_at(container, stream, sorted(set(picks)), keys, size)
                if len(got) == len(set(picks)):
                    return np.stack([got[p] for p in picks]), decoded
            # No usable timestamps, or frames the decoder would not give back at them (broken
            # files): decode the whole video in order.
            container.seek(0, stream=stream)
            frames = [_resize(f.to_image(), size) for f in container.decode(stream)]
    except av.FFmpegError as exc:
        raise ClipError(f"cannot decode video '{source}': {exc}") from None
    except FileNotFoundError:
        raise ClipError(f"clip '{source}' does not exist") from None
    except OSError as exc:
        raise ClipError(f"cannot read video '{source}': {exc}") from None
    _check_length(source, len(frames), min_frames)
    picks = sample_indices(len(frames), num_frames).tolist()
    return np.stack([frames[i] for i in picks]), len(frames)


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


def decode_clip(source: str, num_frames: int, size: int, frames: list[str] | None = None,
                min_frames: int = 1) -> np.ndarray:
    """A frames folder, a video file, or an explicit list of frame files (names relative to
    `source`, in playing order) -> (T, size, size, 3) uint8 RGB, T = num_frames.

    Frames are spread evenly over the whole clip; a clip shorter than T repeats frames, one
    shorter than `min_frames` is refused. Raises ClipError (naming the source) when the clip is
    missing, too short, empty or corrupt.
    """
    try:
        if frames is not None:
            paths = [storage.join(source, name) for name in frames]
            return _decode_frame_files(source, paths, num_frames, size, min_frames)
        if storage.is_dir(source):
            return _decode_frame_files(source, list_frames(source), num_frames, size, min_frames)
        if not storage.exists(source):
            raise ClipError(f"clip '{source}' does not exist")
    except ClipError:
        raise
    except OSError as exc:  # storage errors: permissions, network, bad credentials
        raise ClipError(f"cannot read clip '{source}': {exc}") from None
    return read_video(source, num_frames, size, min_frames)[0]
