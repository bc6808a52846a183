"""Reading what a finished run recorded (its metrics, tags, name), for commands that compare runs: MLflow's
client is called only inside this package, and an unknown run or store is a ``UserError`` naming it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from isnet.errors import UserError
from isnet.tracking.store import is_unreachable, resolve_tracking_uri, store_uri, with_lock_retry


@dataclass
class RunRecord:
    """What one MLflow run holds: the latest value of each metric, its tags, name and status."""

    run_id: str
    run_name: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def read_run(run_id: str, tracking_uri: str | None = None) -> RunRecord:
    """The run ``run_id`` of the store (configured URI, ``$MLFLOW_TRACKING_URI`` or the default local store).
    A local SQLite store that does not exist is not created (MLflow would create an empty one)."""
    shown = resolve_tracking_uri(tracking_uri)
    uri = store_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UserError(f"run {run_id} not found: there is no MLflow store at {shown} "
                        f"(set MLFLOW_TRACKING_URI to the store the run was logged to)")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = with_lock_retry(lambda: MlflowClient(uri).get_run(run_id))
    except MlflowException as exc:
        if is_unreachable(exc):
            raise UserError(f"cannot read run {run_id}: MLflow tracking server {shown} is unreachable") from None
        raise UserError(f"run {run_id} not found in the MLflow store {shown}") from None
    except Exception as exc:
        if is_unreachable(exc):
            raise UserError(f"cannot read run {run_id}: MLflow tracking server {shown} is unreachable") from None
        raise
    return RunRecord(run_id=run.info.run_id, run_name=run.info.run_name or "", status=run.info.status,
                     metrics=dict(run.data.metrics), tags=dict(run.data.tags))
