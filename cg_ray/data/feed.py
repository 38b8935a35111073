"""Batches to the device without stalling the step.

    feed = DeviceFeed(shard, batch_size, device)
    for batch in feed: step(batch)          # then feed.wait_s, feed.first_s, feed.first_rows

- Ray Data prefetches `prefetch_batches` batches in its threads and runs FeedCollate there
  (numpy -> CPU tensors, pinned when the device is a GPU).
- The host-to-device copy of batch k+1 is issued on a side CUDA stream before batch k is
  handed to the step, so the copy overlaps the step's kernels.
- With `data.decode=gpu` batches carry JPEG bytes (cg_ray.data.gpu_decode); they are decoded
  here, batched, on the device (on the side stream too). On a CPU device the same code runs
  torchvision's CPU decoder: that is how tests prove the GPU path without a GPU.
- `wait_s`: host time the consumer spent waiting for a batch (Ray Data plus the copy or decode
  it had to issue), `first_s`: the part of it before the first batch (pipeline start-up).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from cg_ray.data.gpu_decode import decode_video

PREFETCH_BATCHES = 2
JPEG_COLUMNS = ("jpeg", "jpeg_offsets")


class FeedCollate(NumpyBatchCollateFn):
    """numpy batch -> dict of CPU tensors (pinned when `pin`); string columns (clip_id) stay
    numpy and JPEG columns stay as they are for decode_video. Runs in Ray Data's threads."""

    def __init__(self, pin: bool = False):
        self.pin = pin

    def __call__(self, batch: dict[str, np.ndarray]) -> dict:
        out = {}
        for key, value in batch.items():
            if key in JPEG_COLUMNS or value.dtype.kind in "OUS":
                out[key] = value
                continue
            array = np.ascontiguousarray(value)
            if not array.flags.writeable:  # a zero-copy view of Ray's object store: the step's own copy
                array = array.copy()
            tensor = torch.from_numpy(array)
            out[key] = tensor.pin_memory() if self.pin else tensor
        return out


class DeviceFeed:
    """One pass over a Ray dataset (or a Ray Train shard) as dicts of tensors on `device`."""

    def __init__(
        self, dataset, batch_size: int, device: torch.device, prefetch_batches: int = PREFETCH_BATCHES
    ):
        self.dataset, self.batch_size, self.device = dataset, batch_size, torch.device(device)
        self.prefetch_batches = prefetch_batches
        self.cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.wait_s = self.first_s = 0.0
        self.batches = self.first_rows = 0

    def _host_batches(self):
        return iter(
            self.dataset.iter_torch_batches(
                batch_size=self.batch_size,
                prefetch_batches=self.prefetch_batches,
                device="cpu",
                collate_fn=FeedCollate(pin=self.cuda),
            )
        )

    def _to_device(self, batch: dict) -> dict:
        """Issue the copy (and the JPEG decode) of one batch; on CUDA it runs on the side
        stream and the batch carries the event the step's stream must wait for."""
        context = torch.cuda.stream(self.stream) if self.cuda else nullcontext()
        with context:
            out = {
                k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                for k, v in batch.items()
                if k not in JPEG_COLUMNS
            }
            if "jpeg" in batch:
                video, valid = decode_video(
                    batch["jpeg"], batch["jpeg_offsets"], batch["valid"].numpy(), device=self.device
                )
                out["video"] = video
                out["valid"] = torch.as_tensor(valid, device=self.device)
            event = None
            if self.cuda:
                event = torch.cuda.Event()
                event.record(self.stream)
        return {"batch": out, "event": event}

    def _ready(self, pending: dict) -> dict:
        batch = pending["batch"]
        if pending["event"] is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(pending["event"])
            for value in batch.values():  # memory made on the side stream, used on this one
                if isinstance(value, torch.Tensor):
                    value.record_stream(current)
        return batch

    def _next(self, iterator):
        start = time.perf_counter()
        try:
            pending = self._to_device(next(iterator))
        except StopIteration:
            pending = None
        waited = time.perf_counter() - start
        self.wait_s += waited
        if self.batches == 0:
            self.first_s = waited
            self.first_rows = len(pending["batch"]["valid"]) if pending else 0
        return pending

    def __iter__(self):
        iterator = self._host_batches()
        upcoming = self._next(iterator)
        while upcoming is not None:
            current = upcoming
            self.batches += 1
            upcoming = self._next(iterator)  # its copy overlaps the step on `current`
            yield self._ready(current)
