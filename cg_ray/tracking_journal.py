"""The journal of a run's tracking records: RUN_DIR/tracking/records-*.jsonl, one file per process
and run folder, a header line ({"cg_ray_tracking_journal": 1, host, pid, away: {store: since}})
then one JSON record a line (see cg_ray.tracking_records), each with the stores it reached
(`to`); and RUN_DIR/tracking/run_ids.json ({store: {run id as recorded: run id there}}) for runs
created later or elsewhere. Written through cg_ray.storage, so RUN_DIR may be s3://."""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from cg_ray import storage
from cg_ray.secrets import redact

JOURNALS = "tracking"  # RUN_DIR/tracking/: the journals and run_ids.json
IDS_FILE = "run_ids.json"


def target(uri: str) -> str:
    """The name a store goes by in journals: its URI, credentials masked."""
    return redact(uri).rstrip("/")


@dataclass
class Journal:
    """The records of one process for one run folder, as written to RUN_DIR/tracking/."""

    folder: str  # RUN_DIR/tracking
    path: str
    records: list[dict] = field(default_factory=list)
    away: dict[str, float] = field(default_factory=dict)  # store -> unreachable since (epoch s)
    dirty: bool = False
    closed: bool = False  # written and left: its undelivered records are no longer this process's


def journal_files(run_dir: str, recursive: bool = False) -> list[str]:
    """The journals in run_dir/tracking (recursive: in every run folder under run_dir)."""
    where = run_dir if recursive else storage.join(run_dir, JOURNALS)
    return sorted(
        storage.uri_of(run_dir, entry.path)
        for entry in storage.list_dir(where, recursive=recursive)
        if entry.base_name.startswith("records-")
        and entry.base_name.endswith(".jsonl")
        and entry.path.rstrip("/").split("/")[-2] == JOURNALS
    )


def read_journal(path: str) -> Journal:
    """A journal: a header line (its writer, and the stores it found away), then one record a line."""
    lines = storage.read_text(path).splitlines()
    header = json.loads(lines[0]) if lines else {}
    records = [json.loads(line) for line in lines[1:] if line.strip()]
    return Journal(folder=path.rsplit("/", 1)[0], path=path, records=records, away=header.get("away", {}))


def journal_text(journal: Journal) -> str:
    """The file's text (credentials in the store's URI masked)."""
    header = {
        "cg_ray_tracking_journal": 1,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "away": journal.away,
    }
    lines = [json.dumps(header)]
    for record in journal.records:
        lines.append(json.dumps({**record, "uri": target(record["uri"])}, sort_keys=True))
    return "\n".join(lines) + "\n"


def new_journal(folder: str) -> Journal:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    name = f"records-{stamp}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
    return Journal(folder=folder, path=storage.join(folder, name))


def write_ids(folder: str, store: str, old: str, new: str) -> None:
    ids = read_ids(folder)
    ids.setdefault(store, {})[old] = new
    storage.write_text(storage.join(folder, IDS_FILE), json.dumps(ids, indent=1))


def read_ids(folder: str) -> dict[str, dict[str, str]]:
    path = storage.join(folder, IDS_FILE)
    try:
        return json.loads(storage.read_text(path)) if storage.exists(path) else {}
    except Exception:  # noqa: BLE001 - unreadable now: the run is taken as not created yet
        return {}
