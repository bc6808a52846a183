"""Loading a trained run's model back, by MLflow run id (local checkpoint first, then the run's artifact)."""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import ValidationError

from isnet.config.registry import method_names
from isnet.config.schema import TrainConfig
from isnet.errors import UserError
from isnet.models import build_classifier
from isnet.tracking import RunUnavailable, download_run_artifact
from isnet.train.checkpoint import ARTIFACT_DIR, BEST_NAME, CheckpointError, load_checkpoint


def find_best_checkpoint(run_id: str, checkpoint_dir: str | Path = "checkpoints",
                         tracking_uri: str | None = None) -> Path:
    """A run's best checkpoint: the local copy when there is one (no store needed), else the run's artifact."""
    local = Path(checkpoint_dir) / run_id / BEST_NAME
    if local.is_file():
        return local
    try:
        return download_run_artifact(run_id, f"{ARTIFACT_DIR}/{BEST_NAME}", tracking_uri)
    except RunUnavailable as exc:
        raise UserError(f"run {run_id}: no checkpoint at {local} and none in the MLflow run ({exc.reason})") from None


def load_best_state(run_id: str, checkpoint_dir: str | Path = "checkpoints", tracking_uri: str | None = None,
                    device: str | torch.device = "cpu") -> dict:
    """The verified best checkpoint of any run (classifier or segmenter); a damaged one is a UserError."""
    path = find_best_checkpoint(run_id, checkpoint_dir, tracking_uri)
    try:
        return load_checkpoint(path, map_location=device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


def load_run_model(run_id: str, checkpoint_dir: str | Path = "checkpoints", tracking_uri: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The best weights of a run, rebuilt from the config stored beside them, in eval mode."""
    return model_from_state(load_best_state(run_id, checkpoint_dir, tracking_uri, device), device)


def model_from_state(state: dict, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The classifier a checkpoint holds, rebuilt from the config stored in it, in eval mode."""
    try:
        cfg = TrainConfig.model_validate(state["config"])
    except ValidationError as exc:  # e.g. trained with a plug-in method that is not installed here
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        known = ", ".join(method_names())
        raise UserError(f"the configuration stored with this model is not valid here ({problems}); install the "
                        f"plug-in methods it was trained with (registered methods: {known})") from None
    classes = state.get("classes") or cfg.data.classes
    model = build_classifier(cfg.model.backbone, len(classes), width=cfg.model.width)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


def load_checkpoint_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, TrainConfig]:
    """The classifier of one checkpoint file (verified; a damaged file is a UserError)."""
    try:
        state = load_checkpoint(path, map_location=device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    return model_from_state(state, device)
