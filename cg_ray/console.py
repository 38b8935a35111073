"""What the commands print for people: fixed-width tables and progress.

Progress is a live bar on a terminal and a plain line every `every` seconds anywhere else (logs,
Ray jobs, the lines Ray forwards from a training worker), so a ten-hour run shows where it is
without flooding its log. `CG_RAY_QUIET=1` (what `--quiet` sets) turns it off everywhere.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

from cg_ray.taxonomy import LEVELS

QUIET_ENV = "CG_RAY_QUIET"
EVERY_ENV = "CG_RAY_PROGRESS_EVERY"  # seconds between progress lines in logs


def format_table(rows: dict[str, dict]) -> str:
    """Rows (name -> metrics) as a fixed-width table of top-1 and top-5 per level."""
    head = f"{'':<14}" + "".join(f"{lvl + ' @1':>14}{'@5':>8}" for lvl in LEVELS)
    lines = [head]
    for name, m in rows.items():
        lines.append(
            f"{name:<14}" + "".join(f"{m[f'{lvl}_top1']:>14.1f}{m[f'{lvl}_top5']:>8.1f}" for lvl in LEVELS)
        )
    return "\n".join(lines)


def quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


@contextlib.contextmanager
def quiet_mode(on: bool):
    """`--quiet` for one command: no progress here, nor in the Ray workers it starts (cg_ray.
    ray_env passes the variable on); the environment is restored afterwards."""
    # CG_RAY_PROGRESS=1 turns Ray Data's own bars on (cg_ray.ray_env); --quiet turns them off.
    names = (QUIET_ENV, "CG_RAY_PROGRESS", "RAY_DATA_DISABLE_PROGRESS_BARS")
    before = {name: os.environ.get(name) for name in names}
    if on:
        os.environ.update({QUIET_ENV: "1", "CG_RAY_PROGRESS": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"})
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def default_every() -> float:
    return float(os.environ.get(EVERY_ENV, "30"))


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class Progress:
    """Progress of `total` units (clips, frames, shards) done in one pass.

        progress = Progress("epoch 3/10", total=5000)
        for batch in batches:
            ...
            progress.update(done, loss=2.31)
        progress.close(done)

    A terminal gets a bar redrawn at most 5 times a second; other streams a line every `every`
    seconds (default $CG_RAY_PROGRESS_EVERY, else 30) and one at close. Rate and ETA are
    measured over this pass; with `passes_after` (epochs still to come after this one) the line
    also shows the whole run's ETA. A total is taken as an estimate: once the count passes it,
    and at the close when the count differs from it, the line shows the count without a bar or
    ETA (never "12/6 clips", nor a pass ending at "4/6").
    """

    def __init__(
        self,
        label: str,
        total: int | None,
        unit: str = "clips",
        every: float | None = None,
        stream: TextIO | None = None,
        enabled: bool | None = None,
        passes_after: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = (not quiet()) if enabled is None else enabled
        self.live = self.enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = 0.2 if self.live else (default_every() if every is None else every)
        self.clock = clock
        self.start = self.last = clock()
        self.done, self.passes_after = 0, passes_after
        self.extras: dict[str, object] = {}

    def rate(self) -> float:
        return self.done / max(self.clock() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        parts = [self.label]
        if self.total and self.done > self.total:
            # The total was an estimate (a worker's share of a split taken unequally, as the
            # val split is) and the count has passed it: count up from here, as with no total.
            self.total = None
        if self.total:
            width = 20
            filled = min(width, int(width * self.done / self.total))
            parts.append(f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {self.unit}")
        else:
            parts.append(f"{self.done} {self.unit}")
        parts.append(f"{rate:.1f} {self.unit}/s")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.extras.items()]
        if self.total and rate > 0:
            left = max(self.total - self.done, 0) / rate
            parts.append(f"ETA {_duration(left)}")
            if self.passes_after:
                run_left = left + self.passes_after * self.total / rate
                parts.append(f"(all {_duration(run_left)})")
        return " ".join(parts)

    def update(self, done: int, **extras) -> None:
        """`done` units so far, and values to show beside them (loss=2.31)."""
        self.done = done
        self.extras.update(extras)
        if self.enabled and self.clock() - self.last >= self.every:
            self._show()

    def close(self, done: int | None = None, **extras) -> None:
        if done is not None:
            self.done = done
        if self.total and self.done != self.total:  # an estimate, and the pass is over: the count
            self.total = None
        self.extras.update(extras)
        self.passes_after = 0
        if self.enabled:
            self._show(final=True)

    def _show(self, final: bool = False) -> None:
        self.last = self.clock()
        if self.live:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
