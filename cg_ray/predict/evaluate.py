"""Running a trained checkpoint over a prepared dataset: probabilities, metrics, predictions."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from cg_ray import storage
from cg_ray.console import Progress
from cg_ray.errors import UserError
from cg_ray.evaluation import MODES, Accuracy, top1, view_probs
from cg_ray.predict.registry import resolve_checkpoint
from cg_ray.taxonomy import LEVELS
from cg_ray.train.checkpoint import LoadedModel, load_model


@dataclass
class DatasetProbs:
    """Softmax outputs over a split (before any hierarchical product)."""

    clip_ids: list[str]
    labels: dict[str, np.ndarray]  # level -> (N,) true ids
    probs: dict[str, np.ndarray]  # level -> (N, n_level)
    bad_clips: int
    seconds: float
    split_clips: int = 0  # what the manifest lists for the split: evaluated + bad, always


@torch.no_grad()
def predict_split(
    loaded: LoadedModel,
    data_path: str,
    split: str,
    batch_size: int = 32,
    decode: str | None = None,
    views: int | None = None,
) -> DatasetProbs:
    """Stream one split through Ray Data and the model (in this process, on its GPU when it
    has one). `decode`: data.decode (default: the checkpoint's; see resolve_decode). `views`:
    temporal clips per video, their softmax outputs averaged (default: the checkpoint's
    eval.views); frames are taken by the checkpoint's data.sampling."""
    from cg_ray.data.feed import DeviceFeed
    from cg_ray.data.gpu_decode import resolve_decode
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.sampling import eval_sampling
    from cg_ray.data.shards import REPORT
    from cg_ray.data.stream import clip_dataset
    from cg_ray.ray_env import init_ray

    dataset = PreparedDataset.open(data_path)
    differences = loaded.taxonomy.differences(dataset.taxonomy)
    if differences:
        raise UserError(f"the checkpoint's taxonomy differs from the dataset's: {differences[0]}")
    listed = dataset.splits.get(split, 0)
    if not listed:
        raise UserError(f"dataset '{dataset}' has no clips in split '{split}'")
    init_ray()
    d = loaded.config.data
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    packed = bool(dataset.complete_packs(d.image_size, REPORT))
    decode = resolve_decode(decode or d.decode, device.type == "cuda", packed)
    model = loaded.model.to(device).eval()
    bf16 = device.type == "cuda" and loaded.config.train.precision != "fp32"
    sampling = eval_sampling(loaded.config, views)
    ds = clip_dataset(
        dataset,
        split,
        loaded.taxonomy,
        d.num_frames,
        d.image_size,
        keep_ids=True,
        decode_batch_size=batch_size,
        decode=decode,
        sampling=sampling,
    )
    ids, labels, probs, bad = [], {lvl: [] for lvl in LEVELS}, {lvl: [] for lvl in LEVELS}, 0
    start = time.perf_counter()
    progress = Progress(f"evaluate {split}", listed)
    for batch in DeviceFeed(ds, batch_size, device):
        valid = batch["valid"].cpu().numpy()
        bad += int((~valid).sum())
        progress.update(len(ids) + bad + int(valid.sum()), bad=bad)
        if not valid.any():
            continue
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            clip_probs = view_probs(
                model, batch["video"][torch.as_tensor(valid, device=device)], sampling.views
            )
        ids.extend(batch["clip_id"][valid].tolist())
        for level in LEVELS:
            labels[level].append(batch[level].cpu().numpy()[valid])
            probs[level].append(clip_probs[level].cpu().numpy())
    progress.close(len(ids) + bad, bad=bad)
    if not ids:
        raise UserError(f"no clip of split '{split}' in '{data_path}' could be decoded")
    if len(ids) + bad != listed:
        # Metrics over a subset that is not the split (minus its bad clips) would change with
        # whatever lost them: refuse rather than report them.
        raise RuntimeError(
            f"evaluate: {len(ids)} clips evaluated and {bad} bad, but split '{split}' of "
            f"'{data_path}' lists {listed}: clips were lost on the way; no metrics reported"
        )
    return DatasetProbs(
        ids,
        {lvl: np.concatenate(labels[lvl]) for lvl in LEVELS},
        {lvl: np.concatenate(probs[lvl]) for lvl in LEVELS},
        bad,
        time.perf_counter() - start,
        listed,
    )


def metrics_for(result: DatasetProbs, loaded: LoadedModel, mode: str) -> dict[str, float]:
    accuracy = Accuracy(loaded.taxonomy, mode)
    accuracy.update(
        {lvl: torch.from_numpy(p) for lvl, p in result.probs.items()},
        {lvl: torch.from_numpy(y) for lvl, y in result.labels.items()},
    )
    return {
        **accuracy.metrics(),
        "num_clips": len(result.clip_ids),
        "bad_clips": result.bad_clips,
        "split_clips": result.split_clips,
        "clips_per_s": len(result.clip_ids) / max(result.seconds, 1e-9),
    }


def write_predictions(path: str, result: DatasetProbs, loaded: LoadedModel, mode: str) -> None:
    """One row per clip: clip_id, true and predicted names per level, the four prob vectors."""
    names = loaded.taxonomy.labels
    top = top1({lvl: torch.from_numpy(p) for lvl, p in result.probs.items()}, loaded.taxonomy, mode)
    columns: dict[str, pa.Array] = {"clip_id": pa.array(result.clip_ids)}
    for level in LEVELS:
        columns[f"true_{level}"] = pa.array([names[level][i] for i in result.labels[level]])
    for level in LEVELS:
        columns[f"pred_{level}"] = pa.array([names[level][i] for i in top[level].tolist()])
    for level in LEVELS:
        columns[f"prob_{level}"] = pa.array(
            list(result.probs[level].astype(np.float32)), type=pa.list_(pa.float32())
        )
    sink = io.BytesIO()
    pq.write_table(pa.table(columns), sink)
    storage.write_bytes(path, sink.getvalue())


def evaluate(
    checkpoint: str,
    data_path: str,
    split: str = "val",
    modes=MODES,
    predictions_out: str | None = None,
    batch_size: int = 32,
    views: int | None = None,
) -> dict[str, dict]:
    """Metrics per mode for a checkpoint on a split; predictions (of the first mode) on request.
    `views`: temporal clips per video (default: the checkpoint's eval.views)."""
    loaded = load_model(resolve_checkpoint(checkpoint))
    result = predict_split(loaded, data_path, split, batch_size, views=views)
    if predictions_out:
        write_predictions(predictions_out, result, loaded, modes[0])
    return {mode: metrics_for(result, loaded, mode) for mode in modes}
