"""Batch prediction with Ray Data: thousands of clips -> one parquet file of predictions.

list of inputs (CSV | folder | URI)
  -> Ray Data: decode (a bad clip becomes a row with an error, never a crash)
  -> predict in an actor pool sized to the cluster (one actor per GPU, else one per CPU)
  -> the driver streams rows into OUT.parquet, shows progress, reports the bad clips.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cg_ray import storage
from cg_ray.console import Progress
from cg_ray.data.listing import list_inputs
from cg_ray.errors import UserError
from cg_ray.ray_env import pool_plan
from cg_ray.resources import pool_resources
from cg_ray.taxonomy import LEVELS

OUTPUT_SCHEMA = pa.schema(
    [("input", pa.string())]
    + [(f"pred_{level}", pa.string()) for level in LEVELS]
    + [(f"prob_{level}", pa.float32()) for level in LEVELS]
    + [
        f
        for level in LEVELS
        for f in ((f"top_{level}", pa.list_(pa.string())), (f"top_{level}_prob", pa.list_(pa.float32())))
    ]
)


# -- the Ray Data stages --------------------------------------------------------------------------


def decode_inputs(
    batch: dict[str, np.ndarray], num_frames: int, image_size: int, sampling=None
) -> dict[str, np.ndarray]:
    """{input} -> {input, video (B, *sampling.leading, T, S, S, 3) uint8, error ('' when
    decoded)}; `sampling`: the checkpoint's (data.sampling, eval.views), default uniform T."""
    from cg_ray.data.decode import decode_clip
    from cg_ray.data.sampling import Sampling

    n = len(batch["input"])
    sampling = sampling or Sampling("uniform", num_frames)
    video = np.zeros((n, *sampling.leading, num_frames, image_size, image_size, 3), dtype=np.uint8)
    errors = [""] * n
    for i, source in enumerate(batch["input"]):
        try:
            video[i] = decode_clip(str(source), num_frames, image_size, sampling=sampling)
        except UserError as exc:
            errors[i] = str(exc) or type(exc).__name__
    return {
        "input": np.asarray(batch["input"]).astype(str),
        "video": video,
        "error": np.array(errors, dtype=object),
    }


class ClipPredictor:
    """One actor of the pool: the checkpoint loaded once, then batches of clips -> rows."""

    def __init__(self, checkpoint_ref: list, mode: str, top_k: int, use_gpu: bool):
        import ray
        import torch

        from cg_ray.predict.predictor import Predictor
        from cg_ray.train.checkpoint import FILENAME, load_model

        # The driver sent the checkpoint's bytes: workers on other nodes cannot see its disk.
        with tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, FILENAME), "wb") as f:
                f.write(ray.get(checkpoint_ref[0]))
            loaded = load_model(folder)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.predictor = Predictor(loaded, mode, top_k, device)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ok = batch["error"] == ""
        rows = self.predictor.predict(batch["video"][ok]) if ok.any() else []
        return prediction_table(
            batch["input"][ok].tolist(), rows, batch["input"][~ok].tolist(), batch["error"][~ok].tolist()
        )


def prediction_table(
    inputs: list[str], rows: list[dict], bad_inputs: list[str], errors: list[str]
) -> pa.Table:
    """OUTPUT_SCHEMA rows for the predicted clips plus an `error` column; bad clips have only
    `input` and `error` (the driver splits them off)."""
    columns: dict[str, list] = {"input": inputs + bad_inputs}
    pad = [None] * len(bad_inputs)
    for level in LEVELS:
        columns[f"pred_{level}"] = [r[level] for r in rows] + pad
        columns[f"prob_{level}"] = [r["top_k"][level][0]["prob"] for r in rows] + pad
        columns[f"top_{level}"] = [[t["label"] for t in r["top_k"][level]] for r in rows] + pad
        columns[f"top_{level}_prob"] = [[t["prob"] for t in r["top_k"][level]] for r in rows] + pad
    schema = OUTPUT_SCHEMA.append(pa.field("error", pa.string()))
    columns["error"] = [None] * len(rows) + list(errors)
    return pa.table(columns, schema=schema)


# -- the driver -----------------------------------------------------------------------------------


def _inference_bytes(path: str) -> bytes:
    """The checkpoint without optimizer and scheduler state: all an actor needs, ~1/3 the size."""
    import torch

    from cg_ray.train.checkpoint import read_checkpoint

    state = read_checkpoint(path)
    state.update(optimizer=None, scheduler=None)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def errors_path(out: str) -> str:
    stem = out[: -len(".parquet")] if out.endswith(".parquet") else out
    return stem + ".errors.csv"


