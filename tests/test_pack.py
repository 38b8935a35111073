"""cg-ray pack on a real local Ray: bad clips skipped and reported, shards that stream back as
the same columns as raw decoding, resume, epoch shuffling, and equal steps per worker."""

import json
import os
import shutil
import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cg_ray.cli import main
from cg_ray.data.decode import decode_clip
from cg_ray.data.layouts import prepare
from cg_ray.data.pack import PackOptions, pack
from cg_ray.data.prepared import PreparedDataset
from cg_ray.data.shards import pack_dir
from cg_ray.data.stream import clip_dataset, decode_batch
from cg_ray.data.synthetic import make_world
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

T, S = 4, 16
OPTIONS = PackOptions(num_frames=T, image_size=S, clips_per_shard=4, min_frames=4)


@pytest.fixture(scope="module")
def packed(ray_session, tmp_path_factory):
    """3 cities x 6 clips (15 train, 3 val); after prepare, four training clips go bad: a
    corrupt JPEG, a truncated JPEG, a clip emptied of its frames and one cut to 3 frames. (A
    clip deleted outright is the store's fault, not bad data: test_a_missing_clip_stops_pack.)"""
    root = tmp_path_factory.mktemp("pack")
    make_world(str(root / "world"), cities=3, clips_per_city=6, frames=10, size=(32, 24), seed=2)
    data = root / "data"
    prepare("cityguessr", str(root / "world"), str(data))
    train = [r for r in pq.read_table(data / "manifest.parquet").to_pylist() if r["split"] == "train"]
    bad = {row["clip_id"]: row["source"] for row in train[:4]}
    corrupt, truncated, empty, short = bad.values()
    with open(os.path.join(corrupt, "4.jpg"), "wb") as f:  # 4.jpg is one of the 4 sampled
        f.write(b"this is not a jpeg")
    frame = open(os.path.join(truncated, "7.jpg"), "rb").read()
    open(os.path.join(truncated, "7.jpg"), "wb").write(frame[: len(frame) // 3])
    for name in os.listdir(empty):
        os.remove(os.path.join(empty, name))
    for n in range(4, 11):
        os.remove(os.path.join(short, f"{n}.jpg"))
    report = pack(str(data), OPTIONS, log=lambda line: None)
    return data, report, bad


def all_rows(data):
    root = pack_dir(str(data), T, S)
    names = [
        (split, name)
        for split in ("train", "val")
        for name in sorted(os.listdir(os.path.join(root, split)))
        if name.endswith(".parquet")
    ]
    return [
        row for split, name in names for row in pq.read_table(os.path.join(root, split, name)).to_pylist()
    ]


def test_bad_clips_are_skipped_and_reported(packed):
    data, report, bad = packed
    corrupt, truncated, empty, short = bad
    reasons = {s["clip_id"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == set(bad) and report["clips"] == 18
    assert reasons[corrupt].startswith(f"cannot decode frame '{bad[corrupt]}/4.jpg': ")
    assert reasons[truncated].startswith(f"cannot decode frame '{bad[truncated]}/7.jpg': ")
    assert reasons[empty] == f"clip '{bad[empty]}' has no frames (no .jpg/.jpeg/.png files)"
    assert reasons[short] == f"clip '{bad[short]}' has 3 frames, fewer than the 4 required (min_frames)"
    saved = json.loads((data / "shards" / f"frames{T}_size{S}" / "pack_report.json").read_text())
    assert saved["skipped"] == report["skipped"]
    assert {s["source"] for s in saved["skipped"]} == set(bad.values())


def test_a_missing_clip_stops_pack_with_one_line(ray_session, tmp_path, capsys):
    """A clip the manifest lists but the store no longer has is not bad data: counting it as
    one would train on fewer clips than the dataset has. pack stops at once, naming it."""
    from cg_ray.cli import main

    make_world(str(tmp_path / "world"), cities=2, clips_per_city=3, frames=6, size=(16, 16), seed=3)
    prepare("cityguessr", str(tmp_path / "world"), str(tmp_path / "data"))
    gone = pq.read_table(tmp_path / "data" / "manifest.parquet").column("source")[0].as_py()
    shutil.rmtree(gone)
    capsys.readouterr()
    code = main(["pack", str(tmp_path / "data"), "--frames", "4", "--size", "16", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [
        f"cg-ray pack: error: storage: clip '{gone}' is listed in the manifest but does not exist: "
        f"restore it, or run `cg-ray prepare` again"
    ]


def test_every_clip_is_in_exactly_one_shard(packed):
    data, report, bad = packed
    rows = all_rows(data)
    manifest = pq.read_table(data / "manifest.parquet").to_pylist()
    assert sorted(r["clip_id"] for r in rows) == sorted(r["clip_id"] for r in manifest)
    for row in rows:
        assert (row["error"] is not None) == (row["clip_id"] in bad)
        assert len(row["frames"]) == (0 if row["clip_id"] in bad else T)
    assert report["shards"] == {
        "train": [f"train/part-0000{i}.parquet" for i in range(4)],
        "val": ["val/part-00000.parquet"],
    }
    # Shards are filled in a shuffled order: the first one does not hold one city only.
    first = pq.read_table(data / "shards" / f"frames{T}_size{S}" / "train" / "part-00000.parquet")
    assert len(set(first.column("city").to_pylist())) > 1


def test_shards_stream_as_the_raw_columns(packed):
    data, _, bad = packed
    taxonomy = PreparedDataset(str(data)).taxonomy
    batch = next(
        iter(
            clip_dataset(str(data), "train", taxonomy, T, S, keep_ids=True).iter_batches(
                batch_size=100, batch_format="numpy"
            )
        )
    )
    manifest = {r["clip_id"]: r for r in pq.read_table(data / "manifest.parquet").to_pylist()}
    good = [cid for cid in batch["clip_id"] if cid not in bad][:2]
    raw = decode_batch(
        {
            k: np.array([manifest[c][k] for c in good], dtype=object)
            for k in ("clip_id", "source", *LEVELS, "scene_soft")
        },
        label_ids={lv: taxonomy.index(lv) for lv in LEVELS},
        num_frames=T,
        image_size=S,
        scene_labels="soft",
        keep_ids=True,
    )
    assert set(batch) == set(raw)
    for key in raw:
        assert batch[key].dtype.kind == raw[key].dtype.kind or key == "clip_id"
        assert batch[key].shape[1:] == raw[key].shape[1:]
    assert len(batch["clip_id"]) == 15
    for i, cid in enumerate(batch["clip_id"]):
        assert bool(batch["valid"][i]) == (cid not in bad)
        if cid in good:
            j = good.index(cid)
            for key in ("city", "state", "country", "continent"):
                assert batch[key][i] == raw[key][j]
            np.testing.assert_allclose(batch["scene"][i], raw["scene"][j])
            # Stored as JPEG at 16x16: close to decoding the raw frames, not bit-exact.
            assert np.abs(batch["video"][i].astype(int) - raw["video"][j]).mean() < 6
        elif cid in bad:
            assert not batch["video"][i].any()
    assert decode_clip(manifest[good[0]]["source"], T, S).shape == batch["video"][0].shape


def test_seeded_shuffle_changes_every_epoch(packed):
    data, _, _ = packed
    ds = clip_dataset(
        str(data), "train", PreparedDataset(str(data)).taxonomy, T, S, shuffle_seed=0, keep_ids=True
    )
    ds.context.execution_options.preserve_order = True  # as training runs it: reproducible
    epochs = [[r["clip_id"] for r in ds.iter_rows()] for _ in range(3)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == sorted(epochs[2])
    assert epochs[0] != epochs[1] != epochs[2]
    again = clip_dataset(
        str(data), "train", PreparedDataset(str(data)).taxonomy, T, S, shuffle_seed=0, keep_ids=True
    )
    again.context.execution_options.preserve_order = True
    assert [r["clip_id"] for r in again.iter_rows()] == epochs[0]


def test_gpu_decoding_streams_the_same_batches(packed):
    """data.decode=gpu: Ray Data hands over JPEG bytes and the consumer's DeviceFeed decodes
    them (torchvision on the CPU here, nvJPEG on a GPU): the batches of the CPU path."""
    import torch

    from cg_ray.data.feed import DeviceFeed

    data, _, bad = packed
    taxonomy = PreparedDataset(str(data)).taxonomy
    batches = {}
    for decode in ("cpu", "gpu"):
        ds = clip_dataset(
            str(data), "train", taxonomy, T, S, keep_ids=True, decode_batch_size=5, decode=decode
        )
        ds.context.execution_options.preserve_order = True
        feed = DeviceFeed(ds, 5, torch.device("cpu"))
        batches[decode] = list(feed)
        assert feed.batches == 3 and 0 <= feed.first_s <= feed.wait_s and feed.first_rows == 5
        if decode == "gpu":
            assert "jpeg" in next(iter(ds.iter_batches(batch_size=5, batch_format="numpy")))
    for cpu, gpu in zip(batches["cpu"], batches["gpu"]):
        assert set(cpu) == set(gpu)
        assert list(gpu["clip_id"]) == list(cpu["clip_id"])
        assert gpu["valid"].tolist() == cpu["valid"].tolist()
        assert [bool(v) for v in gpu["valid"]] == [c not in bad for c in gpu["clip_id"]]
        assert gpu["video"].dtype == torch.uint8 and gpu["video"].shape == cpu["video"].shape
        assert (gpu["video"].int() - cpu["video"].int()).abs().max() <= 2
        for key in (*LEVELS, "scene"):
            assert torch.equal(gpu[key], cpu[key])


def test_workers_get_disjoint_parts_and_equal_steps(packed):
    """15 training clips in shards of 4, 4, 4, 3 over 2 workers: the same number of batches on
    each (the odd clip is left out), disjoint clips, both epochs."""
    from cg_ray.train.splits import ValSplitDataConfig

    data, _, _ = packed
    taxonomy = PreparedDataset(str(data)).taxonomy
    datasets = {
        "train": clip_dataset(str(data), "train", taxonomy, T, S, shuffle_seed=1, keep_ids=True),
        "val": clip_dataset(str(data), "val", taxonomy, T, S, keep_ids=True),
    }
    shards = ValSplitDataConfig().configure(datasets, world_size=2, worker_handles=None, worker_node_ids=None)
    seen = {0: [], 1: []}

    def worker(rank):
        for _ in range(2):
            ids = [
                list(b["clip_id"])
                for b in shards[rank]["train"].iter_batches(batch_size=4, batch_format="numpy")
            ]
            seen[rank].append(ids)

    threads = [threading.Thread(target=worker, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for epoch in range(2):
        a, b = seen[0][epoch], seen[1][epoch]
        assert len(a) == len(b) == 2  # 7 clips each: batches of 4 and 3
        flat_a, flat_b = sum(a, []), sum(b, [])
        assert len(flat_a) == len(flat_b) == 7 and not set(flat_a) & set(flat_b)


def test_rerun_resumes_and_other_options_are_refused(packed, tmp_path):
    data, report, _ = packed
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    root = copy / "shards" / f"frames{T}_size{S}"
    kept = root / "train" / "part-00000.parquet"
    before = kept.stat().st_mtime_ns
    (root / "train" / "part-00002.parquet").unlink()
    (root / "pack_report.json").unlink()
    # An interrupted run leaves at most a temporary file, which is not a shard.
    (root / "train" / "part-00003.parquet.tmp-deadbeef").write_bytes(b"partial")
    lines = []
    again = pack(str(copy), OPTIONS, log=lines.append)
    assert again["packed_now"] == 4 and kept.stat().st_mtime_ns == before
    assert "4 shards already done, 1 to pack" in lines[0]
    assert again["skipped"] == report["skipped"] and again["shards"] == report["shards"]
    assert not list(root.glob("*/*.tmp-*"))  # the stale temporary file was cleared
    with pytest.raises(UserError, match=r"holds shards of another pack \(options \['clips_per_shard'\]"):
        pack(str(copy), PackOptions(num_frames=T, image_size=S, clips_per_shard=3, min_frames=4))


def test_new_labels_after_pack_are_refused_until_a_relabel(packed, tmp_path):
    """`cg-ray scenes` rewrites the manifest after pack: the shards' labels are stale, so
    streaming refuses them, and pack again rewrites the labels without decoding a clip."""
    data, report, bad = packed
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    table = pq.read_table(copy / "manifest.parquet")
    majority = pa.array([i % 16 for i in range(table.num_rows)], pa.int32())
    pq.write_table(table.append_column("scene_majority", majority), copy / "manifest.parquet")
    taxonomy = PreparedDataset(str(copy)).taxonomy
    with pytest.raises(
        UserError,
        match=r"manifest.parquet' changed after the shards .* run "
        r"`cg-ray pack .* --frames 4 --size 16` again",
    ):
        clip_dataset(str(copy), "val", taxonomy, T, S)
    lines = []
    again = pack(str(copy), OPTIONS, log=lines.append)
    assert "relabelling 5 shards" in lines[0] and again["packed_now"] == 0
    assert again["skipped"] == report["skipped"]
    expected = dict(zip(table.column("clip_id").to_pylist(), majority.to_pylist()))
    rows = next(
        iter(
            clip_dataset(
                str(copy), "val", taxonomy, T, S, scene_labels="majority", keep_ids=True
            ).iter_batches(batch_size=10, batch_format="numpy")
        )
    )
    for clip_id, scene in zip(rows["clip_id"], rows["scene"]):
        assert scene.argmax() == expected[clip_id] and scene.sum() == 1


def test_bench_data_cli_writes_its_figures(packed, tmp_path):
    data, _, _ = packed
    out = tmp_path / "bench.json"
    assert (
        main(
            [
                "bench",
                "data",
                str(data),
                "--clips",
                "24",
                "--frames",
                str(T),
                "--size",
                str(S),
                "--batch-size",
                "4",
                "--metrics-out",
                str(out),
            ]
        )
        == 0
    )
    figures = json.loads(out.read_text())
    assert figures["source"] == "shards" and figures["clips"] >= 24
    assert figures["clips_per_s"] > 0 and figures["peak_rss_mb"] > 0 and figures["clips_per_cpu_s"] > 0
    assert set(figures["cpu_ms_per_clip"]) == {"driver", "workers", "ray_daemons"}


def test_a_read_only_batch_becomes_tensors_of_their_own():
    """Ray hands batches over as read-only views of its object store: torch.from_numpy warned
    on every run ("not writable ... undefined behavior"), and an in-place op on such a tensor
    would write into the shared buffer. The feed gives the step tensors of their own."""
    import warnings

    from cg_ray.data.feed import FeedCollate

    clips = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    clips.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = FeedCollate()({"clip": clips, "clip_id": np.array(["a", "b"], dtype=object)})
    out["clip"] += 1  # in place: the source stays as it was
    assert out["clip"].sum().item() == int(clips.sum()) + 24 and clips[0, 0, 0] == 0
    assert list(out["clip_id"]) == ["a", "b"]
