"""Clip decoding: a folder of frames or a video file -> the RGB frames a sampling picks.

Every source is a local path or a URI that cg_ray.storage understands, so the same code reads a
CityGuessr68k frame folder on disk, an mp4 on S3, or a clip written by the synthetic world.
Videos come out as players show them: turned by the rotation their display matrix declares
(phone videos store portrait pictures as landscape plus that flag), and counted by the frames
that decode when the container's header cannot be trusted (a clip cut with `-c copy` keeps
packets that an edit list hides).
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
from cg_ray.data.sampling import Sampling, uniform
from cg_ray.errors import UserError

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")


class ClipError(UserError):
    """A clip that cannot be decoded; the message names the source and the reason."""


def sample_indices(num_available: int, num_frames: int) -> np.ndarray:
    """(T,) int64 indices spread evenly over [0, num_available - 1], first and last included.

    When the clip is shorter than T, indices repeat, so a short clip still gives T frames.
    """
    return uniform(num_available, num_frames)


def _gather(decoded: dict[int, np.ndarray], picks: np.ndarray) -> np.ndarray:
    """Decoded frames {index: (S, S, 3)} -> picks.shape + (S, S, 3), in the order of `picks`."""
    frames = np.stack([decoded[i] for i in picks.ravel().tolist()])
    return frames.reshape(picks.shape + frames.shape[1:])


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
    # Reading is storage's business (a fault there is retried or stops the run, never a bad
    # clip); only bytes that were read and do not decode make the clip bad.
    data = storage.read_bytes(path)
    try:
        if data[:3] == b"\xff\xd8\xff":  # JPEG magic, whatever the file is called
            return decode_jpeg_at(data, size)
        with Image.open(io.BytesIO(data)) as image:  # PNG and anything else PIL reads
            return _resize(image, size)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ClipError(f"cannot decode frame '{path}': {exc}") from None


def _check_length(source: str, available: int, min_frames: int) -> None:
    if available == 0:
        raise ClipError(f"clip '{source}' has no frames (no .jpg/.jpeg/.png files)")
    if available < min_frames:
        raise ClipError(
            f"clip '{source}' has {available} frames, fewer than the {min_frames} required (min_frames)"
        )


def _decode_frame_files(
    source: str, frames: list[str], sampling: Sampling, size: int, min_frames: int, rng
) -> np.ndarray:
    _check_length(source, len(frames), min_frames)
    # Only the sampled frames are read: a CityGuessr clip has 100 frames and we want 16.
    picks = sampling.indices(len(frames), rng)
    decoded = {i: _decode_frame(frames[i], size) for i in sorted(set(picks.ravel().tolist()))}
    return _gather(decoded, picks)


def _open_video(source: str):
    """An open PyAV container. Remote objects are read whole, once: PyAV's many small reads
    would each be a request to the object store."""
    if storage.is_uri(source) and not source.startswith("file://"):
        return av.open(io.BytesIO(storage.read_bytes(source)))
    return av.open(storage.filesystem(source)[1])


def _video_frame(frame, size: int) -> np.ndarray:
    """A decoded video frame -> (size, size, 3) uint8 as a player shows it: turned by the
    rotation of its display matrix (counter-clockwise degrees; PyAV reads it off the frame's
    side data, which FFmpeg fills from the stream's). Turning after the resize to a square is
    the same picture as before it, and cheaper."""
    pixels = _resize(frame.to_image(), size)
    turns = round((frame.rotation or 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _frame_index(container, stream) -> tuple[list[int], list[int]] | None:
    """(sorted pts of every frame a player shows, sorted pts of the keyframes), from demuxing
    alone (no decoding); None when some packet has no timestamp. Packets an edit list hides
    (marked discard) are left out: the decoder never returns them."""
    pts, keys = [], []
    for packet in container.demux(stream):
        if packet.size == 0 or packet.is_discard:
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        if packet.is_keyframe:
            keys.append(packet.pts)
    return sorted(pts), sorted(keys)


def _decode_at(
    container, stream, wanted: list[int], keys: list[int], size: int
) -> tuple[dict[int, np.ndarray], int]:
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
                out[frame.pts] = _video_frame(frame, size)
            if frame.pts is None or frame.pts >= target:
                break
    return out, decoded


def read_video(
    source: str, num_frames: int, size: int, min_frames: int = 1, sampling: Sampling | None = None, rng=None
) -> tuple[np.ndarray, int]:
    """A video -> ((T, size, size, 3) uint8, frames decoded to get them); with a sampling,
    sampling.leading + (T, size, size, 3)."""
    sampling = sampling or Sampling("uniform", num_frames)
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
                picks = np.asarray(pts)[sampling.indices(len(pts), rng)]
                wanted = sorted(set(picks.ravel().tolist()))
                got, decoded = _decode_at(container, stream, wanted, keys, size)
                if len(got) == len(wanted):
                    return _gather(got, picks), decoded
            # No usable timestamps, or frames the decoder would not give back at them (broken
            # files): decode the whole video in order.
            container.seek(0, stream=stream)
            frames = [_video_frame(f, size) for f in container.decode(stream)]
    except av.FFmpegError as exc:
        raise ClipError(f"cannot decode video '{source}': {exc}") from None
    except FileNotFoundError:
        raise ClipError(f"clip '{source}' does not exist") from None
    except OSError as exc:
        raise ClipError(f"cannot read video '{source}': {exc}") from None
    _check_length(source, len(frames), min_frames)
    return _gather(dict(enumerate(frames)), sampling.indices(len(frames), rng)), len(frames)


def frame_count(source: str) -> tuple[int, str]:
    """(frames a player shows, 'header' | 'decoded'): how the count was found.

    The container's own count is trusted when demuxing agrees with it (as many packets, none
    hidden by an edit list); otherwise (no count in the header, as in Matroska and WebM; a
    clip cut with stream copy; a truncated file) the frames are decoded and counted.
    Raises ClipError for a file PyAV cannot open or one without a video stream.
    """
    try:
        with _open_video(source) as container:
            if not container.streams.video:
                raise ClipError(f"video '{source}' has no video stream")
            stream = container.streams.video[0]
            header, shown, hidden = int(stream.frames), 0, 0
            for packet in container.demux(stream):
                if packet.size:
                    hidden += packet.is_discard
                    shown += not packet.is_discard
            if header > 0 and header == shown and not hidden:
                return header, "header"
        with _open_video(source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            return sum(1 for _ in container.decode(stream)), "decoded"
    except av.FFmpegError as exc:
        raise ClipError(f"cannot open video '{source}': {exc}") from None
    except OSError as exc:
        raise ClipError(f"cannot read video '{source}': {exc}") from None


def count_frames(source: str) -> int:
    """Frames a player shows in a video (see frame_count)."""
    return frame_count(source)[0]


def decode_clip(
    source: str,
    num_frames: int,
    size: int,
    frames: list[str] | None = None,
    min_frames: int = 1,
    sampling: Sampling | None = None,
    rng=None,
) -> np.ndarray:
    """A frames folder, a video file, or an explicit list of frame files (names relative to
    `source`, in playing order) -> (T, size, size, 3) uint8 RGB, T = num_frames.

    Without `sampling` frames are spread evenly over the whole clip (uniform); with one, the
    frames it picks, shaped sampling.leading + (T, size, size, 3) (`rng`: its random draws). A
    clip shorter than T repeats frames, one shorter than `min_frames` is refused. Raises
    ClipError (naming the source) when the clip is too short, empty or corrupt; a storage error
    (cg_ray.storage_errors) when it cannot be read.
    """
    sampling = sampling or Sampling("uniform", num_frames)
    # Storage errors (cg_ray.storage_errors) pass through: a clip the manifest lists but the
    # store does not have, or a store that keeps failing, is not bad data.
    if frames is not None:
        paths = [storage.join(source, name) for name in frames]
        return _decode_frame_files(source, paths, sampling, size, min_frames, rng)
    if storage.is_dir(source):
        return _decode_frame_files(source, list_frames(source), sampling, size, min_frames, rng)
    if not storage.exists(source):
        raise storage.ObjectMissing(
            f"storage: clip '{source}' is listed in the manifest but does not exist: restore it, "
            f"or run `cg-ray prepare` again"
        )
    return read_video(source, num_frames, size, min_frames, sampling, rng)[0]
