"""Where a training thread's wall time goes, from the Linux scheduler's own counters.

    watch = ProcessWatch("ray::RayTrainWorker"); watch.start(); ...; figures = watch.stop()
    with ThisThread() as mine: ...; mine.figures

/proc/PID/task/TID/schedstat holds, per thread, the nanoseconds it ran on a CPU and the
nanoseconds it was runnable but waiting for one (the run queue). The rest of its wall time it
slept: waiting for data, a lock or the GIL. On a small machine the run-queue share is what the
processes beside a training step cost it; a bare loop alone has next to none.

`ProcessWatch` samples, every `every` seconds, the threads of the first process whose command
line starts with `title` (a Ray actor's process title) and, at the end, takes the thread that
ran the most (the training thread) over its life or the last part of it, with the CPU that every
other process used meanwhile. Linux only: elsewhere the figures are empty.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import psutil


def _schedstat(pid: int, tid: int) -> tuple[int, int] | None:
    """(ns on a CPU, ns runnable waiting for one) of one thread: the run-queue figure that
    psutil does not give."""
    try:
        on_cpu, runnable, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        return int(on_cpu), int(runnable)
    except (OSError, ValueError):
        return None


def _find(title: str) -> int | None:
    """The first other process whose command line (arguments joined by spaces) starts with title."""
    for process in psutil.process_iter(["pid", "cmdline"]):
        if process.pid != os.getpid() and " ".join(process.info["cmdline"] or []).startswith(title):
            return process.pid
    return None


def _shares(wall_ns: int, on_cpu: int, runnable: int) -> dict:
    wall = max(wall_ns, 1)
    return {
        "cpu_share": round(on_cpu / wall, 3),
        "runqueue_share": round(runnable / wall, 3),
        "sleep_share": round(max(wall - on_cpu - runnable, 0) / wall, 3),
    }


class ProcessWatch:
    """The busiest thread of the process titled `title`, sampled in a thread of this process."""

    def __init__(self, title: str, every: float = 0.5):
        self.title, self.every = title, every
        self.samples: dict[int, list[tuple[int, int, int]]] = {}  # tid -> (wall ns, cpu ns, runq ns)
        self.others: list[tuple[float, dict[int, float]]] = []  # (wall s, {pid: CPU s}), others
        self.pid: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sched-watch", daemon=True)

    def start(self) -> ProcessWatch:
        if Path("/proc/self/task").is_dir():
            self._thread.start()
        return self

    def _others_cpu(self) -> dict[int, float]:
        found = {}
        for process in psutil.process_iter(["pid", "cpu_times"]):
            times = process.info["cpu_times"]
            if times is not None and process.pid not in (self.pid, os.getpid()):
                found[process.pid] = times.user + times.system
        return found

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.pid = self.pid or _find(self.title)
            if self.pid is None:
                continue
            now = time.monotonic_ns()
            try:
                tids = [int(t) for t in os.listdir(f"/proc/{self.pid}/task")]
            except OSError:  # the process ended
                break
            for tid in tids:
                stat = _schedstat(self.pid, tid)
                if stat is not None:
                    self.samples.setdefault(tid, []).append((now, *stat))
            self.others.append((now / 1e9, self._others_cpu()))

    def stop(self, tail: float = 1.0) -> dict:
        """Figures of the busiest thread over the last `tail` of its sampled life (0.5: its second
        half, e.g. the last of 2 epochs), and the cores the other processes used meanwhile."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        spans = {tid: s for tid, s in self.samples.items() if len(s) >= 2}
        if not spans:
            return {}
        tid = max(spans, key=lambda t: spans[t][-1][1] - spans[t][0][1])
        first, last = spans[tid][0][0], spans[tid][-1][0]
        kept = [x for x in spans[tid] if x[0] >= last - tail * (last - first)]
        (t0, c0, r0), (t1, c1, r1) = kept[0], kept[-1]
        window = [o for o in self.others if t0 / 1e9 <= o[0] <= t1 / 1e9]
        cores = None
        if len(window) >= 2:  # per process, between samples that both saw it
            used = sum(
                b[pid] - a[pid] for (_, a), (_, b) in zip(window, window[1:]) for pid in a.keys() & b.keys()
            )
            cores = used / max(window[-1][0] - window[0][0], 1e-9)
        return {
            **_shares(t1 - t0, c1 - c0, r1 - r0),
            "seconds": round((t1 - t0) / 1e9, 1),
            "other_processes_cores": None if cores is None else round(cores, 2),
        }


class ThisThread:
    """The same shares for the calling thread over a `with` block."""

    def __enter__(self) -> ThisThread:
        self.tid = threading.get_native_id()
        self.start = (time.monotonic_ns(), _schedstat(os.getpid(), self.tid))
        self.figures: dict = {}
        return self

    def __exit__(self, *exc) -> None:
        end, stat = time.monotonic_ns(), _schedstat(os.getpid(), self.tid)
        if stat is not None and self.start[1] is not None:
            (c0, r0), (c1, r1) = self.start[1], stat
            self.figures = _shares(end - self.start[0], c1 - c0, r1 - r0)
