"""MLflow tracking: where runs go and what every run records.

Five modules: :mod:`.store` (which store, its lock, retries, code and package versions), :mod:`.buffer` (the
offline record buffer and its replay), :mod:`.tracker` (``Tracker``, one run, and ``Tracker.ending_run``: the
status a run ends with), :mod:`.runs` (``read_run``, ``child_runs``, ``download_run_artifact``: what runs
recorded) and :mod:`.registry` (``register_pytorch_model``: a model logged and registered), all on MLflow's
API, which no other package calls.

Default store: ``sqlite:///mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts`` (relative to the
working directory); ``MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri`` point elsewhere, e.g. a shared
server. Every run records its resolved config, the manifest's SHA-256, the code version and the versions
of the packages that shape results.

Faults. A tracking server that becomes unreachable mid-run does not stop training: the Tracker says so once,
appends every later record (metrics with their step and time, params, tags, artifacts, the final status)
to a local JSONL buffer (next to the run's checkpoints: ``<checkpoint_dir>/<run_id>/tracking_buffer.jsonl``,
artifact files copied beside it) and retries the server at most every ``RETRY_SECONDS``; the buffer is sent
in order when the server answers again (at a later logging call or at the end of the run), or later with
``isnet tracking sync``. MLflow's HTTP retries are lowered (env defaults below) so an outage costs seconds,
not minutes. Two processes writing one SQLite store at once wait for each other: the store's creation is
serialised with a file lock and "database is locked" errors are retried with backoff.
"""

import os

# No telemetry leaves a hospital's machine; set before mlflow is imported (every module of this package imports it
# after this file).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# An unreachable server costs a few seconds per attempt, not MLflow's default of minutes (7 retries, 120 s).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


from isnet.tracking.store import (DEFAULT_URI, git_commit, is_locked, is_unreachable, package_versions,  # noqa: E402
                                  resolve_tracking_uri, store_uri, with_lock_retry)
from isnet.tracking.buffer import BUFFER_NAME, flush_buffer, read_buffer, send_record  # noqa: E402
from isnet.tracking.tracker import RETRY_SECONDS, Tracker  # noqa: E402
from isnet.tracking.runs import RunRecord, RunUnavailable, child_runs, download_run_artifact, read_run  # noqa: E402
from isnet.tracking.registry import register_pytorch_model  # noqa: E402

__all__ = ["BUFFER_NAME", "DEFAULT_URI", "RETRY_SECONDS", "RunRecord", "RunUnavailable", "Tracker", "child_runs",
           "download_run_artifact", "flush_buffer", "git_commit", "is_locked", "is_unreachable", "package_versions",
           "read_buffer", "read_run", "register_pytorch_model", "resolve_tracking_uri", "send_record", "store_uri",
           "with_lock_retry"]
