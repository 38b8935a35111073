"""Packed training shards: where they live, what they hold, and how they stream back as clips.

`cg-ray pack` (cg_ray.data.pack) writes, next to the manifest,

    DEST/shards/frames{T}_size{S}/{split}/part-00000.parquet ...   PACK_SCHEMA rows, one per clip
    DEST/shards/frames{T}_size{S}/pack_report.json                 written last: the pack is complete

and clip_dataset() streams them when a complete pack at the configured S serves the configured
sampling (cg_ray.data.packed_sampling: a pack of F >= T frames, from which the loader takes the
sampled T). A clip that could not be packed is still a row (no frames, `error` set), so training
counts it in `bad_clips` exactly as it would count a clip that fails to decode from the raw files.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cg_ray import storage
from cg_ray.data.packed_sampling import is_identity, pack_command, pack_name, select_frames, serving_pack
from cg_ray.data.prepared import MANIFEST, PreparedDataset
from cg_ray.data.sampling import Sampling
from cg_ray.data.tables import scene_targets
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS

log = logging.getLogger(__name__)

REPORT = "pack_report.json"
BLOCK_CLIPS = 48  # decoded clips per block, about: 110 MB at 16 x 224 x 224
PACK_SCHEMA = pa.schema(
    [
        ("clip_id", pa.string()),
        ("split", pa.string()),
        ("city", pa.string()),
        ("state", pa.string()),
        ("country", pa.string()),
        ("continent", pa.string()),
        ("scene_soft", pa.list_(pa.float32())),
        ("scene_majority", pa.int32()),
        ("frames", pa.list_(pa.binary())),  # T JPEG-encoded S x S frames; empty when `error` is set
        ("error", pa.string()),  # why the clip could not be packed; null for a packed clip
    ]
)
STREAM_COLUMNS = ["clip_id", *LEVELS, "scene_soft", "scene_majority", "frames", "error"]
LABEL_COLUMNS = ["split", *LEVELS, "scene_soft", "scene_majority"]  # copied from the manifest


def pack_dir(dataset: PreparedDataset | str, num_frames: int, image_size: int, kind: str = "uniform") -> str:
    """DEST/shards/frames{F}_size{S}, with `_official` for a pack of the official picks."""
    return storage.join(str(dataset), "shards", pack_name(num_frames, image_size, kind))


def shard_path(root: str, split: str, index: int) -> str:
    return storage.join(root, split, f"part-{index:05d}.parquet")


def packed_files(
    dataset: PreparedDataset | str, split: str, num_frames: int, image_size: int, kind: str = "uniform"
) -> list[str] | None:
    """The shard files of one split, when a complete pack for (F, S, kind) exists; else None.

    A pack made from an older manifest (prepared again, or given scene labels by `cg-ray scenes`
    since) is refused: its labels would be stale."""
    dataset = PreparedDataset.open(dataset)
    name = pack_name(num_frames, image_size, kind)
    if not dataset.exists("shards", name, REPORT):
        return None
    report = dataset.read_json("shards", name, REPORT)
    if report.get("manifest") != dataset.stamp():
        raise UserError(
            f"'{dataset.uri(MANIFEST)}' changed after the shards in '{dataset.uri('shards', name)}' "
            f"were packed (prepared again, or new scene labels); run "
            f"`{pack_command(str(dataset), num_frames, image_size, kind)}` again: it keeps "
            f"the packed frames and refreshes the labels"
        )
    return [dataset.inner("shards", name, file) for file in report["shards"].get(split, [])]


def decode_jpeg_into(data, out: np.ndarray) -> None:
    """One JPEG (bytes or a uint8 buffer) decoded straight into `out` ((S, S, 3) uint8)."""
    try:
        import simplejpeg
    except ImportError:  # pragma: no cover - PIL is the slower stand-in
        import io

        from PIL import Image

        with Image.open(io.BytesIO(bytes(data))) as image:
            out[...] = np.asarray(image.convert("RGB"))
        return
    simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)


def _frame_views(frames):
    """Per clip, its JPEGs as zero-copy uint8 views into the Arrow buffers (no bytes objects)."""
    frames = frames.combine_chunks() if isinstance(frames, pa.ChunkedArray) else frames
    offsets = frames.offsets.to_numpy()  # into frames.values, slice of the list array included
    values = frames.values
    width = np.int64 if pa.types.is_large_binary(values.type) else np.int32
    value_offsets = np.frombuffer(values.buffers()[1], dtype=width)[values.offset :]
    data = values.buffers()[2]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    for i in range(len(frames)):
        if not frames[i].is_valid:
            yield []
            continue
        yield [data[value_offsets[j] : value_offsets[j + 1]] for j in range(offsets[i], offsets[i + 1])]


def epoch_rng(seed: int, key: str) -> np.random.Generator:
    """A generator that differs per epoch and per `key`, and is the same for the same seed.

    Ray Data counts executions of a dataset (one per epoch) in the task's DataContext; it is a
    private field, so a Ray without it falls back to the same order every epoch.
    """
    from ray.data import DataContext

    epoch = getattr(DataContext.get_current(), "_execution_idx", 0)
    return np.random.default_rng([seed, epoch, zlib.crc32(key.encode())])


def decode_packed_batch(
    batch: pa.Table,
    *,
    label_ids: dict[str, dict[str, int]],
    num_frames: int,
    image_size: int,
    scene_labels: str,
    keep_ids: bool,
) -> dict[str, np.ndarray]:
    """Packed rows -> the same columns as cg_ray.data.stream.decode_batch.

    video: (B, T, S, S, 3) uint8, every JPEG decoded in place into it; valid: (B,) bool.
    """
    n = batch.num_rows
    ids = batch.column("clip_id").to_pylist()
    video = np.zeros((n, num_frames, image_size, image_size, 3), dtype=np.uint8)
    valid = np.ones(n, dtype=bool)
    errors = batch.column("error").to_pylist()
    for i, frames in enumerate(_frame_views(batch.column("frames"))):
        if errors[i] is not None or len(frames) != num_frames:
            valid[i] = False
            continue
        try:
            for t, data in enumerate(frames):
                decode_jpeg_into(data, video[i, t])
        except (ValueError, OSError) as exc:  # a shard damaged after packing
            log.warning("skipping clip %s: cannot decode its packed frames: %s", ids[i], exc)
            video[i] = 0
            valid[i] = False
    out = {"video": video, "valid": valid}
    for level in LEVELS:
        names = batch.column(level).to_pylist()
        out[level] = np.array([label_ids[level][name] for name in names], dtype=np.int64)
    out["scene"] = scene_targets(
        batch.column("scene_soft").to_pylist(), n, scene_labels, batch.column("scene_majority").to_pylist()
    )
    if keep_ids:
        out["clip_id"] = np.array(ids, dtype=str)
    return out


def _sampled_batch(
    make_batch,
    rows: pa.Table,
    *,
    sampling: Sampling,
    kind: str,
    packed: int,
    seed: int | None,
    decode_args: dict,
) -> dict[str, np.ndarray]:
    """make_batch on the frames `sampling` picks out of each clip's `packed` ones (training
    draws: seeded per epoch and clip); video then is (B, *sampling.leading, T, S, S, 3)."""
    rng_for = (lambda clip: epoch_rng(seed or 0, f"frames:{clip}")) if sampling.training else None
    rows = select_frames(rows, sampling, kind, packed, rng_for)
    per_clip = int(np.prod(sampling.leading, dtype=np.int64)) * sampling.num_frames
    out = make_batch(rows, **{**decode_args, "num_frames": per_clip})
    if "video" in out and sampling.leading:
        video = out["video"]
        out["video"] = video.reshape(len(video), *sampling.leading, sampling.num_frames, *video.shape[2:])
    return out


def read_and_decode(
    item: dict[str, np.ndarray],
    *,
    filesystem,
    batch_size: int,
    seed: int | None,
    decode: str = "cpu",
    select: dict | None = None,
    **decode_args,
) -> Iterator[dict[str, np.ndarray]]:
    """One Ray Data task per shard file: read it once, (with a seed) put its rows in this
    epoch's order, and yield decoded batches of `batch_size` clips as they are ready
    (decode='gpu': their JPEG bytes instead, for the consumer to decode; gpu_decode.py)."""
    from cg_ray.data.gpu_decode import jpeg_batch

    make_batch = jpeg_batch if decode == "gpu" else decode_packed_batch
    for path in item["path"]:
        with storage.errors_named(str(path)):
            table = pq.read_table(str(path), columns=STREAM_COLUMNS, filesystem=filesystem)
        if seed is not None and table.num_rows:
            table = table.take(pa.array(epoch_rng(seed, str(path)).permutation(table.num_rows)))
        for start in range(0, table.num_rows, batch_size):
            rows = table.slice(start, batch_size)
            if select is None:  # the packed frames are the sampled ones
                yield make_batch(rows, **decode_args)
            else:
                yield _sampled_batch(make_batch, rows, seed=seed, decode_args=decode_args, **select)


def packed_dataset(
    dataset: PreparedDataset,
    split: str,
    label_ids: dict[str, dict[str, int]],
    num_frames: int,
    image_size: int,
    scene_labels: str,
    shuffle_seed: int | None,
    keep_ids: bool,
    decode_batch_size: int = 12,
    decode: str = "cpu",
    sampling: Sampling | None = None,
):
    """The clips of one split streamed from a complete pack, or None when there is none.
    `decode_batch_size`: the batch size the consumer iterates with; `decode`: 'cpu' (pixels)
    or 'gpu' (JPEG bytes, decoded by the consumer: cg_ray.data.gpu_decode).

    Read and decode are one task per shard file (no block of JPEG bytes in between); with a
    seed the shard files come in a new order every epoch (a shuffle of file names, not of data)
    and so do the rows within each file.
    """
    import ray.data

    from cg_ray.data.order import reshuffled

    sampling = sampling or Sampling("uniform", num_frames)
    pack = serving_pack(dataset, sampling, image_size, REPORT)  # refuses a pack that cannot
    paths = packed_files(dataset, split, pack.frames, image_size, pack.kind) if pack else None
    if not paths:
        return None
    select = (
        None if is_identity(sampling, pack) else dict(sampling=sampling, kind=pack.kind, packed=pack.frames)
    )
    if decode == "gpu" and sampling.leading:
        log.warning("data.decode=gpu gives one view per clip; decoding %s views on the CPU", sampling.leading)
        decode = "cpu"
    per_clip = int(np.prod(sampling.leading, dtype=np.int64)) * sampling.num_frames
    items = [{"path": p} for p in paths]
    if shuffle_seed is None:
        ds = ray.data.from_items(items, override_num_blocks=len(paths))
    else:  # one file per task again after the shuffle
        ds = reshuffled(ray.data.from_items(items, override_num_blocks=1), shuffle_seed, len(paths))
    # Blocks of a multiple of the consumer's batch size: its batches are then zero-copy slices,
    # and bigger blocks spread Ray's per-block cost over more clips (measured: 0.75 ms of driver
    # CPU per clip with 12-clip blocks, 0.35 with 60).
    block = decode_batch_size * max(1, BLOCK_CLIPS // decode_batch_size)
    ds = ds.map_batches(
        read_and_decode,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs=dict(
            filesystem=dataset.fs,
            batch_size=block,
            seed=shuffle_seed,
            decode=decode,
            select=select,
            label_ids=label_ids,
            num_frames=num_frames,
            image_size=image_size,
            scene_labels=scene_labels,
            keep_ids=keep_ids,
        ),
    )
    # Each decoded batch is a block of its own: Ray Data would otherwise copy batches together
    # into ~128 MB blocks, one more pass over every pixel and more memory held per block.
    ds.context.target_max_block_size = block * per_clip * image_size**2 * 3 + 2**20
    return ds
