"""The offline buffer: records a run could not send while the tracking server was unreachable, one JSON
object per line, replayed in order against any store (at the next logging call, at the end of the run, or
with ``isnet tracking sync``)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Mapping

from mlflow.tracking import MlflowClient

from isnet.files import atomic_write_text
from isnet.tracking.store import with_lock_retry

logger = logging.getLogger(__name__)

BUFFER_NAME = "tracking_buffer.jsonl"


def send_record(client: MlflowClient, rec: Mapping[str, Any]) -> None:
    """Send one buffered record (see :meth:`Tracker._record`) to ``client``'s store."""
    from mlflow.entities import Metric, Param, RunTag

    run_id, op = rec["run_id"], rec["op"]
    if op == "metrics":
        ms = [Metric(k, float(v), int(rec["timestamp"]), int(rec["step"] or 0)) for k, v in rec["metrics"].items()]
        with_lock_retry(lambda: client.log_batch(run_id, metrics=ms))
    elif op == "params":
        ps = [Param(k, v) for k, v in rec["params"].items()]
        with_lock_retry(lambda: client.log_batch(run_id, params=ps))
    elif op == "tags":
        ts = [RunTag(k, v) for k, v in rec["tags"].items()]
        with_lock_retry(lambda: client.log_batch(run_id, tags=ts))
    elif op == "artifact":
        client.log_artifact(run_id, rec["path"], artifact_path=rec.get("artifact_path"))
    elif op == "terminate":
        with_lock_retry(lambda: client.set_terminated(run_id, rec["status"], end_time=int(rec["timestamp"])))
    else:
        raise ValueError(f"unknown tracking record {op!r}")


def read_buffer(path: Path) -> list[dict]:
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a crash while it was written: the rest is still good
            logger.warning(f"warning: {path}:{i + 1} is not a complete record; skipped")
    return out


def flush_buffer(path: Path, tracking_uri: str | None = None) -> tuple[int, int]:
    """Send a buffer's records in order; returns (sent, left). What was sent is removed from the file
    (rewritten atomically), so a second attempt after another outage never sends a record twice."""
    path = Path(path)
    records = read_buffer(path)
    sent = 0
    try:
        clients: dict[str, MlflowClient] = {}
        for rec in records:
            uri = tracking_uri or rec["uri"]
            client = clients.setdefault(uri, MlflowClient(uri))
            send_record(client, rec)
            sent += 1
    finally:
        left = records[sent:]
        if not left:
            path.unlink(missing_ok=True)
            files = path.with_suffix(".files")
            if files.is_dir():
                shutil.rmtree(files, ignore_errors=True)
        elif sent:
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in left))
    return sent, len(left)


