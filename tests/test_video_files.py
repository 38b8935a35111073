"""Video files as players show them: the display-matrix rotation of a phone video, the frame
count of a clip whose header lies, and clip ids of files that differ only by extension."""

import csv
import json

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from cg_ray.data.decode import count_frames, decode_clip, frame_count
from cg_ray.data.layouts import prepare
from cg_ray.taxonomy import LEVELS

LABELS = {"Lyon": ["Rhone", "France", "Europe"], "Osaka": ["Kansai", "Japan", "Asia"]}


def write_video(path, frames, rotation=None, codec="libx264", gop=None):
    """(N, H, W, 3) uint8 frames -> a video file; `rotation`: the display matrix a phone
    writes (counter-clockwise degrees a player turns the stored picture by)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=10)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.gop_size = gop
        if rotation is not None:
            stream.set_display_rotation(rotation)
        for i, frame in enumerate(frames):
            picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            picture.pts = i
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


def upright_portrait(n=8, height=48, width=24):
    """What the player shows: a portrait picture, white top half, black bottom half."""
    frames = np.zeros((n, height, width, 3), dtype=np.uint8)
    frames[:, : height // 2] = 255
    return frames


def phone_clip(path, rotation=-90):
    """A phone video: the sensor's landscape picture stored as is, plus a display matrix.
    A player shows the stored picture turned counter-clockwise by `rotation` degrees, so the
    stored picture is the upright one turned the other way."""
    stored = np.rot90(upright_portrait(), k=-rotation // 90, axes=(1, 2))
    write_video(path, stored, rotation=rotation)
    return path


def assert_upright(clip):
    """(..., S, S, 3): top half white, bottom half black."""
    half = clip.shape[-3] // 2
    top, bottom = clip[..., : half - 1, :, :].mean(), clip[..., half + 1 :, :, :].mean()
    assert top > 200 and bottom < 50, (top, bottom)


@pytest.mark.parametrize("rotation", [-90, 90, 180])
def test_rotated_phone_clip_decodes_upright(tmp_path, rotation):
    path = phone_clip(tmp_path / "phone.mp4", rotation)
    with av.open(str(path)) as container:
        stored = next(container.decode(video=0))
        assert stored.rotation % 360 == rotation % 360  # the case under test: not upright yet
    clip = decode_clip(str(path), 4, 16)
    assert clip.shape == (4, 16, 16, 3)
    assert_upright(clip)


def cut_with_stream_copy(source, dest, skip):
    """What `ffmpeg -ss ... -c copy` does: packets from the keyframe before the cut are kept and
    an edit list tells players to skip them; the header still counts every packet."""
    with av.open(str(source)) as src, av.open(str(dest), "w") as out:
        stream = src.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in src.demux(stream):
            if packet.dts is None:
                continue
            shift = skip * packet.duration
            packet.pts, packet.dts = packet.pts - shift, packet.dts - shift
            packet.stream = copy
            out.mux(packet)


def grey_ramp(n, size=16):
    values = (np.arange(n) * 8).astype(np.uint8)
    return values, np.repeat(values, size * size * 3).reshape(n, size, size, 3)


@pytest.mark.parametrize("gop", [None, 4])
def test_header_lying_clip_gets_its_true_count(tmp_path, gop):
    values, frames = grey_ramp(30)
    write_video(tmp_path / "full.mp4", frames, gop=gop)
    cut = tmp_path / "cut.mp4"
    cut_with_stream_copy(tmp_path / "full.mp4", cut, skip=11)
    with av.open(str(cut)) as container:
        assert container.streams.video[0].frames == 30  # the header lies
    assert frame_count(str(cut)) == (19, "decoded")
    assert count_frames(str(cut)) == 19
    assert frame_count(str(tmp_path / "full.mp4")) == (30, "header")
    clip = decode_clip(str(cut), 19, 8)  # every frame a player shows, and only those
    np.testing.assert_allclose(clip.mean(axis=(1, 2, 3)), values[11:], atol=4)


def write_labels(folder, rows):
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", *LEVELS, "split"])
        for path, city, split in rows:
            writer.writerow([path, city, *LABELS[city], split])


def test_prepare_records_the_true_count_and_judges_min_frames_by_it(tmp_path):
    _, frames = grey_ramp(30)
    write_video(tmp_path / "full.mp4", frames)
    cut_with_stream_copy(tmp_path / "full.mp4", tmp_path / "cut.mp4", skip=11)
    write_labels(tmp_path, [("full.mp4", "Lyon", "train"), ("cut.mp4", "Lyon", "val")])
    prepare("videos", str(tmp_path), str(tmp_path / "out"))
    rows = {r["clip_id"]: r for r in pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()}
    assert (rows["cut"]["num_frames"], rows["cut"]["frame_count_source"]) == (19, "decoded")
    assert (rows["full"]["num_frames"], rows["full"]["frame_count_source"]) == (30, "header")
    report = prepare("videos", str(tmp_path), str(tmp_path / "out2"), min_frames=20)
    assert report["clips"] == 1
    assert [s["reason"] for s in report["skipped"]] == ["19 frames, fewer than --min-frames 20"]


def test_files_differing_only_by_extension_are_both_prepared(tmp_path):
    _, frames = grey_ramp(6)
    write_video(tmp_path / "x.avi", frames, codec="mpeg4")
    write_video(tmp_path / "x.mov", frames)
    write_video(tmp_path / "y.mp4", frames)
    write_labels(
        tmp_path,
        [
            ("x.avi", "Lyon", "train"),
            ("x.mov", "Osaka", "train"),
            ("y.mp4", "Lyon", "val"),
            ("y.mp4", "Lyon", "val"),
        ],
    )
    report = prepare("videos", str(tmp_path), str(tmp_path / "out"))
    rows = pq.read_table(tmp_path / "out" / "manifest.parquet").to_pylist()
    assert sorted(r["clip_id"] for r in rows) == ["x.avi", "x.mov", "y"]
    assert {r["clip_id"]: r["city"] for r in rows}["x.mov"] == "Osaka"
    # The same file listed twice: the second row is skipped and reported, nothing else is.
    assert report["clips"] == 3
    assert len(report["skipped"]) == 1 and "listed twice" in report["skipped"][0]["reason"]


@pytest.mark.slow
def test_rotated_clip_is_upright_in_pack_training_input_and_predict(ray_session, tmp_path):
    from predict_helpers import train_tiny_checkpoint

    from cg_ray.data.pack import PackOptions, pack
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.shards import decode_jpeg_into
    from cg_ray.data.stream import clip_dataset
    from cg_ray.predict.predictor import Predictor, open_checkpoint, predict_inputs

    for city in LABELS:
        for i in range(2):
            phone_clip(tmp_path / f"{city}{i}.mp4", rotation=-90 if i else 90)
    write_labels(
        tmp_path, [(f"{city}{i}.mp4", city, "train" if i else "val") for city in LABELS for i in range(2)]
    )
    data = tmp_path / "data"
    prepare("videos", str(tmp_path), str(data))
    taxonomy = PreparedDataset(str(data)).taxonomy
    # Training input from the raw files.
    batch = next(
        iter(
            clip_dataset(str(data), "train", taxonomy, 4, 16).iter_batches(batch_size=2, batch_format="numpy")
        )
    )
    assert batch["video"].shape == (2, 4, 16, 16, 3) and batch["valid"].all()
    assert_upright(batch["video"])
    # Packed shards hold upright frames, and stream them back upright.
    pack(str(data), PackOptions(num_frames=4, image_size=16, clips_per_shard=2), log=lambda _: None)
    report = json.loads((data / "shards" / "frames4_size16" / "pack_report.json").read_text())
    assert not report["skipped"]
    shard = data / "shards" / "frames4_size16" / "train" / report["shards"]["train"][0].split("/")[-1]
    frame = np.zeros((16, 16, 3), dtype=np.uint8)
    decode_jpeg_into(pq.read_table(shard).column("frames")[0].as_py()[0], frame)
    assert_upright(frame)
    packed = next(
        iter(
            clip_dataset(str(data), "train", taxonomy, 4, 16).iter_batches(batch_size=2, batch_format="numpy")
        )
    )
    assert_upright(packed["video"])
    # predict sees what a player shows: the same output as for an upright file.
    rows = [
        {"path": str(tmp_path / f"{city}{i}.mp4"), "city": city, **dict(zip(LEVELS[1:], LABELS[city]))}
        for city in LABELS
        for i in range(2)
    ]
    train_tiny_checkpoint(str(tmp_path / "ckpt"), rows, steps=1)
    predictor = Predictor(open_checkpoint(str(tmp_path / "ckpt"))[0], top_k=2)
    write_video(tmp_path / "upright.mp4", upright_portrait())
    phone, upright = predict_inputs(predictor, [str(tmp_path / "Lyon1.mp4"), str(tmp_path / "upright.mp4")])
    assert phone.prediction["top_k"] == upright.prediction["top_k"] or all(
        abs(a["prob"] - b["prob"]) < 1e-3
        for level in LEVELS
        for a, b in zip(phone.prediction["top_k"][level], upright.prediction["top_k"][level])
    )
    turned = np.rot90(decode_clip(str(tmp_path / "upright.mp4"), 4, 32), axes=(1, 2))
    sideways = predictor.probs(np.ascontiguousarray(turned)[None])
    straight = predictor.probs(decode_clip(str(tmp_path / "Lyon1.mp4"), 4, 32)[None])
    assert not all(torch.allclose(sideways[level], straight[level], atol=1e-4) for level in LEVELS)
