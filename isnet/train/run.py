"""``train()``: the Python entry point behind ``isnet train`` (manifest → validated data → model → MLflow)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from isnet.config.load import config_to_dict
from isnet.config.schema import TrainConfig
from isnet.data.manifest import load_manifest
from isnet.errors import UserError
from isnet.files import atomic_write_text
from isnet.methods import build_methods
from isnet.models import build_classifier
from isnet.train.init import apply_init
from isnet.train.init import describe as describe_init
from isnet.tracking import BUFFER_NAME, RunUnavailable, Tracker, flush_buffer, is_unreachable, read_run
from isnet.train.checkpoint import (ARTIFACT_DIR, BEST_NAME, LAST_NAME, CheckpointError, load_latest_checkpoint,
                                    previous_path)
from isnet.train.distributed import distribute_trainer, init_distributed
from isnet.train.seeding import seed_everything
from isnet.train.trainer import FitResult, Trainer

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


#: written into a run's checkpoint folder once everything is logged: ``--resume`` then has nothing to do
FINISHED_NAME = "finished.json"
#: run tag set once the model is exported, so that a resumed run does not log a second one
MODEL_TAG = "isnet.model_logged"


def _finished(cfg: TrainConfig, run_id: str) -> FitResult | None:
    """The result of a run that had finished (its marker, or for runs from before the marker: every epoch
    checkpointed and MLflow says FINISHED); None when there is something left to do."""
    ckpt_dir = Path(cfg.train.checkpoint_dir) / run_id
    marker = ckpt_dir / FINISHED_NAME
    if marker.is_file():
        try:
            m = json.loads(marker.read_text())
            return FitResult(run_id, int(m["epochs_run"]), int(m["best_epoch"]), float(m["best_val_loss"]), ckpt_dir,
                             test_metrics=dict(m.get("test_metrics", {})), already_finished=True)
        except (ValueError, KeyError, TypeError):
            logger.warning(f"warning: {marker} is unreadable; checking the run's checkpoint instead")
    return None


def _finished_before_marker(cfg: TrainConfig, run_id: str, state: dict, ckpt_dir: Path) -> FitResult | None:
    saved = TrainConfig.model_validate(state["config"])
    patience = saved.optim.early_stopping_patience
    if not (int(state["epoch"]) >= saved.optim.epochs or (patience and int(state["bad_epochs"]) >= patience)):
        return None
    try:
        status = read_run(run_id, saved.tracking.tracking_uri).status
    except RunUnavailable as exc:  # no store, unknown run, store error, unreachable server
        logger.warning(f"cannot read the status of run {run_id} ({exc}); resuming from its checkpoint as an "
                       f"unfinished run")
        return None
    if status != "FINISHED":
        return None
    return FitResult(run_id, int(state["epoch"]), int(state["best_epoch"]), float(state["best_val_loss"]), ckpt_dir,
                     already_finished=True)


def _write_finished(result: FitResult) -> None:
    marker = Path(result.checkpoint_dir) / FINISHED_NAME
    atomic_write_text(marker, json.dumps({"run_id": result.run_id, "epochs_run": result.epochs_run,
                                          "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
                                          "test_metrics": result.test_metrics}, indent=1))


def _resume_state(cfg: TrainConfig, run_id: str) -> tuple[TrainConfig, dict, Path]:
    ckpt_dir = Path(cfg.train.checkpoint_dir) / run_id
    last = ckpt_dir / LAST_NAME
    if not last.is_file() and not previous_path(last).is_file():
        raise UserError(f"cannot resume run {run_id}: no checkpoint at {last} (a run writes one after its "
                        f"first finished epoch; check train.checkpoint_dir)")
    try:
        state, _ = load_latest_checkpoint(last)
    except CheckpointError as exc:
        raise UserError(f"cannot resume run {run_id}: {exc}") from None
    saved = TrainConfig.model_validate(state["config"])
    if config_to_dict(saved) != config_to_dict(cfg):
        logger.info(f"note: resuming run {run_id} with the configuration it was started with")
    return saved, state, ckpt_dir


def train(cfg: TrainConfig, manifest_path: str | Path, *, resume: str | None = None,
          progress: bool | None = None, extra_transforms: Mapping[str, Sequence] | None = None,
          parent_run_id: str | None = None, tags: Mapping[str, Any] | None = None) -> FitResult:
    """Train a classifier with the configured methods; ``resume`` continues a run from its last checkpoint.

    ``extra_transforms`` maps a split ("train", "val", "test") to transforms inserted after resize (e.g. the
    stress test's bias injection; pass them again on resume); ``parent_run_id`` nests the MLflow run under
    a parent run; ``tags`` are set on the run."""
    state = None
    if resume:
        done = _finished(cfg, resume)
        if done is not None:
            return done
        cfg, state, ckpt_dir = _resume_state(cfg, resume)
        done = _finished_before_marker(cfg, resume, state, ckpt_dir)
        if done is not None:
            return done
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    ctx = init_distributed(cfg.train.device)  # launched by torchrun: one rank of a DDP run
    device = ctx.device if ctx is not None else resolve_device(cfg.train.device)
    try:
        return _train(cfg, manifest_path, device, ctx, resume=resume, state=state, progress=progress,
                      extra_transforms=extra_transforms, parent_run_id=parent_run_id, tags=tags)
    finally:
        if ctx is not None:
            ctx.close()


def _train(cfg, manifest_path, device, ctx, *, resume, state, progress, extra_transforms, parent_run_id,
           tags) -> FitResult:
    main = ctx is None or ctx.is_main
    methods = build_methods(cfg.methods, cfg)
    manifest = load_manifest(manifest_path, cfg.data.classes, require_masks=any(m.needs_masks for m in methods),
                             split_fractions=cfg.data.split_fractions, split_seed=cfg.data.split_seed)
    if state is not None and state.get("manifest_sha256") != manifest.sha256:
        raise UserError(f"cannot resume run {resume}: manifest {manifest_path} changed since the run started "
                        f"(SHA-256 differs); start a new run instead")
    model = build_classifier(cfg.model.backbone, len(cfg.data.classes), width=cfg.model.width)
    # model.init: before the run exists, so a missing weight file creates no empty run; a resumed run's
    # checkpoint holds the weights already; every DDP rank reads the same file
    init_report = apply_init(model, cfg) if state is None else None
    tracker = Tracker(cfg.tracking.experiment, cfg.tracking.tracking_uri, enabled=main)  # rank 0 logs
    if state is not None and main:
        _send_buffered(Path(cfg.train.checkpoint_dir) / resume / BUFFER_NAME, resume)
    run_id = tracker.start(run_id=resume, run_name=cfg.tracking.run_name, parent_run_id=parent_run_id)
    if ctx is not None:  # every rank checkpoints under (and records) rank 0's run id
        run_id = tracker.run_id = ctx.broadcast_object(run_id)
    if tags:
        tracker.set_tags(tags)
    ckpt_dir = Path(cfg.train.checkpoint_dir) / (run_id or "local")
    tracker.buffer_path = ckpt_dir / BUFFER_NAME  # where records wait while the server is unreachable
    with tracker.ending_run():  # FINISHED, KILLED on Ctrl-C, FAILED on any error (TrainingDiverged too)
        run_tags = tracker.load_logged() if state is not None else {}  # resumed: nothing is logged twice
        trainer = Trainer(cfg, manifest, model, methods, tracker, device, ckpt_dir, progress=progress,
                          extra_transforms=extra_transforms, dist=ctx)
        if ctx is not None:
            distribute_trainer(trainer, ctx)
        if state is not None:
            trainer.load_state_dict(state)
            if main:
                logger.info(f"resuming run {run_id} after epoch {trainer.epoch}")
        elif main:
            tracker.log_run_context(config_to_dict(cfg), manifest.sha256, str(manifest_path))
            tracker.log_params(_cache_params(trainer.cache_info))
            _log_splits(tracker, manifest.frame)
            tracker.log_site_keys(manifest.frame["site"])  # per-site metric names ↔ real site names
            if init_report is not None:
                tracker.log_dict(init_report, "model_init.json")
                tracker.set_tags({"isnet.init_loaded": len(init_report["loaded"]),
                                  "isnet.init_skipped": len(init_report["skipped"])})
                logger.info(describe_init(init_report))
            counts = manifest.counts()
            logger.info(_describe_cache(trainer))
            logger.info(f"run {run_id} started; checkpoints in {ckpt_dir}\n"
                        f"images per split and class:\n{counts.to_string()}")
        result = trainer.fit()
        if main:  # rank 0 tests and exports
            result.test_metrics = trainer.test()
            tracker.log_metrics(result.test_metrics)
            tracker.log_metrics({"best_epoch": result.best_epoch, "epochs_run": result.epochs_run})
            tracker.log_artifact(trainer.best_path, ARTIFACT_DIR)
            if cfg.tracking.log_model and MODEL_TAG not in run_tags:
                size = cfg.data.image_size
                # batch 2: a batch of 1 would be exported as a fixed size
                example = np.zeros((2, 1, size, size), dtype=np.float32)
                try:
                    if tracker.log_model(trainer.model.cpu().eval(), example):
                        tracker.set_tags({MODEL_TAG: "true"})
                except Exception as exc:  # the weights are already logged as checkpoints/best.pt
                    logger.warning(f"warning: MLflow could not export the model ({type(exc).__name__}: {exc}); "
                                   f"the best checkpoint is logged under {ARTIFACT_DIR}/{BEST_NAME}")
    if main:
        _write_finished(result)
    return result


def _cache_params(info: dict) -> dict:
    """The resolved data cache as run params: the disk cache's folder, the memory cache's rate."""
    out = {}
    if "folder" in info:
        out["data.cache_folder"] = info["folder"]
    if "rate" in info:
        out["data.cache_rate_resolved"] = round(float(info["rate"]), 6)
    return out


def _describe_cache(trainer: Trainer) -> str:
    info, data = trainer.cache_info, trainer.cfg.data
    shard = f" (this rank's shard of {trainer.dist.world_size})" if trainer.dist.world_size > 1 else ""
    if info["mode"] == "disk":
        hits = trainer.train_ds.cached_count()
        return (f"data cache: disk, {info['folder']} ({data.cache_dtype}); {hits} of {info['train_images']} "
                f"training images{shard} already there, the others are decoded and written in the first epoch")
    if info["mode"] == "memory":
        n = trainer.train_ds.cached_count()
        return (f"data cache: memory ({data.cache_dtype}), {n} of {info['train_images']} training images{shard} "
                f"cached, rate {info.get('rate', data.cache_rate):.3g}")
    return "data cache: none (every image is decoded every epoch)"


def _send_buffered(buffer: Path, run_id: str) -> None:
    """Records a stopped run could not send go first, so that the resumed run sees (and does not repeat)
    them."""
    if not buffer.is_file():
        return
    try:
        sent, _ = flush_buffer(buffer)
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        raise UserError(f"cannot resume run {run_id}: its buffered tracking records ({buffer}) cannot be sent, "
                        f"the MLflow server is unreachable ({str(exc)[:160]}); resume once it answers") from None
    logger.info(f"sent {sent} tracking records run {run_id} had buffered")


def _log_splits(tracker: Tracker, frame: pd.DataFrame) -> None:
    cols = [c for c in frame.columns if c not in ("image_path", "mask_path")]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "splits.csv"
        frame[cols].to_csv(p, index=False)
        tracker.log_artifact(p, "data")
