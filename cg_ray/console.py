"""What the commands print for people: fixed-width tables, progress, and a console that is ours.

Progress is a live bar on a terminal and a plain line every `every` seconds anywhere else (logs,
Ray jobs, the lines Ray forwards from a training worker), so a ten-hour run shows where it is
without flooding its log. `CG_RAY_QUIET=1` (what `--quiet` sets) turns it off everywhere.

A command's terminal shows cg_ray's lines and the warnings and errors of every library; the INFO
lines of Ray, MLflow and the rest go to the command's log file (`open_log`, named on stderr when
it opens), and with `--verbose` (`CG_RAY_VERBOSE=1`) to the terminal as well. What Ray's worker
processes print is kept quiet in them (cg_ray.ray_env), since it reaches the terminal unfiltered.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

from cg_ray.taxonomy import LEVELS

QUIET_ENV = "CG_RAY_QUIET"
EVERY_ENV = "CG_RAY_PROGRESS_EVERY"  # seconds between progress lines in logs
VERBOSE_ENV = "CG_RAY_VERBOSE"
LOG_NAME = "cg-ray.log"  # in a run's folder, or the demo's


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


def verbose() -> bool:
    """Whether Ray's and MLflow's INFO lines show on the terminal too (`--verbose`)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


# The libraries that give their loggers console handlers of their own (and propagate=False):
# Ray when imported (Ray Data again when it is), MLflow when imported unless told not to.
LIBRARY_LOGGERS = ("ray", "mlflow")
# What MLflow sets to WARNING when it configures its loggers, set here since a command asks it
# not to: SQLAlchemy logs every statement at INFO otherwise, alembic every migration step.
MLFLOW_QUIET = ("sqlalchemy.engine", "alembic", "huey")
MLFLOW_CONFIGURE = "MLFLOW_CONFIGURE_LOGGING"
TUNE_OUTPUT = "RAY_AIR_NEW_OUTPUT"  # 0: Tune's older output engine, silent at verbose=0
TERMINAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Terminal(logging.Handler):
    """To sys.stderr as it is when a record comes (a redirect, a test's capture)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Ray Data's ERROR records tell of a failed execution, which raises in this process:
        # the command reports it itself (one line for a storage or input error, else the
        # traceback), so Ray Data's account of it (its task's stack trace) goes to the log only.
        if record.name.startswith("ray.data") and record.levelno >= logging.ERROR:
            return False
        return super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


class _ShortNames(logging.Formatter):
    """A library's records under its package's name ("WARNING ray: ..."), cg_ray's under their
    module's ("WARNING cg_ray.data.stream: skipping clip ...")."""

    def format(self, record: logging.LogRecord) -> str:
        if not record.name.startswith(("cg_ray", "/")):
            record = logging.makeLogRecord({**record.__dict__, "name": record.name.split(".")[0]})
        return super().format(record)


