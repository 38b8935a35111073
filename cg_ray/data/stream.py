"""Ray Data datasets that feed training, evaluation and prediction.

manifest.parquet -> rows of one split -> (shuffled, seeded, a new order every epoch) ->
decode T evenly spaced frames, resized -> uint8 batches with label ids and scene targets.

A clip that cannot be decoded does not stop the stream: it comes out as zeros with
`valid = False`, so the training loop can skip it and count it exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import ray.data

from cg_ray.data.decode import ClipError, decode_clip
from cg_ray.data.order import reshuffled
from cg_ray.data.prepared import PreparedDataset
from cg_ray.data.sampling import Sampling
from cg_ray.data.tables import scene_targets
from cg_ray.errors import UserError
from cg_ray.taxonomy import LEVELS, Taxonomy

log = logging.getLogger(__name__)


def decode_batch(
    batch: dict[str, np.ndarray],
    *,
    label_ids: dict[str, dict[str, int]],
    num_frames: int,
    image_size: int,
    scene_labels: str,
    keep_ids: bool,
    sampling: Sampling | None = None,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """Manifest rows -> model inputs. video: (B, T, S, S, 3) uint8; with a sampling
    (B, *sampling.leading, T, S, S, 3), training draws seeded by (seed, epoch, clip)."""
    from cg_ray.data.shards import epoch_rng

    n = len(batch["source"])
    sampling = sampling or Sampling("uniform", num_frames)
    video = np.zeros((n, *sampling.leading, sampling.num_frames, image_size, image_size, 3), dtype=np.uint8)
    valid = np.ones(n, dtype=bool)
    frame_lists = batch.get("frames")  # explicit frame files (MSLS sequences), else None
    for i, source in enumerate(batch["source"]):
        names = None if frame_lists is None or frame_lists[i] is None else [str(f) for f in frame_lists[i]]
        try:
            rng = epoch_rng(seed or 0, f"frames:{batch['clip_id'][i]}") if sampling.training else None
            video[i] = decode_clip(
                str(source), num_frames, image_size, frames=names, sampling=sampling, rng=rng
            )
        except ClipError as exc:
            log.warning("skipping clip %s: %s", batch["clip_id"][i], exc)
            valid[i] = False
    out = {"video": video, "valid": valid}
    for level in LEVELS:
        out[level] = np.array([label_ids[level][str(v)] for v in batch[level]], dtype=np.int64)
    out["scene"] = scene_targets(batch.get("scene_soft"), n, scene_labels, batch.get("scene_majority"))
    if keep_ids:
        out["clip_id"] = np.asarray(batch["clip_id"]).astype(str)
    return out


def clip_dataset(
    dataset: PreparedDataset | str,
    split: str,
    taxonomy: Taxonomy,
    num_frames: int,
    image_size: int,
    scene_labels: str = "soft",
    shuffle_seed: int | None = None,
    keep_ids: bool = False,
    decode_batch_size: int = 4,
    decode: str = "cpu",
    sampling: Sampling | None = None,
) -> ray.data.Dataset:
    """The decoded clips of one split as a Ray Dataset (streamed; nothing materialized).

    `sampling` (default: uniform num_frames) picks each clip's frames. Reads packed shards when
    `cg-ray pack` made one at image_size that serves the sampling (cg_ray.data.packed_sampling),
    else decodes the raw clips; the columns are the same either way. decode='gpu' (packed shards
    only; see resolve_decode) leaves the JPEGs to the consumer: `jpeg` and `jpeg_offsets`
    columns instead of `video` (cg_ray.data.gpu_decode, cg_ray.data.feed).
    """
    from cg_ray.data.shards import packed_dataset

    dataset = PreparedDataset.open(dataset)
    label_ids = {level: taxonomy.index(level) for level in LEVELS}
    packed = packed_dataset(
        dataset,
        split,
        label_ids,
        num_frames,
        image_size,
        scene_labels,
        shuffle_seed,
        keep_ids,
        decode_batch_size,
        decode,
        sampling,
    )
    if packed is not None:
        return packed
    if decode == "gpu":
        raise UserError(
            f"data.decode=gpu needs packed shards of '{dataset}' for "
            f"{num_frames} frames at {image_size}: run `cg-ray pack` first"
        )
    # Rows of the manifest are small: shuffling them before decoding is cheap.
    ds = _manifest_rows(dataset, split, 16 * decode_batch_size, shuffle_seed)
    return ds.map_batches(
        decode_batch,
        batch_size=decode_batch_size,
        batch_format="numpy",
        fn_kwargs=dict(
            label_ids=label_ids,
            num_frames=num_frames,
            image_size=image_size,
            scene_labels=scene_labels,
            keep_ids=keep_ids,
            sampling=sampling,
            seed=shuffle_seed,
        ),
    )


def _manifest_rows(
    dataset: PreparedDataset, split: str, rows_per_block: int, shuffle_seed: int | None = None
) -> ray.data.Dataset:
    """The manifest rows of one split, read here and handed to Ray Data as in-memory blocks
    (with a seed: in a new order every epoch, see reshuffled).

    A manifest is small beside the clips (paths, labels and scene targets: tens of MB for
    CityGuessr68k's 68k clips), and
    `ray.data.read_parquet` of one small file cost 3.5-4.6 s per execution on 2 cores (its
    ListFiles task alone), i.e. per epoch and split. Blocks of `rows_per_block` rows let the
    decode tasks run in parallel. `from_blocks` reads each block's metadata here, where
    `from_arrow` runs a Ray task per block for it: 1.4 s against 0.02 s for the 8 blocks of a
    60-clip split; a 200,000-row split's first batch after 21-24 s instead of 40-49 s
    (benchmarks/manifest_scale.py)."""
    table = dataset.manifest(split)
    step = max(rows_per_block, 1)
    if shuffle_seed is not None:
        return reshuffled(ray.data.from_blocks([table]), shuffle_seed, max(-(-table.num_rows // step), 1))
    return ray.data.from_blocks([table.slice(i, step) for i in range(0, max(table.num_rows, 1), step)])
