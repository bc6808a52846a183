"""MLflow tracking: where runs go and what every run records.

Default store: ``sqlite:///mlflow/mlflow.db`` with artifacts under ``mlflow/artifacts`` (relative to the
working directory); ``MLFLOW_TRACKING_URI`` or ``tracking.tracking_uri`` point elsewhere, e.g. a shared
server. Every run records its resolved config, the manifest's SHA-256, the code version and the versions
of the packages that shape results.
"""

from __future__ import annotations

import math
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping

# No telemetry leaves a hospital's machine; set before mlflow is imported.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from isnet.config.load import flatten

DEFAULT_URI = "sqlite:///mlflow/mlflow.db"
DEFAULT_ARTIFACTS = Path("mlflow") / "artifacts"
VERSIONED_PACKAGES = ("isnet", "torch", "torchvision", "monai", "zennit", "mlflow", "scikit-learn", "numpy",
                      "pydicom", "segmentation-models-pytorch")


def resolve_tracking_uri(configured: str | None = None) -> str:
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


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


class Tracker:
    """A thin layer over MLflow that owns one run; ``enabled=False`` makes every call a no-op (non-zero ranks)."""

    def __init__(self, experiment: str = "isnet", tracking_uri: str | None = None, enabled: bool = True):
        self.enabled = enabled
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.run_id: str | None = None

    # -- run life cycle -------------------------------------------------------------------------------
    def start(self, run_id: str | None = None, run_name: str | None = None,
              parent_run_id: str | None = None) -> str | None:
        if not self.enabled:
            return None
        _prepare_local_store(self.uri)
        mlflow.set_tracking_uri(self.uri)
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = None
            if self.uri == DEFAULT_URI:
                DEFAULT_ARTIFACTS.mkdir(parents=True, exist_ok=True)
                location = DEFAULT_ARTIFACTS.resolve().as_uri()
            exp_id = client.create_experiment(self.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        if run_id is not None:
            run = mlflow.start_run(run_id=run_id)
        else:
            run = mlflow.start_run(experiment_id=exp_id, run_name=run_name,
                                   nested=parent_run_id is not None,
                                   tags={"mlflow.parentRunId": parent_run_id} if parent_run_id else None)
        self.run_id = run.info.run_id
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        if self.enabled and mlflow.active_run() is not None:
            mlflow.end_run(status=status)

    # -- what every run records ------------------------------------------------------------------------
    def log_run_context(self, config: Mapping[str, Any], manifest_sha256: str, manifest_path: str) -> None:
        if not self.enabled:
            return
        mlflow.log_params({k: _param(v) for k, v in flatten(dict(config)).items()})
        tags = {"manifest_sha256": manifest_sha256, "manifest_path": str(manifest_path), "git_commit": git_commit()}
        tags.update({f"version.{k}": v for k, v in package_versions().items()})
        mlflow.set_tags(tags)
        mlflow.log_dict(dict(config), "config/resolved_config.yaml")

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
        if clean:
            mlflow.log_metrics(clean, step=step)

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            mlflow.log_params({k: _param(v) for k, v in params.items()})

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_figure(self, figure, artifact_file: str) -> None:
        if self.enabled:
            mlflow.log_figure(figure, artifact_file)

    def log_model(self, model, input_example, name: str = "model") -> None:
        """Log with an input example (MLflow needs one to export the graph) and explicit requirements, so
        MLflow does not spend minutes inferring them."""
        if not self.enabled:
            return
        import mlflow.pytorch

        reqs = [f"{k}=={v}" for k, v in package_versions().items() if k in ("torch", "torchvision") and v != "not installed"]
        mlflow.pytorch.log_model(model, name=name, pip_requirements=reqs, input_example=input_example)


def _param(v: Any) -> str:
    s = str(v)
    return s if len(s) <= 500 else s[:497] + "..."


def run_artifact_dir(run_id: str, tracking_uri: str | None = None) -> str:
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    return client.get_run(run_id).info.artifact_uri
