"""Clip decoding: frame order, sampling, video round trip, and clear errors for bad clips."""

import io

import av
import numpy as np
import pytest
from PIL import Image

from cg_ray.data.decode import ClipError, count_frames, decode_clip, list_frames, sample_indices
from cg_ray.data.synthetic import _mp4
from cg_ray.storage_errors import ObjectMissing


def write_grey_frames(folder, values, fmt="JPEG", suffix=".jpg"):
    folder.mkdir(parents=True, exist_ok=True)
    for n, value in enumerate(values, start=1):
        Image.new("RGB", (40, 30), (value, value, value)).save(folder / f"{n}{suffix}", fmt, quality=95)


def test_sample_indices_spreads_evenly_and_repeats_short_clips():
    assert sample_indices(10, 4).tolist() == [0, 3, 6, 9]
    long = sample_indices(100, 16)
    assert long[0] == 0 and long[-1] == 99 and np.all(np.diff(long) > 0)
    assert sample_indices(3, 8).tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert sample_indices(1, 5).tolist() == [0] * 5
    assert sample_indices(16, 16).tolist() == list(range(16))
    with pytest.raises(ValueError):
        sample_indices(0, 4)


def test_list_frames_sorts_numerically_then_by_name(tmp_path):
    for name in ["10.jpg", "2.jpg", "1.jpg", "cover.png", "11.JPEG", "notes.txt", "3.png"]:
        (tmp_path / name).write_bytes(b"x")
    names = [p.rsplit("/", 1)[-1] for p in list_frames(str(tmp_path))]
    assert names == ["1.jpg", "2.jpg", "3.png", "10.jpg", "11.JPEG", "cover.png"]


def test_frames_decode_in_numeric_order(tmp_path):
    values = [20 * n for n in range(1, 13)]  # frame n has grey level 20n: 10.jpg must come 10th
    write_grey_frames(tmp_path / "clip", values)
    clip = decode_clip(str(tmp_path / "clip"), num_frames=12, size=8)
    assert clip.shape == (12, 8, 8, 3) and clip.dtype == np.uint8
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), values, atol=2)


def test_short_frame_clip_repeats_frames_and_png_works(tmp_path):
    write_grey_frames(tmp_path / "clip", [50, 150, 250], fmt="PNG", suffix=".png")
    clip = decode_clip(str(tmp_path / "clip"), num_frames=8, size=4)
    expected = np.array([50, 150, 250])[sample_indices(3, 8)]
    np.testing.assert_array_equal(clip[:, 0, 0, 0], expected)


def test_video_round_trip(tmp_path):
    values = np.arange(20) * 12
    frames = np.repeat(values, 32 * 48 * 3).astype(np.uint8).reshape(20, 32, 48, 3)
    path = tmp_path / "clip.mp4"
    path.write_bytes(_mp4(frames))
    assert count_frames(str(path)) == 20
    clip = decode_clip(str(path), num_frames=5, size=16)
    assert clip.shape == (5, 16, 16, 3) and clip.dtype == np.uint8
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), values[sample_indices(20, 5)], atol=4)
    # More frames asked than the video has: frames repeat, no error.
    assert decode_clip(str(path), num_frames=32, size=8).shape == (32, 8, 8, 3)


def test_video_without_frame_count_in_its_container(tmp_path):
    """Matroska stores no frame count: frames are counted by demuxing and decoded in full."""
    values = np.arange(12) * 20
    frames = np.repeat(values, 16 * 16 * 3).astype(np.uint8).reshape(12, 16, 16, 3)
    path = tmp_path / "clip.mkv"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        stream.options = {"crf": "10"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0  # the case under test
    assert count_frames(str(path)) == 12
    clip = decode_clip(str(path), num_frames=4, size=8)
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), values[sample_indices(12, 4)], atol=4)


def test_corrupt_jpeg_names_the_file(tmp_path):
    write_grey_frames(tmp_path / "clip", [10, 20, 30])
    (tmp_path / "clip" / "2.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(ClipError, match=r"clip/2\.jpg"):
        decode_clip(str(tmp_path / "clip"), num_frames=3, size=8)


def test_truncated_jpeg_names_the_file(tmp_path):
    buf = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, "JPEG")
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "1.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    with pytest.raises(ClipError, match=r"clip/1\.jpg"):
        decode_clip(str(tmp_path / "clip"), num_frames=2, size=8)


def test_corrupt_and_truncated_video_name_the_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ClipError, match="bad.mp4"):
        decode_clip(str(bad), num_frames=4, size=8)
    with pytest.raises(ClipError, match="bad.mp4"):
        count_frames(str(bad))
    frames = np.zeros((8, 16, 16, 3), dtype=np.uint8)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(_mp4(frames)[:300])
    with pytest.raises(ClipError, match="cut.mp4"):
        decode_clip(str(cut), num_frames=4, size=8)


def test_empty_and_missing_clips_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClipError, match="empty.*no frames"):
        decode_clip(str(tmp_path / "empty"), num_frames=4, size=8)
    # Missing is the store's fault, not the clip's (never counted as bad data): one line, fix it.
    with pytest.raises(ObjectMissing, match="nowhere.*listed in the manifest but does not exist"):
        decode_clip(str(tmp_path / "nowhere"), num_frames=4, size=8)
    assert not issubclass(ObjectMissing, ClipError)


def test_video_seeks_to_the_sampled_frames(tmp_path):
    """Keyframes every 4 frames: 16 frames sampled from 100 come from seeking to the keyframe
    before each, not from decoding the whole video, and they are the right frames."""
    from cg_ray.data.decode import read_video

    values = (np.arange(100) * 2.5).astype(np.uint8)
    frames = np.repeat(values, 32 * 48 * 3).reshape(100, 32, 48, 3)
    path = tmp_path / "gop4.mp4"
    path.write_bytes(_mp4(frames, gop=4))
    clip, decoded = read_video(str(path), num_frames=16, size=16)
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), values[sample_indices(100, 16)], atol=3)
    assert decoded <= 16 * 4  # at most one GOP (4 frames) per sampled frame, not all 100
    path.write_bytes(_mp4(frames))  # one keyframe: nothing to seek to, everything is decoded
    assert read_video(str(path), num_frames=16, size=16)[1] == 100
