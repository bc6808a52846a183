"""Reading what runs recorded (metrics, tags, name, status, artifacts), for every command that looks a run up:
MLflow's client is called only inside this package, and an unknown run or store is a :class:`RunUnavailable`
(a ``UserError``) naming it, which a caller that can do without the run catches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from isnet.errors import UserError
from isnet.tracking.store import is_unreachable, resolve_tracking_uri, store_uri, with_lock_retry


class RunUnavailable(UserError):
    """A run (or its artifact) that cannot be read: no store, an unknown run, a failing or unreachable store.

    ``reason`` is the underlying error in a few words (empty when the message says it all), for a caller that
    words its own message."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


@dataclass
class RunRecord:
    """What one MLflow run holds: the latest value of each metric, its tags, name, status and experiment."""

    run_id: str
    run_name: str
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    experiment_id: str = ""


def read_run(run_id: str, tracking_uri: str | None = None) -> RunRecord:
    """The run ``run_id`` of the store (configured URI, ``$MLFLOW_TRACKING_URI`` or the default local store).
    A local SQLite store that does not exist is not created (MLflow would create an empty one)."""
    shown = resolve_tracking_uri(tracking_uri)
    uri = store_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise RunUnavailable(f"run {run_id} not found: there is no MLflow store at {shown} "
                             f"(set MLFLOW_TRACKING_URI to the store the run was logged to)")
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = with_lock_retry(lambda: MlflowClient(uri).get_run(run_id))
    except MlflowException as exc:
        if is_unreachable(exc):
            raise RunUnavailable(f"cannot read run {run_id}: MLflow tracking server {shown} is unreachable") from None
        raise RunUnavailable(f"run {run_id} not found in the MLflow store {shown}") from None
    except Exception as exc:
        if is_unreachable(exc):
            raise RunUnavailable(f"cannot read run {run_id}: MLflow tracking server {shown} is unreachable") from None
        if isinstance(exc, OSError):
            raise RunUnavailable(f"cannot read run {run_id} from the MLflow store {shown} "
                                 f"({type(exc).__name__}: {exc})") from None
        raise
    return _record(run)


def _record(run) -> RunRecord:
    return RunRecord(run_id=run.info.run_id, run_name=run.info.run_name or "", status=run.info.status,
                     metrics=dict(run.data.metrics), tags=dict(run.data.tags),
                     experiment_id=run.info.experiment_id or "")


def child_runs(parent_run_id: str, experiment: str, tracking_uri: str | None = None,
               tags: Mapping[str, str] | None = None, max_results: int = 5000) -> list[RunRecord]:
    """The runs nested under ``parent_run_id`` in ``experiment`` whose tags hold the given values (an experiment
    that does not exist has none): how a sweep recovers the cells its parent run already recorded."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri(tracking_uri))
    exp = with_lock_retry(lambda: client.get_experiment_by_name(experiment))
    if exp is None:
        return []
    query = " and ".join([f"tags.mlflow.parentRunId = '{parent_run_id}'"] +
                         [f"tags.`{k}` = '{v}'" for k, v in (tags or {}).items()])
    runs = with_lock_retry(lambda: client.search_runs([exp.experiment_id], filter_string=query,
                                                      max_results=max_results))
    return [_record(r) for r in runs]


def download_run_artifact(run_id: str, artifact_path: str, tracking_uri: str | None = None) -> Path:
    """A local copy of one artifact of a run; :class:`RunUnavailable` (naming the run, the artifact and why)
    when the store, the run or the artifact cannot be read."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                        tracking_uri=store_uri(tracking_uri)))
    except (MlflowException, OSError) as exc:
        reason = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
        raise RunUnavailable(f"run {run_id}: artifact {artifact_path} cannot be read ({reason})", reason) from None
