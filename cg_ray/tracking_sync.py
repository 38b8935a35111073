"""`cg-ray tracking sync RUN_DIR`: deliver the tracking records that a run (or a search, with its
trials' runs) kept in its folder while MLflow was away.

Into the store the run was tracked in, once it is back: the records it never received, in order.
Into another store (a fresh server, the old one lost): each run is created there (its experiment,
name, params and tags; a child run under its parent's new id) and all its records added in order;
the new ids are written to RUN_DIR/tracking/run_ids.json, so that a second sync adds nothing twice.
"""

from __future__ import annotations

import os

from cg_ray.errors import UserError
from cg_ray.secrets import MASK, redact
from cg_ray.tracking_journal import journal_files, read_ids, read_journal, target
from cg_ray.tracking_outbox import PENDING, Outbox, transient, wait_s


def _store_uri(given: str | None, journals) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the one the records name (unless its
    credentials were masked when it was written down)."""
    recorded = sorted({r["uri"] for j in journals for r in j.records})
    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or (recorded[0] if len(recorded) == 1 else None)
    if not uri or MASK in uri:
        shown = ", ".join(recorded) or "none"
        raise UserError(f"which MLflow store? pass --tracking-uri (the records name: {shown})")
    return uri


def _known(outbox: Outbox, uri: str, run_id: str) -> bool:
    """Whether the store has the run (under its own id, or the one a sync gave it there)."""
    found = outbox.resolve(uri, run_id)
    if found.startswith(PENDING):
        return False
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri).get_run(found)
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own and HTTP errors
        if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return False
        why = "unreachable" if transient(exc) else "refused"
        raise UserError(f"MLflow at {redact(uri)} {why}: {str(exc).splitlines()[0][:200]}") from None
    return True


def sync(run_dir: str, uri: str | None = None, wait: float | None = None, register=None) -> dict:
    """Deliver the records kept under run_dir into the store at uri; a summary of what it did.
    A UserError when some could not be delivered (run it again). register: what registers a
    model (cg_ray.predict.pyfunc.register_checkpoint), for the runs trained with --register-as."""
    from cg_ray.tracking import check_reachable

    journals = [read_journal(path) for path in journal_files(run_dir, recursive=True)]
    if not journals:
        raise UserError(f"no tracking records under {run_dir} (it has no tracking/records-*.jsonl)")
    uri = _store_uri(uri, journals)
    check_reachable(uri)
    name = target(uri)
    outbox = Outbox()
    if register is not None:
        outbox.hooks["register"] = register
    for folder in {j.folder for j in journals}:
        outbox.learn_ids(uri, read_ids(folder).get(name, {}))
    runs: dict[str, list[dict]] = {}
    for record in sorted((r for j in journals for r in j.records), key=lambda r: (r["t"], r["seq"])):
        runs.setdefault(record["run"], []).append(record)
    chosen: set[int] = set()
    missing = []
    for run_id, records in runs.items():
        if _known(outbox, uri, run_id):  # the records it lacks
            chosen.update(id(r) for r in records if name not in r["to"])
        elif any(r["kind"] == "create" for r in records):  # created there, then all of it
            chosen.update(id(r) for r in records)
        else:
            missing.append(run_id)
    for record in (r for j in journals for r in j.records if id(r) in chosen):
        record.pop("error", None)
    queued = outbox.take(journals, uri, lambda r: id(r) in chosen)
    left = outbox.flush(wait_s() if wait is None else wait)
    refused = sum(1 for j in journals for r in j.records if id(r) in chosen and r.get("error"))
    outbox.close()
    run_ids = {old: new for (store, old), new in outbox.ids().items() if store == name and old != new}
    summary = {
        "store": name,
        "runs": len(runs),
        "records": queued,
        "delivered": queued - left - refused,
        "run_ids": run_ids,
    }
    problems = []
    if left:
        problems.append(f"{left} records still wait (the server went away again)")
    if refused:
        problems.append(f"{refused} records were refused (see the warnings above)")
    if missing:
        problems.append(f"runs {', '.join(missing)} are not in this store and their creation is not recorded")
    if problems:
        print(summary, flush=True)
        raise UserError(f"sync of {run_dir} into {name} is incomplete: {'; '.join(problems)}; run it again")
    return summary
