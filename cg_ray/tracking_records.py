"""How each kind of tracking record reaches MLflow (cg_ray.tracking_outbox delivers them in order).

A record is a JSON-able dict: seq and t (when and in which order it was made), uri, run (the
run's id as its process knew it: a real one, or `pending-...` for a run created later), kind,
`to` (the stores it reached) and the kind's own fields:

    create     experiment, name, tags, start      (a run; only delivered where it did not exist)
    params     params {key: str}
    metrics    metrics {key: float}, step, ts; once: a key whose value at `step`, when the run
               has one already, means the record was delivered (an epoch reported twice)
    tags       tags {key: str}
    text       file, text                          (an artifact)
    bytes      file, data (base64)                 (an artifact)
    artifacts  folder, path                        (a local folder, e.g. the checkpoint)
    status     status, end (ms)                    (RUNNING again, or ended)
    orphan     why                                 (end the run as KILLED if it is RUNNING)
    register   checkpoint, name -> version         (--register-as; Outbox.hooks["register"])

Every delivery can be repeated: MLflow keeps one copy of a metric logged twice with the same
timestamp and step, a param logged again with its value, a tag or an artifact overwritten.
"""

from __future__ import annotations

import base64
import os
import tempfile


class Permanent(Exception):
    """A record that no retry can deliver (its local file is gone, ...)."""


def _params(client, run_id: str, record: dict, outbox) -> None:
    from mlflow.entities import Param

    items = [Param(k, v) for k, v in record["params"].items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _metrics(client, run_id: str, record: dict, outbox) -> None:
    from mlflow.entities import Metric

    once = record.get("once")
    if once and any(m.step == record["step"] for m in client.get_metric_history(run_id, once)):
        return
    items = [Metric(k, float(v), record["ts"], record["step"]) for k, v in record["metrics"].items()]
    for i in range(0, len(items), 1000):
        client.log_batch(run_id, metrics=items[i : i + 1000])


def _tags(client, run_id: str, record: dict, outbox) -> None:
    from mlflow.entities import RunTag

    # A tag naming another run (mlflow.parentRunId, cg_ray.best_run_id) names it in this store.
    uri = record["uri"]
    items = [RunTag(k, outbox.resolve(uri, v)) for k, v in record["tags"].items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, tags=items[i : i + 100])


def _text(client, run_id: str, record: dict, outbox) -> None:
    client.log_text(run_id, record["text"], record["file"])


def _bytes(client, run_id: str, record: dict, outbox) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, os.path.basename(record["file"]))
        with open(path, "wb") as f:
            f.write(base64.b64decode(record["data"]))
        client.log_artifact(run_id, path, os.path.dirname(record["file"]) or None)


def _artifacts(client, run_id: str, record: dict, outbox) -> None:
    if not os.path.isdir(record["folder"]):
        raise Permanent(f"folder {record['folder']} is gone")
    client.log_artifacts(run_id, record["folder"], record.get("path"))


def _status(client, run_id: str, record: dict, outbox) -> None:
    if record["status"] == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status=record["status"], end_time=record.get("end"))


def _orphan(client, run_id: str, record: dict, outbox) -> None:
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_tag(run_id, "cg_ray.ended_because", record["why"])
        client.set_terminated(run_id, status="KILLED")


def _register(client, run_id: str, record: dict, outbox) -> dict:
    # The registering code (cg_ray.predict.pyfunc) sits above this layer: its caller hands it over.
    register = outbox.hooks.get("register")
    if register is None:
        raise Permanent("this process cannot register models (`cg-ray tracking sync` can)")
    if not os.path.isdir(record["checkpoint"]):
        raise Permanent(f"checkpoint {record['checkpoint']} is gone")
    return {"version": register(record["uri"], run_id, record["checkpoint"], record["name"])}


DELIVER = {
    "params": _params,
    "metrics": _metrics,
    "tags": _tags,
    "text": _text,
    "bytes": _bytes,
    "artifacts": _artifacts,
    "status": _status,
    "orphan": _orphan,
    "register": _register,
}
