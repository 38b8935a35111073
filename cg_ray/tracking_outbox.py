"""The one path of every MLflow write of cg_ray: an ordered outbox per process, drained by one
daemon thread that retries with back-off while the tracking server is away, and a journal of each
run's records in its storage folder (RUN_DIR/tracking/records-*.jsonl) that a later process, or
`cg-ray tracking sync RUN_DIR`, delivers.

Why not MLflow's own async logging (`MlflowClient.log_batch(..., synchronous=False)`)? Its
AsyncLoggingQueue hands each batch to the store once: a failure is logged ("Failed to log run
data") and the batch is dropped (mlflow/utils/async_logging/async_logging_queue.py,
_log_run_data); and it carries metrics, params and tags only, not artifacts, a run's status or a
model registration. MLflow's HTTP client does retry each request (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
_BACKOFF_FACTOR, _TIMEOUT: about 4 minutes by default); this outbox retries after those are spent.

    OUTBOX.put(...)       queue a record; never blocks
    OUTBOX.flush(s)       wait up to s seconds for the queue to be delivered
    OUTBOX.close()        write the journals; their undelivered records leave this process's queue
    OUTBOX.adopt(dir)     queue the undelivered records of the journals other processes left in dir

The records: cg_ray.tracking_records; the journals: cg_ray.tracking_journal.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from cg_ray import storage
from cg_ray.secrets import redact
from cg_ray.tracking_journal import (
    JOURNALS,
    Journal,
    journal_files,
    journal_text,
    new_journal,
    read_ids,
    read_journal,
    target,
    write_ids,
)
from cg_ray.tracking_records import DELIVER

THREAD = "cg_ray-tracking"
PENDING = "pending-"  # the id of a run not created yet (the server was away when it started)
# MLflow's error codes that no retry changes (a 4xx); anything else is the server being away.
PERMANENT = {
    "INVALID_PARAMETER_VALUE",
    "RESOURCE_DOES_NOT_EXIST",
    "RESOURCE_ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "CUSTOMER_UNAUTHORIZED",
    "BAD_REQUEST",
    "INVALID_STATE",
    "ENDPOINT_NOT_FOUND",
    "NOT_FOUND",
    "FEATURE_DISABLED",
}


def setting(name: str, default: float) -> float:
    """A timing of the outbox, in seconds, from $CG_RAY_TRACKING_<NAME>."""
    return float(os.environ.get(f"CG_RAY_TRACKING_{name}", default))


def retry_s() -> float:
    """The first back-off after a failed delivery; it doubles up to retry_max_s()."""
    return setting("RETRY_S", 1.0)


def retry_max_s() -> float:
    return setting("RETRY_MAX_S", 60.0)


def wait_s() -> float:
    """How long a command waits at its end for an away server before it keeps the records."""
    return setting("WAIT_S", 120.0)


def handoff_s() -> float:
    """How long a training worker (or a search's trial) waits at its end before it leaves its
    undelivered records to the process that outlives it."""
    return setting("HANDOFF_S", 10.0)


def transient(exc: BaseException) -> bool:
    """Whether a failed delivery may succeed later (the server away, a 5xx, a timeout)."""
    code = getattr(exc, "error_code", None)
    if isinstance(code, str):  # MlflowException
        return code not in PERMANENT
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # a local file of the record: no retry brings it back
    return isinstance(exc, (OSError, TimeoutError)) or type(exc).__name__ == "OperationalError"


def reason(exc: BaseException) -> str:
    """A short why of a failed request (MLflow's messages run to several hundred characters)."""
    text = str(exc) or type(exc).__name__
    for phrase in ("Connection refused", "timed out", "Name or service not known", "Connection reset"):
        if phrase.lower() in text.lower():
            return phrase.lower()
    if "too many" in text and "error responses" in text:
        return text[text.index("too many") :].split("'")[0].split(")")[0]
    line = text.splitlines()[0]
    return redact(line if len(line) <= 160 else line[:157] + "...")


class _QuietRetries(logging.Filter):
    """MLflow's HTTP client logs each of its retries (urllib3: "Retrying (Retry(total=...)) after
    connection broken by ..."); from the outbox's thread, which says once that the server went
    away and once that it came back, they would be dozens of lines a minute."""

    def filter(self, record: logging.LogRecord) -> bool:
        return threading.current_thread().name != THREAD


class Waiting(Exception):
    """A record of a run that another process has not created yet: retried, quietly."""


def artifact_root(uri: str) -> str | None:
    # A sqlite store would put artifacts in ./mlruns of whatever directory the process runs in;
    # keep them beside the database instead.
    if uri.startswith("sqlite:///"):
        return "file://" + os.path.join(os.path.dirname(uri[len("sqlite:///") :]) or ".", "mlartifacts")
    return None


class Outbox:
    """The ordered queue of this process's tracking records and the thread that delivers it."""

    def __init__(self):
        self._cond = threading.Condition()
        self._io = threading.Lock()  # journal writes, in the order of their snapshots
        self._queue: deque[tuple[Journal | None, dict]] = deque()
        self._busy = False  # the thread holds the queue's head
        self._runs: dict[str, str] = {}  # run id -> its run folder's journal folder
        self._own: dict[str, Journal] = {}  # journal folder -> this process's open journal
        self._adopted: dict[str, Journal] = {}  # path -> a journal of another process
        self._home: str | None = None  # where records of runs bound nowhere are journaled
        self._ids: dict[tuple[str, str], str] = {}  # (target, journal run id) -> run id there
        self._away: dict[str, float] = {}  # target -> since when it is unreachable
        self.gave_up = False  # a flush ran out of time while the server was away
        self.kept: dict[str, int] = {}  # journal folder -> undelivered records written there
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._clients: dict[str, object] = {}
        # Deliveries by code above this layer: "register" (cg_ray.predict.pyfunc's).
        self.hooks: dict[str, Callable] = {}
        atexit.register(self._write_dirty)

    # -- what callers use -------------------------------------------------------------------

    def bind(self, run_id: str, run_dir: str) -> None:
        """Journal the records of run_id in run_dir/tracking/ (the first bound: the home of
        records of runs bound nowhere, e.g. a search's verdict on its trials' runs)."""
        folder = storage.join(run_dir, JOURNALS)
        self._runs[run_id] = folder
        self._home = self._home or folder

    def put(self, uri: str, run_id: str, kind: str, delivered: bool = False, **payload) -> dict:
        """Queue a record (or, delivered=True, only journal one that was delivered)."""
        record = {"seq": next(self._seq), "t": time.time(), "uri": uri, "run": run_id, "kind": kind}
        record.update(payload, to=[target(uri)] if delivered else [])
        with self._cond:
            journal = self._journal_for(run_id)
            if journal is not None:
                journal.records.append(record)
                journal.dirty = True
            if not delivered:
                self._queue.append((journal, record))
                self._start()
                self._cond.notify_all()
        return record

    def flush(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for every queued record to be delivered; the number
        still waiting."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(min(left, 1.0))
            if self._queue and self._away:
                self.gave_up = True
            return len(self._queue)

    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def away(self) -> bool:
        return bool(self._away)

    def close(self) -> None:
        """Write every journal with news; the undelivered records in them leave this process's
        queue (whoever adopts the journal, or `cg-ray tracking sync`, delivers them)."""
        with self._cond:
            journals = [*self._own.values(), *self._adopted.values()]
            for journal in journals:
                journal.closed = True
            head = self._queue[0] if self._busy and self._queue else None
            for held, _ in self._queue:
                if held is not None and held.closed:
                    self.kept[held.folder] = self.kept.get(held.folder, 0) + 1
            # The record being delivered stays the thread's: delivered, or dropped at its failure.
            self._queue = deque(
                item for item in self._queue if item[0] is None or not item[0].closed or item is head
            )
            self._own.clear()  # records put later go to a new journal file
            self._adopted.clear()
            self._home = None
        with self._io:  # after any snapshot the thread took before they were closed
            self._write(journals)

    def adopt(self, run_dir: str, uri: str, recursive: bool = False) -> int:
        """Queue the undelivered records of the journals under run_dir that other processes (a
        worker, a trial, an earlier driver) left, to go to `uri`; how many."""
        mine = {j.path for j in (*self._own.values(), *self._adopted.values())}
        try:
            journals = [read_journal(p) for p in journal_files(run_dir, recursive) if p not in mine]
        except Exception as exc:  # noqa: BLE001 - a store that fails: say so, never stop the run
            _say(f"cg-ray: warning: cannot read the tracking journals in {run_dir}: {reason(exc)}")
            return 0
        name = target(uri)
        return self.take(journals, uri, lambda r: name not in r["to"] and not r.get("error"))

    def take(self, journals: list[Journal], uri: str, select) -> int:
        """Hold these journals (close() writes them back) and queue their records that
        `select` picks, to go to `uri`: runs created first, then in the order they were made."""
        items: list[tuple[Journal | None, dict]] = []
        for journal in journals:
            self._adopted[journal.path] = journal
            picked: list[tuple[Journal | None, dict]] = [
                (journal, r) for r in journal.records if select(_with_uri(r, uri))
            ]
            since = journal.away.get(target(uri))
            if picked and since is not None and target(uri) not in self._away:
                # Its writer said the server went away: said once, not again by this process.
                self._away[target(uri)] = time.monotonic() - max(time.time() - since, 0.0)
            items += picked
        items.sort(key=lambda item: (item[1]["kind"] != "create", item[1]["t"], item[1]["seq"]))
        self.enqueue(items)
        return len(items)

    def enqueue(self, items: list[tuple[Journal | None, dict]]) -> None:
        with self._cond:
            self._queue.extend(items)
            if items:
                self._start()
                self._cond.notify_all()

    def history(self, run_id: str, names) -> dict[str, list[tuple[int, float]]]:
        """Metric name -> [(step, value)] of a run from the records this process holds."""
        points: dict[str, dict[int, float]] = {}
        with self._cond:
            journals = [*self._own.values(), *self._adopted.values()]
            records = sorted((r for j in journals for r in j.records), key=lambda r: r["t"])
        for record in records:
            if record["run"] == run_id and record["kind"] == "metrics":
                for key, value in record["metrics"].items():
                    if key in names:
                        points.setdefault(key, {})[record["step"]] = value
        return {k: sorted(v.items()) for k, v in points.items()}

    def resolve(self, uri: str, run_id: str, folder: str | None = None) -> str:
        """The id of run_id in the store at uri: itself, or a pending run's once created (by
        this process, or by another one that wrote it to the run folder's run_ids.json)."""
        name = target(uri)
        if (name, run_id) in self._ids:
            return self._ids[(name, run_id)]
        folder = folder or self._runs.get(run_id)
        if run_id.startswith(PENDING) and folder:
            found = read_ids(folder).get(name, {}).get(run_id)
            if found:
                self._ids[(name, run_id)] = found
                return found
        return run_id

    def learn_ids(self, uri: str, ids: dict[str, str]) -> None:
        self._ids.update({(target(uri), old): new for old, new in ids.items()})

    def ids(self) -> dict[tuple[str, str], str]:
        """(store, run id as recorded) -> the run's id in that store, where they differ."""
        return dict(self._ids)

    # -- the thread -----------------------------------------------------------------------------

    def _journal_for(self, run_id: str) -> Journal | None:
        folder = self._runs.get(run_id) or self._home
        if folder is None:
            return None
        if folder not in self._own:
            self._own[folder] = new_journal(folder)
        return self._own[folder]

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            quiet = logging.getLogger("urllib3.connectionpool")
            if not any(isinstance(f, _QuietRetries) for f in quiet.filters):
                quiet.addFilter(_QuietRetries())
            self._thread = threading.Thread(target=self._run, name=THREAD, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        attempt = 0
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                journal, record = self._queue[0]
                self._busy = True
            try:
                result = self._deliver(record, journal)
            except Exception as exc:  # noqa: BLE001 - sorted below: retried or set aside
                if (isinstance(exc, Waiting) or transient(exc)) and not (journal and journal.closed):
                    if not isinstance(exc, Waiting):
                        self._went_away(record["uri"], exc)
                    with self._cond:
                        self._busy = False
                    self._save_waiting()
                    delay = min(retry_max_s(), retry_s() * 2**attempt)
                    attempt += 1
                    time.sleep(random.uniform(delay / 2, delay))
                    continue
                if not (journal and journal.closed):  # else: journaled, left to whoever adopts it
                    with self._cond:
                        record["error"] = reason(exc)
                    _say(
                        f"cg-ray: warning: MLflow refused a {record['kind']} record of run "
                        f"{record['run']}: {record['error']}"
                    )
            else:
                with self._cond:
                    record.update(result or {})
                    record["to"].append(target(record["uri"]))
                if target(record["uri"]) in self._away:
                    self._came_back(record["uri"])
            attempt = 0
            with self._cond:
                if self._queue and self._queue[0][1] is record:
                    self._queue.popleft()
                if journal is not None:
                    journal.dirty = True
                self._busy = False
                self._cond.notify_all()

    def _went_away(self, uri: str, exc: BaseException) -> None:
        name = target(uri)
        if name not in self._away:
            self._away[name] = time.monotonic()
            _say(
                f"cg-ray: warning: MLflow tracking server {name} is unreachable ({reason(exc)}); "
                f"the run goes on; its tracking records wait and are retried with back-off"
            )

    def _came_back(self, uri: str) -> None:
        name = target(uri)
        since = self._away.pop(name)
        self.gave_up = False
        with self._cond:
            waited = len(self._queue)
        _say(
            f"cg-ray: MLflow tracking server {name} is back: delivering, in order, the {waited} "
            f"tracking records that waited (for up to {time.monotonic() - since:.0f} s)"
        )

    def _write(self, journals: list[Journal], quiet: bool = False) -> None:
        """Write those of `journals` with news (the caller holds self._io). A store that fails
        the write is said in a line (quiet: not even that), never raised: tracking never stops
        a run."""
        with self._cond:
            away = {name: time.time() - (time.monotonic() - since) for name, since in self._away.items()}
            texts = []
            for journal in journals:
                journal.away = away
                if journal.dirty:
                    texts.append((journal.path, journal_text(journal)))
                    journal.dirty = False
        for path, text in texts:
            try:
                storage.write_text(path, text)
            except Exception as exc:  # noqa: BLE001 - storage raises many types
                if not quiet:
                    _say(f"cg-ray: warning: cannot write the tracking journal {path}: {reason(exc)}")

    def _save_waiting(self) -> None:
        """While records wait, keep this process's journals of them current in the run folders:
        a process killed meanwhile (a lost node) leaves them for its driver to deliver."""
        with self._io:
            with self._cond:
                waiting = {id(j) for j, _ in self._queue if j is not None and not j.closed}
                journals = [j for j in self._own.values() if id(j) in waiting]
            self._write(journals, quiet=True)  # the next failure tries again

    def _write_dirty(self) -> None:
        with self._io:
            self._write([*self._own.values(), *self._adopted.values()], quiet=True)  # at exit

    # -- delivery -------------------------------------------------------------------------------

    def _client(self, uri: str):
        if uri not in self._clients:
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            from mlflow.tracking import MlflowClient

            self._clients[uri] = MlflowClient(tracking_uri=uri)
        return self._clients[uri]

    def _run_id(self, record: dict, journal: Journal | None) -> str:
        found = self.resolve(record["uri"], record["run"], journal.folder if journal else None)
        if found.startswith(PENDING):  # its driver creates it when the server is back
            raise Waiting(f"run {found} is not created yet")
        return found

    def _deliver(self, record: dict, journal: Journal | None) -> dict | None:
        """Deliver one record; what to add to it (a registered model's version)."""
        if record["kind"] == "create":
            self._create(record, journal)
            return None
        run_id = self._run_id(record, journal)
        return DELIVER[record["kind"]](self._client(record["uri"]), run_id, record, self)

    def _create(self, record: dict, journal: Journal | None) -> None:
        """A run that did not exist in this store: created, and its id remembered (in memory
        and in its folder's run_ids.json, where the run's other processes find it)."""
        uri, name = record["uri"], target(record["uri"])
        folder = journal.folder if journal is not None else None
        if folder is not None:  # created by another process meanwhile (a hand-off's race)
            done = read_ids(folder).get(name, {}).get(record["run"])
            if done:
                self._ids[(name, record["run"])] = done
                return
        client = self._client(uri)
        found = client.get_experiment_by_name(record["experiment"])
        experiment_id = (
            found.experiment_id
            if found is not None
            else client.create_experiment(record["experiment"], artifact_location=artifact_root(uri))
        )
        tags = {k: self.resolve(uri, v) for k, v in record["tags"].items()}  # a parent's new id
        run = client.create_run(
            experiment_id, start_time=record.get("start"), tags=tags, run_name=record["name"]
        )
        self._ids[(name, record["run"])] = run.info.run_id
        if folder is not None:
            try:  # never a reason to create the run again: this process knows its id
                write_ids(folder, name, record["run"], run.info.run_id)
            except Exception as exc:  # noqa: BLE001 - its other processes hand their records here
                _say(f"cg-ray: warning: cannot write {folder}/run_ids.json: {reason(exc)}")


def _with_uri(record: dict, uri: str) -> dict:
    record["uri"] = uri
    return record


def _say(line: str) -> None:
    # Written, not printed or logged: a Ray worker turns prints into log records and tees them.
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


OUTBOX = Outbox()
