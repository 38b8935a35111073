"""Samplings served from packed shards: which pack can serve one, and its frames of packed rows.

A pack holds F frames per clip, of one of two kinds (`cg-ray pack --frames F --sampling KIND`):

    uniform    F frames evenly spaced over the clip (DEST/shards/frames{F}_size{S}); the loader
               samples from them as from a clip of F frames: uniform T of F, random one per
               segment of F/T, bidirectional's two views, K evaluation views. It serves a
               sampling when F >= Sampling.pack_frames_needed() (T for uniform, 2T for random and
               bidirectional, K times that for K views); F = T with uniform is the raw decode.
    official   the authors' picks themselves, every 5th frame from the first
               (DEST/shards/frames{F}_size{S}_official); serves `official` with F >= T.

Of the complete packs at the configured size that serve the sampling, the one with the fewest
frames is read. No pack at that size: the raw clips are decoded (clip_dataset). Packs at that
size but none that serves: a UserError naming the `cg-ray pack` command that makes one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cg_ray.data.sampling import Sampling
from cg_ray.errors import UserError

PACK_KINDS = ("uniform", "official")
PACK_NAME = re.compile(r"^frames(\d+)_size(\d+)(?:_(official))?$")


@dataclass(frozen=True)
class PackChoice:
    """A complete pack: its folder, frames per clip and kind."""

    root: str
    frames: int
    kind: str


def pack_name(num_frames: int, image_size: int, kind: str = "uniform") -> str:
    return f"frames{num_frames}_size{image_size}" + ("" if kind == "uniform" else f"_{kind}")


def pack_command(data_path: str, frames: int, image_size: int, kind: str) -> str:
    option = f" --sampling {kind}" if kind != "uniform" else ""
    return f"cg-ray pack {data_path} --frames {frames} --size {image_size}{option}"


def serving_pack(dataset, sampling: Sampling, image_size: int, report: str) -> PackChoice | None:
    """The pack to stream `sampling` from (fewest frames that serve), or None when there is no
    complete pack at `image_size`; a UserError when there are packs but none serves."""
    packs = dataset.complete_packs(image_size, report)  # a cg_ray.data.prepared.PreparedDataset
    if not packs:
        return None
    kind, needed = sampling.pack_kind(), sampling.pack_frames_needed()
    fits = [p for p in packs if p.kind == kind and p.frames >= needed]
    if fits:
        return fits[0]
    views = f" and eval.views={sampling.views}" if sampling.views > 1 else ""
    names = ", ".join(p.root.rstrip("/").rsplit("/", 1)[-1] for p in packs)
    raise UserError(
        f"the packed shards of '{dataset}' ({names}) cannot serve "
        f"data.sampling={sampling.name} with {sampling.num_frames} frames{views}: it "
        f"needs a{'n' if kind == 'official' else ''} {kind} pack of at least {needed} "
        f"frames at {image_size}; run `{pack_command(str(dataset), needed, image_size, kind)}`"
    )


def is_identity(sampling: Sampling, pack: PackChoice) -> bool:
    """Whether the packed frames are the sampled ones as they stand (no selection needed)."""
    if pack.frames != sampling.num_frames or sampling.leading:
        return False
    return sampling.name == "official" if pack.kind == "official" else sampling.name == "uniform"


def frames_in_pack(sampling: Sampling, pack_kind: str, packed: int, rng=None) -> np.ndarray:
    """Indices into a clip's `packed` frames, shaped sampling.leading + (T,)."""
    if pack_kind == "official":
        return np.arange(sampling.num_frames, dtype=np.int64)  # the picks themselves, first T
    return sampling.indices(packed, rng)


def select_frames(table: pa.Table, sampling: Sampling, pack_kind: str, packed: int, rng_for=None) -> pa.Table:
    """Packed rows -> the same rows whose `frames` hold only the sampled JPEGs, in order
    (sampling.leading x T of them, flattened); a clip without its `packed` frames (an error,
    a damaged shard) gets none. Arrow takes the JPEG bytes: no Python copy of them.
    `rng_for(clip_id)`: the generator of a clip's random draws (training)."""
    frames = table.column("frames")
    frames = frames.combine_chunks() if isinstance(frames, pa.ChunkedArray) else frames
    starts = frames.offsets.to_numpy()
    ids = table.column("clip_id").to_pylist()
    errors = table.column("error").to_pylist()
    take, offsets = [np.zeros(0, np.int64)], [0]
    for i in range(len(frames)):
        count = int(starts[i + 1] - starts[i]) if frames[i].is_valid else 0
        picks = take[0]
        if errors[i] is None and count == packed:
            rng = rng_for(ids[i]) if rng_for is not None else None
            picks = starts[i] + frames_in_pack(sampling, pack_kind, packed, rng).ravel()
        take.append(picks)
        offsets.append(offsets[-1] + len(picks))
    flat = np.concatenate(take)
    values = pc.take(frames.values, pa.array(flat, type=pa.int64()))
    chosen = pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), values)
    return table.set_column(table.schema.get_field_index("frames"), "frames", chosen)
