"""data.decode: JPEG bytes handed to the consumer and decoded there (torchvision's decoder; on
CPU here, standing in for nvJPEG on a GPU) give the batch the CPU path gives; where it cannot
run, one clear line, and `auto` falls back saying so."""

import numpy as np
import pyarrow as pa
import pytest

from cg_ray.data.gpu_decode import decode_video, jpeg_batch, resolve_decode
from cg_ray.data.pack import encode_jpeg
from cg_ray.data.shards import PACK_SCHEMA, STREAM_COLUMNS, decode_packed_batch
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

T, S = 3, 24


def packed_rows(small_taxonomy, n: int = 5) -> pa.Table:
    """n packed clips of T JPEG frames; clip 1 failed at pack time, clip 3 is damaged since."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        city = small_taxonomy.labels["city"][i % 4]
        ids = {"city": small_taxonomy.index("city")[city]}
        for child, up in zip(LEVELS[:-1], LEVELS[1:]):
            ids[up] = small_taxonomy.parents[child][ids[child]]
        frames = [encode_jpeg(rng.integers(0, 255, (S, S, 3), dtype=np.uint8), 90) for _ in range(T)]
        if i == 3:
            frames[1] = frames[1][:20] + b"\x00" * 40
        scenes = rng.dirichlet(np.ones(16)).astype(np.float32).tolist()
        rows.append(
            {
                "clip_id": f"c{i}",
                "split": "train",
                **{lv: small_taxonomy.labels[lv][ids[lv]] for lv in LEVELS},
                "scene_soft": scenes,
                "scene_majority": int(np.argmax(scenes)),
                "frames": [] if i == 1 else frames,
                "error": "unreadable" if i == 1 else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=PACK_SCHEMA).select(STREAM_COLUMNS)


def decode_args(taxonomy, keep_ids=True):
    return dict(
        label_ids={lv: taxonomy.index(lv) for lv in LEVELS},
        num_frames=T,
        image_size=S,
        scene_labels="soft",
        keep_ids=keep_ids,
    )


def test_jpeg_bytes_decode_to_the_cpu_batch(small_taxonomy):
    rows = packed_rows(small_taxonomy)
    cpu = decode_packed_batch(rows, **decode_args(small_taxonomy))
    raw = jpeg_batch(rows, **decode_args(small_taxonomy))
    assert "video" not in raw and raw["jpeg"].dtype == object and raw["jpeg_offsets"].shape == (5, T + 1)
    # Only the compressed bytes are in the batch: one frame's bytes are its JPEG.
    first = rows.column("frames")[0].as_py()
    assert raw["jpeg"][0] == b"".join(first)
    assert raw["jpeg_offsets"][0].tolist() == np.cumsum([0] + [len(f) for f in first]).tolist()
    video, valid = decode_video(raw["jpeg"], raw["jpeg_offsets"], raw["valid"], S, "cpu")
    assert video.shape == (5, T, S, S, 3) and str(video.dtype) == "torch.uint8"
    assert valid.tolist() == cpu["valid"].tolist() == [True, False, True, False, True]
    diff = np.abs(video.numpy().astype(int) - cpu["video"].astype(int))
    assert diff.max() <= 2, diff.max()  # the same libjpeg-turbo here; nvJPEG within a few levels
    assert not video[1].any() and not video[3].any()
    for key in (*LEVELS, "scene", "clip_id"):
        np.testing.assert_array_equal(raw[key], cpu[key])


def test_frames_of_another_size_are_resized(small_taxonomy):
    raw = jpeg_batch(packed_rows(small_taxonomy, 1), **decode_args(small_taxonomy, keep_ids=False))
    same, _ = decode_video(raw["jpeg"], raw["jpeg_offsets"], raw["valid"], None, "cpu")
    small, _ = decode_video(raw["jpeg"], raw["jpeg_offsets"], raw["valid"], S // 2, "cpu")
    assert same.shape == (1, T, S, S, 3) and small.shape == (1, T, S // 2, S // 2, 3)
    # Antialiased bilinear, as PIL resizes (pack's resize): the same pixels, give or take one.
    from PIL import Image

    for t in range(T):
        pil = Image.fromarray(same[0, t].numpy()).resize((S // 2, S // 2), Image.BILINEAR)
        assert np.abs(small[0, t].numpy().astype(int) - np.asarray(pil)).max() <= 1


def test_where_decoding_runs():
    said = []
    assert resolve_decode("cpu", on_gpu=True, packed=True, say=said.append) == "cpu"
    assert resolve_decode("gpu", on_gpu=True, packed=True, say=said.append) == "gpu"
    assert resolve_decode("auto", on_gpu=True, packed=True, say=said.append) == "gpu"
    assert said == []
    assert resolve_decode("auto", on_gpu=False, packed=True, say=said.append) == "cpu"
    assert resolve_decode("auto", on_gpu=True, packed=False, say=said.append) == "cpu"
    assert said == [
        "data.decode=auto: no GPU; decoding JPEGs on the CPU in Ray Data tasks",
        "data.decode=auto: no packed shards; decoding JPEGs on the CPU in Ray Data tasks",
    ]
    with pytest.raises(UserError, match=r"^data.decode=gpu needs a GPU .*set data.decode=cpu or auto$"):
        resolve_decode("gpu", on_gpu=False, packed=True)
    with pytest.raises(UserError, match="run `cg-ray pack`"):
        resolve_decode("gpu", on_gpu=True, packed=False)
    with pytest.raises(UserError, match="must be one of cpu, gpu, auto"):
        resolve_decode("nvjpeg", on_gpu=True, packed=True)


def test_train_with_gpu_decoding_and_no_gpu_says_so_in_one_line(tiny_dataset, tmp_path, capsys):
    from pathlib import Path

    from cg_ray.cli import main

    demo = str(Path(__file__).resolve().parent.parent / "configs" / "demo.yaml")
    code = main(
        [
            "train",
            "--config",
            demo,
            "--set",
            f"data.path={tiny_dataset}",
            "data.decode=gpu",
            "train.use_gpu=false",
            f"run.storage_path={tmp_path}/runs",
            f"run.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("cg-ray train: error: data.decode=gpu needs a GPU") and "\n" not in err
    assert not (tmp_path / "runs").exists()  # refused before any run started


def test_config_refuses_an_unknown_decode():
    from cg_ray.config import config_from_dict

    assert config_from_dict({}).data.decode == "auto"
    with pytest.raises(UserError, match="data.decode='nvjpeg': must be one of cpu, gpu, auto"):
        config_from_dict({"data": {"decode": "nvjpeg"}})
