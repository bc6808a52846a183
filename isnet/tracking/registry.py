"""Logging a PyTorch model to MLflow and registering it in the store's model registry (``isnet export
--register``), so that MLflow's fluent and client APIs are called only inside this package."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from torch import nn

from isnet.tracking.runs import RunUnavailable, read_run
from isnet.tracking.store import store_uri


def register_pytorch_model(model: nn.Module, name: str, source_run_id: str, example: np.ndarray,
                           output: np.ndarray, *, metadata: Mapping | None = None,
                           pip_requirements: Sequence[str] | None = None,
                           tracking_uri: str | None = None) -> tuple[str, str]:
    """Log ``model`` (signature inferred from ``example`` and the ``output`` it gives) in a new run tagged
    ``isnet.source_run``, in the source run's experiment when the store holds that run (the default
    experiment otherwise, e.g. for a checkpoint copied from elsewhere), and register it as ``name``.
    Returns (the new run's id, the registered version)."""
    import mlflow
    import mlflow.pytorch
    from mlflow.models import infer_signature

    uri = store_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        experiment_id = read_run(source_run_id, tracking_uri).experiment_id or None
    except RunUnavailable:  # the checkpoint came from disk; its run is not in this store
        experiment_id = None
    signature = infer_signature(example, output)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"export-{source_run_id[:8]}",
                          tags={"isnet.source_run": source_run_id}) as run:
        info = mlflow.pytorch.log_model(model, name="model", signature=signature, input_example=example,
                                        metadata=dict(metadata or {}), pip_requirements=list(pip_requirements or []),
                                        registered_model_name=name)
    version = getattr(info, "registered_model_version", None)
    return run.info.run_id, str(version)