def batch_predict(
    checkpoint: str,
    input_list: str,
    out: str,
    mode: str = "codependent",
    top_k: int = 5,
    batch_size: int = 16,
    actors: int | None = None,
    progress_every: float = 5.0,
) -> dict:
    """Predict every clip of `input_list` into `out` (parquet, OUTPUT_SCHEMA); clips that cannot
    be decoded go to `<out>.errors.csv`. Returns counts, timing and the pool that ran."""
    from cg_ray.predict.predictor import Predictor, open_checkpoint
    from cg_ray.ray_env import init_ray

    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    loaded, path = open_checkpoint(checkpoint)
    checked = Predictor(loaded, mode, top_k)  # a bad mode or top-k fails here, before Ray starts
    sources = list_inputs(input_list)
    if not sources:
        raise UserError(f"no videos or frame folders in '{input_list}'")
    init_ray()
    plan = pool_plan(pool_resources(), actors)
    ds = _dataset(sources, path, loaded.config.data, plan, mode, top_k, batch_size, sampling=checked.sampling)
    start = time.perf_counter()
    progress = Progress("batch predict", len(sources), every=progress_every)
    done, bad, first = _write(ds, out, progress)
    seconds = time.perf_counter() - start
    summary = {
        "out": out,
        "clips": len(sources),
        "predicted": done - len(bad),
        "bad": len(bad),
        "seconds": round(seconds, 2),
        "clips_per_s": round(done / max(seconds, 1e-9), 2),
        "first_rows_s": round(first[0] - start, 2),
        "first_rows": first[1],
        "actors": plan["actors"],
        "use_gpu": plan["use_gpu"],
    }
    if bad:
        summary["errors_out"] = errors_path(out)
        storage.write_text(summary["errors_out"], _errors_csv(sorted(bad)))
        for source, error in sorted(bad)[:5]:
            print(f"cg-ray predict: skipped {source}: {error}", file=sys.stderr)
    if done == len(bad):
        raise UserError(
            f"none of the {len(sources)} clips could be decoded; reasons in {summary['errors_out']}"
        )
    return summary


def _dataset(
    sources: list[str], path: str, data, plan: dict, mode: str, top_k: int, batch_size: int, sampling=None
):
    """sources -> decoded clips -> prediction rows, as a lazy Ray Dataset; `sampling`: the
    checkpoint's (what its Predictor expects)."""
    import ray
    import ray.data

    ds = ray.data.from_items(
        [{"input": s} for s in sources],
        # small blocks: work spreads over every actor, progress moves
        override_num_blocks=min(1000, max(1, len(sources) // 4)),
    )
    ds = ds.map_batches(
        decode_inputs,
        batch_size=4,
        batch_format="numpy",
        fn_kwargs=dict(num_frames=data.num_frames, image_size=data.image_size, sampling=sampling),
    )
    return ds.map_batches(
        ClipPredictor,
        batch_size=batch_size,
        batch_format="numpy",
        fn_constructor_kwargs=dict(
            checkpoint_ref=[ray.put(_inference_bytes(path))], mode=mode, top_k=top_k, use_gpu=plan["use_gpu"]
        ),
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=plan["actors"]),
        num_cpus=1,
        num_gpus=plan["num_gpus"],
    )


def _write(ds, out: str, progress: Progress) -> tuple[int, list, tuple[float, int]]:
    """Stream the rows into one parquet file at `out`. Returns (rows seen, [(input, error)] of
    the bad ones, (time.perf_counter() and rows of the first batch back))."""
    done, bad, first = 0, [], None
    fs, inner = storage.filesystem(out)
    fs.create_dir(posixpath.dirname(inner) if storage.is_uri(out) else os.path.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as sink, pq.ParquetWriter(sink, OUTPUT_SCHEMA) as writer:
        for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            first = first or (time.perf_counter(), table.num_rows)
            failed = table.column("error").is_valid()
            bad.extend(zip(*(table.filter(failed).column(c).to_pylist() for c in ("input", "error"))))
            good = table.filter(pc.invert(failed)).select(OUTPUT_SCHEMA.names)
            if good.num_rows:
                writer.write_table(good.cast(OUTPUT_SCHEMA))
            done += table.num_rows
            progress.update(done, bad=len(bad))
    progress.close(done, bad=len(bad))
    return done, bad, first or (time.perf_counter(), 0)


def _errors_csv(rows: list[tuple[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "error"])
    writer.writerows(rows)
    return buffer.getvalue()
