"""Samplings through the real loaders: raw clips and packed shards give the frames each sampling
names; a pack that cannot serve a sampling is refused with the command that makes one."""

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from cg_ray.data.layouts import prepare
from cg_ray.data.packed_sampling import select_frames
from cg_ray.data.sampling import Sampling, pack_indices
from cg_ray.errors import UserError

N, S = 40, 16  # frames per clip, frame size


def grey_world(root, cities=("Lyon", "Osaka"), clips=3):
    """A CityGuessr68k release folder whose frame n (1-based) is grey level 5 (n - 1): a
    decoded pixel names the frame it came from."""
    rows = {"Lyon": "Lyon,Rhone,France,Europe", "Osaka": "Osaka,Kansai,Japan,Asia"}
    (root / "labels_list.csv").parent.mkdir(parents=True, exist_ok=True)
    (root / "labels_list.csv").write_text(
        "City,State,Country,Continent\n" + "\n".join(rows[c] for c in cities) + "\n"
    )
    for city in cities:
        for i in range(clips):
            split = "val" if i == 0 else "train"
            clip = root / split / city / f"{city}{i}"
            clip.mkdir(parents=True)
            for n in range(1, N + 1):
                Image.new("RGB", (S, S), (5 * (n - 1),) * 3).save(clip / f"{n}.jpg", quality=98)


def frame_ids(video):
    """(..., T, S, S, 3) uint8 -> (..., T) the frame index each picture shows."""
    return np.round(video.astype(np.float32).mean(axis=(-3, -2, -1)) / 5).astype(int)


def test_select_frames_takes_the_sampled_jpegs_in_order():
    frames = [[bytes([k]) for k in range(8)], [], [bytes([k]) for k in range(8)]]
    table = pa.table(
        {
            "clip_id": ["a", "b", "c"],
            "error": [None, "broken", None],
            "frames": pa.array(frames, type=pa.list_(pa.binary())),
        }
    )
    chosen = select_frames(table.slice(0, 3), Sampling("bidirectional", 4), "uniform", 8)
    picks = Sampling("bidirectional", 4).indices(8).ravel().tolist()
    assert chosen.column("frames").to_pylist() == [
        [bytes([k]) for k in picks],
        [],
        [bytes([k]) for k in picks],
    ]
    official = select_frames(table, Sampling("official", 4), "official", 8)
    assert official.column("frames").to_pylist()[0] == [bytes([k]) for k in range(4)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampled")
    grey_world(root / "world")
    prepare("cityguessr", str(root / "world"), str(root / "data"))
    return root / "data"


def test_samplings_from_raw_clips(data):
    """The decode step of clip_dataset on raw clips: the frames each sampling names."""
    import pyarrow.parquet as pq

    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.stream import decode_batch

    manifest = pq.read_table(data / "manifest.parquet").to_pandas()
    taxonomy = PreparedDataset(str(data)).taxonomy
    label_ids = {level: taxonomy.index(level) for level in ("city", "state", "country", "continent")}

    def decode(rows, sampling, seed=None):
        batch = {k: rows[k].to_numpy() for k in rows.columns}
        return decode_batch(
            batch,
            label_ids=label_ids,
            num_frames=4,
            image_size=S,
            scene_labels="soft",
            keep_ids=True,
            sampling=sampling,
            seed=seed,
        )

    val = manifest[manifest.split == "val"]
    for sampling in (
        Sampling("official", 4),
        Sampling("bidirectional", 4),
        Sampling("uniform", 4, views=2),
        Sampling("random", 4),
    ):
        batch = decode(val, sampling)
        assert batch["video"].shape == (2, *sampling.leading, 4, S, S, 3) and batch["valid"].all()
        assert (frame_ids(batch["video"]) == sampling.indices(N)).all(), sampling
    train = manifest[manifest.split == "train"]
    ids = frame_ids(decode(train, Sampling("random", 4, training=True), seed=0)["video"])
    assert ids.shape == (4, 4) and ((ids // 10) == np.arange(4)).all()  # one per segment of 10
    again = frame_ids(decode(train, Sampling("random", 4, training=True), seed=0)["video"])
    other = frame_ids(decode(train, Sampling("random", 4, training=True), seed=1)["video"])
    assert (again == ids).all() and (other != ids).any()  # seeded


def batches(data, split, sampling, seed=None):
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.stream import clip_dataset

    ds = clip_dataset(
        str(data),
        split,
        PreparedDataset(str(data)).taxonomy,
        sampling.num_frames,
        S,
        shuffle_seed=seed,
        keep_ids=True,
        sampling=sampling,
    )
    return list(ds.iter_batches(batch_size=8, batch_format="numpy"))


@pytest.mark.slow
def test_samplings_from_packs(ray_session, data):
    from cg_ray.data.pack import PackOptions, pack

    quiet = dict(log=lambda _: None)
    train = Sampling("random", 4, training=True)
    pack(str(data), PackOptions(num_frames=4, image_size=S, clips_per_shard=2), **quiet)
    (batch,) = batches(data, "val", Sampling("uniform", 4))  # the pack as it stands
    assert (frame_ids(batch["video"]) == pack_indices("uniform", N, 4)).all()
    for sampling, command in [
        (Sampling("random", 4), f"--frames 8 --size {S}`"),
        (Sampling("official", 4), f"--frames 4 --size {S} --sampling official`"),
        (Sampling("uniform", 4, views=3), f"--frames 12 --size {S}`"),
    ]:
        with pytest.raises(UserError, match="cannot serve data.sampling") as err:
            batches(data, "val", sampling)
        assert str(err.value).endswith(f"run `cg-ray pack {data} {command}")

    pack(str(data), PackOptions(num_frames=8, image_size=S, clips_per_shard=2), **quiet)
    pack(str(data), PackOptions(num_frames=4, image_size=S, clips_per_shard=2, sampling="official"), **quiet)
    stored = pack_indices("uniform", N, 8)  # the frames a pack of 8 holds
    for sampling in (Sampling("bidirectional", 4), Sampling("random", 4)):
        (batch,) = batches(data, "val", sampling)
        assert (frame_ids(batch["video"]) == stored[sampling.indices(8)]).all(), sampling
    (batch,) = batches(data, "val", Sampling("official", 4))
    assert (frame_ids(batch["video"]) == [0, 5, 10, 15]).all()
    ids = np.concatenate([frame_ids(b["video"]) for b in batches(data, "train", train, seed=0)])
    segments = np.searchsorted(stored, ids, side="right") - 1  # index in the pack
    assert ids.shape == (4, 4) and ((segments // 2) == np.arange(4)).all()
