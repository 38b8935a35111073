"""`cg-ray bench data`: clips/s delivered to a training step, and the memory it takes.

The clips come out of clip_dataset() (packed shards when they exist, else raw clips) through
DeviceFeed (cg_ray.data.feed), exactly as a Ray Train worker's loop receives them; nothing else
runs.
"""

from __future__ import annotations

import os
import threading
import time

import psutil

from cg_ray.errors import UserError


class MemorySampler:
    """Peak memory of this process and of everything it started (local Ray's workers, raylet,
    object store), sampled every `interval` s. Processes are summed by PSS, which splits shared
    pages (the object store's) between the processes that map them, so nothing counts twice."""

    def __init__(self, interval: float = 0.5):
        self.interval = interval
        self.peak_tree_mb = 0.0
        self.peak_self_mb = 0.0
        self.own_cpu_s = 0.0  # reading /proc costs CPU: measurements subtract it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _memory(process: psutil.Process) -> float:
        try:
            info = process.memory_full_info()
            return getattr(info, "pss", info.rss)
        except (psutil.Error, OSError):
            return 0.0

    def sample(self) -> None:
        me = psutil.Process()
        tree = [me] + me.children(recursive=True)
        total = sum(self._memory(p) for p in tree) / 2**20
        self.peak_tree_mb = max(self.peak_tree_mb, total)
        self.peak_self_mb = max(self.peak_self_mb, me.memory_info().rss / 2**20)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            start = time.thread_time()
            self.sample()
            self.own_cpu_s += time.thread_time() - start

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def cpu_by_role() -> dict[str, float]:
    """CPU seconds used so far by this process ("driver"), Ray's worker processes ("workers":
    where the decoding runs) and everything else it started ("ray daemons": raylet, GCS, ...)."""
    me = psutil.Process()
    roles = {"driver": 0.0, "workers": 0.0, "ray_daemons": 0.0}
    for process in [me] + me.children(recursive=True):
        try:
            times = process.cpu_times()
            name = process.name()
        except psutil.Error:
            continue
        role = (
            "driver"
            if process.pid == me.pid
            else "workers"
            if name.startswith("ray::") and "Actor" not in name and "Agent" not in name
            else "ray_daemons"
        )
        roles[role] += times.user + times.system
    return roles


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and all its live descendants."""
    return sum(cpu_by_role().values())


def bench_data(
    data_path: str,
    clips: int = 512,
    split: str = "train",
    num_frames: int = 16,
    image_size: int = 224,
    batch_size: int = 12,
    seed: int = 0,
) -> dict:
    """Stream up to `clips` clips of a split as a training worker gets them; returns clips_per_s
    (after the first batch: start-up is reported apart), peak_rss_mb and details."""
    import torch

    from cg_ray.data.feed import DeviceFeed
    from cg_ray.data.prepared import PreparedDataset
    from cg_ray.data.shards import packed_files
    from cg_ray.data.stream import clip_dataset
    from cg_ray.ray_env import init_ray

    if clips < batch_size * 2:
        raise UserError(f"--clips {clips} is too few to measure; use at least {batch_size * 2}")
    dataset = PreparedDataset.open(data_path)
    taxonomy = dataset.taxonomy
    packed = packed_files(dataset, split, num_frames, image_size) is not None
    with MemorySampler() as memory:
        init_ray()
        start = time.perf_counter()
        ds = clip_dataset(
            dataset,
            split,
            taxonomy,
            num_frames,
            image_size,
            shuffle_seed=seed,
            decode_batch_size=batch_size,
        )  # as training builds it
        seen, first, checksum, epochs = 0, None, 0, 0
        while seen < clips:
            epochs += 1
            before = seen
            for batch in DeviceFeed(ds, batch_size, torch.device("cpu")):
                video = batch["video"]
                assert video.dtype == torch.uint8 and video.shape[1:] == (
                    num_frames,
                    image_size,
                    image_size,
                    3,
                )
                checksum += int(video[:, 0, 0, 0, 0].sum())  # touch the batch, as a step would
                seen += len(video)
                if first is None:
                    first, first_clips, first_roles = time.perf_counter(), seen, cpu_by_role()
                    first_own = memory.own_cpu_s
                if seen >= clips:
                    break
            if seen == before:
                raise UserError(f"split '{split}' of '{data_path}' has no clips")
        end, end_roles = time.perf_counter(), cpu_by_role()
        end_roles["driver"] -= memory.own_cpu_s - first_own  # not the sampler's /proc reading
    steady = (seen - first_clips) / max(end - first, 1e-9)
    # Where the CPU goes, per clip delivered in the steady phase.
    ms_per_clip = {
        role: round(1000 * (end_roles[role] - first_roles[role]) / max(seen - first_clips, 1), 3)
        for role in end_roles
    }
    cpu_per_clip_s = sum(ms_per_clip.values()) / 1000
    return {
        "clips_per_s": round(steady, 2),
        "peak_rss_mb": round(memory.peak_tree_mb, 1),
        # Per core, whatever else the machine runs: clips per CPU-second of every process
        # involved (this one, Ray's workers and daemons), over the same steady phase.
        "clips_per_cpu_s": round(1 / max(cpu_per_clip_s, 1e-9), 2),
        "cpu_ms_per_clip": ms_per_clip,
        "driver_peak_rss_mb": round(memory.peak_self_mb, 1),
        "clips": seen,
        "epochs": epochs,
        "first_batch_s": round(first - start, 2),
        "seconds": round(end - start, 2),
        "source": "shards" if packed else "raw",
        "num_frames": num_frames,
        "image_size": image_size,
        "batch_size": batch_size,
        "cpus": os.cpu_count(),
    }
