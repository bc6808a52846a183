"""Which MLflow store a run goes to, the lock around a local SQLite store, retries of a locked store, and
the code and package versions every run records."""

from __future__ import annotations

import fcntl
import os
import random
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

DEFAULT_URI = "sqlite:///mlflow/mlflow.db"
DEFAULT_ARTIFACTS = Path("mlflow") / "artifacts"
VERSIONED_PACKAGES = ("isnet", "torch", "torchvision", "monai", "zennit", "mlflow", "scikit-learn", "numpy",
                      "pydicom", "segmentation-models-pytorch")



def resolve_tracking_uri(configured: str | None = None) -> str:
    """The tracking URI as the user gave it (config, $MLFLOW_TRACKING_URI, or the default local store)."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def store_uri(configured: str | None = None) -> str:
    """The URI to connect with: a relative SQLite path made absolute. MLflow caches one store per URI
    string, so a relative path would keep pointing at whatever folder was current when it first connected."""
    return _absolute_sqlite(resolve_tracking_uri(configured))


def git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _prepare_local_store(uri: str) -> None:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)


def _absolute_sqlite(uri: str) -> str:
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


class _StoreLock:
    """An exclusive file lock next to a SQLite store (no-op for other stores): two runs starting at once
    must not both create the tables or the experiment."""

    def __init__(self, uri: str):
        self.path = Path(uri[len("sqlite:///"):] + ".lock") if uri.startswith("sqlite:///") else None
        self._fh = None

    def __enter__(self):
        if self.path is not None:
            self._fh = open(self.path, "a")
            fcntl.flock(self._fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self._fh is not None:
            fcntl.flock(self._fh, fcntl.LOCK_UN)
            self._fh.close()


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the tracking server could not be reached (or answered 5xx after retries)."""
    import requests

    if isinstance(exc, (requests.exceptions.RequestException, ConnectionError, TimeoutError)):
        return True
    msg = str(exc)
    return msg.startswith("API request to") and ("failed with exception" in msg or "failed with timeout" in msg
                                                  or "failed with error code 5" in msg)


def is_locked(exc: BaseException) -> bool:
    """SQLite's writer lock held by another process for longer than its busy timeout."""
    return "database is locked" in str(exc) or "database table is locked" in str(exc)


def with_lock_retry(fn: Callable[[], Any], attempts: int = 10) -> Any:
    """Call ``fn``; retry "database is locked" errors with exponential backoff and jitter (0.1 s → ~10 s)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if not is_locked(exc) or i == attempts - 1:
                raise
            time.sleep(min(10.0, 0.1 * 2 ** i) * (0.5 + random.random()))
    raise AssertionError("unreachable")