class _Early(logging.Handler):
    """What was logged before the command named its log file, handed to the file when it opens."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: collections.deque[logging.LogRecord] = collections.deque(maxlen=10000)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class _Console:
    name: str
    verbose: bool
    told_mlflow: bool  # this command set MLFLOW_CONFIGURE_LOGGING=false (not the user)
    terminal: _Terminal
    early: _Early = field(default_factory=_Early)
    log: logging.FileHandler | None = None
    # loggers changed by route_library_logs: name -> (handlers, propagate, level), restored after
    saved: dict[str, tuple[list[logging.Handler], bool, int]] = field(default_factory=dict)


_CONSOLE: _Console | None = None


@contextlib.contextmanager
def command_console(name: str, quiet: bool = False, verbose: bool = False) -> Iterator[None]:
    """The console of one command (`name`: "train", "demo", ...), restored afterwards.

    The terminal (stderr) gets every logger's WARNING and ERROR records, and with `verbose` its
    INFO records too; the command's log file (see `open_log`) gets INFO and above of everything.
    Ray's and MLflow's own console handlers are taken out of the way (`route_library_logs`), so
    their records are decided here like any other; Ray Tune prints its status tables only when
    verbose (cg_ray.tune.search). `quiet`: `--quiet` (no progress)."""
    global _CONSOLE
    names = (VERBOSE_ENV, MLFLOW_CONFIGURE, TUNE_OUTPUT)
    before = {n: os.environ.get(n) for n in names}
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
    # MLflow gives its loggers a stderr handler of their own when imported; asked not to, its
    # records reach the root logger's handlers below. (Ray's workers get it back: ray_env.)
    told_mlflow = MLFLOW_CONFIGURE not in os.environ
    os.environ.setdefault(MLFLOW_CONFIGURE, "false")
    shown = os.environ.get(VERBOSE_ENV, "") not in ("", "0")
    if not shown:  # Ray Tune's new output engine prints its experiment's header even at verbose=0
        os.environ.setdefault(TUNE_OUTPUT, "0")
    terminal = _Terminal(logging.INFO if shown else logging.WARNING)
    terminal.setFormatter(_ShortNames(TERMINAL_FORMAT))
    console = _Console(name, shown, told_mlflow, terminal)
    root = logging.getLogger()
    root_level = root.level
    root.addHandler(console.terminal)
    root.addHandler(console.early)
    root.setLevel(min(root_level or logging.INFO, logging.INFO))
    _CONSOLE = console
    try:
        route_library_logs()
        with quiet_mode(quiet):
            yield
    finally:
        _CONSOLE = None
        for handler in (console.terminal, console.early, console.log):
            if handler is not None:
                root.removeHandler(handler)
        if console.log is not None:
            console.log.close()
        root.setLevel(root_level)
        for logger_name, (handlers, propagate, level) in console.saved.items():
            logger = logging.getLogger(logger_name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        for n, value in before.items():
            if value is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = value


def told_mlflow_not_to_configure() -> bool:
    """Whether this process's command asked MLflow to leave its loggers alone (Ray's worker
    processes inherit the variable from a local Ray and must be told otherwise)."""
    return _CONSOLE is not None and _CONSOLE.told_mlflow


def route_library_logs() -> None:
    """Ray's and MLflow's loggers hand their records on to the root logger, where the terminal
    and the log file decide, instead of printing them with console handlers of their own (their
    file handlers, e.g. Ray Data's ray-data.log, stay). Ray Data sets its logger up when first
    imported: cg_ray.ray_env calls this again once it is. Outside a command, nothing."""
    console = _CONSOLE
    if console is None:
        return
    loggers = [
        (name, obj)
        for name, obj in list(logging.Logger.manager.loggerDict.items())
        if isinstance(obj, logging.Logger) and name.split(".")[0] in LIBRARY_LOGGERS
    ]
    if console.told_mlflow:
        loggers += [(name, logging.getLogger(name)) for name in MLFLOW_QUIET]
    for name, logger in loggers:
        own = [
            h
            for h in logger.handlers
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
        ]
        quiet = name in MLFLOW_QUIET and logger.level < logging.WARNING
        if not own and (logger.propagate or name not in LIBRARY_LOGGERS) and not quiet:
            continue
        console.saved.setdefault(name, (list(logger.handlers), logger.propagate, logger.level))
        for handler in own:
            logger.removeHandler(handler)
        logger.propagate = True
        if quiet:
            logger.setLevel(logging.WARNING)


def open_log(path: str) -> str | None:
    """From now on, and with what was logged before, INFO and above of every logger (Ray's,
    MLflow's, ...) go to the local file `path`, appended to (a resumed run's log goes on); one
    line on stderr names it. A command's first log is its log (the demo names its own before
    its training run would); outside a command (a Tune trial, a library caller) nothing
    happens; with --quiet the file is not named. Returns the path it opened."""
    console = _CONSOLE
    if console is None or console.log is not None:
        return None
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    start = dict(name="cg_ray", levelno=logging.INFO, levelname="INFO")
    handler.handle(logging.makeLogRecord({**start, "msg": f"cg-ray {console.name} (pid {os.getpid()})"}))
    for record in console.early.records:
        handler.handle(record)
    root = logging.getLogger()
    root.removeHandler(console.early)
    console.early.records.clear()
    root.addHandler(handler)
    console.log = handler
    if not quiet():
        print(f"cg-ray: Ray and MLflow logs: {path}", file=sys.stderr, flush=True)
    return path


def open_default_log() -> str | None:
    """The command's log where it named none before starting Ray (a command without a run
    folder, a run on remote storage): $TMPDIR/cg-ray-logs/COMMAND-TIME-PID.log."""
    if _CONSOLE is None:
        return None
    name = f"{_CONSOLE.name.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    return open_log(os.path.join(tempfile.gettempdir(), "cg-ray-logs", name))


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
