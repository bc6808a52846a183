"""Training the lung segmenter on the manifest rows that have masks; Dice/IoU on the validation split.

Splits follow the manifest (empty cells: seeded, patient-grouped assignment with ``split_fractions``).
The best epoch by validation Dice (after post-processing, at the network's resolution) is kept as
``checkpoints/<run_id>/best.pt`` and logged to the MLflow run under ``checkpoints/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from isnet.config.schema import DataConfig
from isnet.data.dataset import build_dataset, build_loader
from isnet.data.manifest import read_manifest, sha256_file, validate_manifest
from isnet.data.splits import assign_splits
from isnet.errors import UserError
from isnet.models.segmenter import build_segmenter
from isnet.segment.config import SegmenterConfig
from isnet.segment.postprocess import clean_mask, dice_iou
from isnet.tracking import BUFFER_NAME, Tracker
from isnet.train.checkpoint import ARTIFACT_DIR, BEST_NAME, save_checkpoint
from isnet.train.seeding import seed_everything

KIND = "isnet-lung-segmenter"


@dataclass
class SegFitResult:
    run_id: str | None
    best_epoch: int
    val_dice: float
    val_iou: float
    history: list[dict] = field(default_factory=list)
    test_dice: float | None = None
    test_iou: float | None = None
    checkpoint: Path | None = None


def data_config(cfg: SegmenterConfig) -> DataConfig:
    """The classifier's data pipeline with the segmenter's ``data`` block (same loading and normalisation); the
    settings only a classifier has keep their defaults."""
    return DataConfig.model_validate(cfg.data.model_dump())


def _records(df) -> list[dict]:
    return [{"image": r.image_path, "mask": r.mask_path, "label": 0, "row": int(r.row), "site": r.site,
             "patient_id": r.patient_id} for r in df.itertuples(index=False)]


def segmentation_rows(manifest: str | Path, cfg: SegmenterConfig):
    """Validated rows with masks, every split decided; a manifest without masks is a user error."""
    df = read_manifest(manifest)
    df = df[df["mask"] != ""]
    if df.empty:
        raise UserError(f"manifest {manifest} has no row with a lung mask; the segmenter learns from masks")
    labels = sorted(set(df["label"]))  # labels do not matter here; validate files, masks, leakage
    validate_manifest(df, manifest, labels).raise_if_any()
    df = assign_splits(df, cfg.data.split_fractions, cfg.data.split_seed)
    for s in ("train", "val"):
        if not (df["split"] == s).any():
            raise UserError(f"manifest {manifest}: no masked rows in split {s!r}; leave split cells empty for "
                            f"automatic assignment or add rows")
    return df


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device 'cuda' asked for but no CUDA device is available")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 − soft Dice per image, averaged (smoothing ``eps`` keeps empty masks finite)."""
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    inter = (p * t).sum(1)
    return (1 - (2 * inter + eps) / (p.sum(1) + t.sum(1) + eps)).mean()


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader, device: torch.device, cfg: SegmenterConfig) -> tuple[float, float]:
    """Mean per-image Dice and IoU of post-processed masks against the manifest's masks."""
    model.eval()
    pp = cfg.postprocess
    dices, ious = [], []
    for batch in loader:
        prob = torch.sigmoid(model(batch["image"].to(device))).cpu().numpy()[:, 0]
        for p, t in zip(prob, batch["mask"].numpy()[:, 0]):
            m = clean_mask(p > pp.threshold, pp.keep_components, pp.fill_holes)
            d, i = dice_iou(m, t > 0.5)
            dices.append(d)
            ious.append(i)
    return float(np.mean(dices)), float(np.mean(ious))


def train_segmenter(cfg: SegmenterConfig, manifest: str | Path, *, log=print) -> SegFitResult:
    """Train, validate each epoch, keep the best weights, log everything to MLflow; returns the scores."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed, True)
    device = _device(cfg.device)
    df = segmentation_rows(manifest, cfg)
    dcfg = data_config(cfg)
    train_ds = build_dataset(_records(df[df["split"] == "train"]), dcfg, train=True)
    val_ds = build_dataset(_records(df[df["split"] == "val"]), dcfg, train=False)
    test_rows = df[df["split"] == "test"]
    gen = torch.Generator().manual_seed(cfg.seed)
    train_loader = build_loader(train_ds, dcfg, shuffle=True, generator=gen)
    val_loader = build_loader(val_ds, dcfg, shuffle=False)
    model = build_segmenter(cfg.encoder, cfg.decoder_channels).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.optim.lr,
                                                total_steps=cfg.optim.epochs * len(train_loader), pct_start=0.2)
    tracker = Tracker(cfg.tracking.experiment, cfg.tracking.tracking_uri)
    run_id = tracker.start(run_name=cfg.tracking.run_name)
    ckpt = Path(cfg.checkpoint_dir) / (run_id or "local") / BEST_NAME
    tracker.buffer_path = ckpt.parent / BUFFER_NAME  # where records wait while the server is unreachable
    result = SegFitResult(run_id, 0, -1.0, 0.0, checkpoint=ckpt)
    with tracker.ending_run():  # FINISHED, KILLED on Ctrl-C, FAILED on any error
        tracker.log_run_context(cfg.model_dump(mode="json"), sha256_file(manifest), str(manifest))
        tracker.set_tags({"kind": KIND})
        counts = df.groupby("split").size().to_dict()
        tracker.log_params({f"rows_{k}": v for k, v in counts.items()})
        log(f"segmenter run {run_id}: {counts} masked images, encoder {cfg.encoder}, {cfg.data.image_size} px")
        stale = 0
        for epoch in range(1, cfg.optim.epochs + 1):
            t0 = time.time()
            model.train()
            total, n = 0.0, 0
            for batch in train_loader:
                x, y = batch["image"].to(device), (batch["mask"] > 0.5).float().to(device)
                logits = model(x)
                loss = cfg.dice_weight * soft_dice_loss(logits, y) + \
                    cfg.bce_weight * F.binary_cross_entropy_with_logits(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.item() * len(x)
                n += len(x)
            dice, iou = evaluate(model, val_loader, device, cfg)
            rec = {"train_loss": total / n, "val_dice": dice, "val_iou": iou, "epoch_seconds": time.time() - t0}
            result.history.append(rec)
            tracker.log_metrics(rec, step=epoch)
            log(f"epoch {epoch}/{cfg.optim.epochs}: loss {rec['train_loss']:.4f}  val Dice {dice:.4f}  IoU {iou:.4f}")
            if dice > result.val_dice:
                result.best_epoch, result.val_dice, result.val_iou, stale = epoch, dice, iou, 0
                save_checkpoint({"kind": KIND, "model": model.state_dict(), "config": cfg.model_dump(mode="json"),
                                 "epoch": epoch, "val_dice": dice, "val_iou": iou}, ckpt)
            else:
                stale += 1
                if cfg.optim.early_stopping_patience and stale >= cfg.optim.early_stopping_patience:
                    log(f"early stop: no val Dice improvement for {stale} epochs")
                    break
        if len(test_rows):
            from isnet.train.checkpoint import load_checkpoint

            model.load_state_dict(load_checkpoint(ckpt)["model"])
            test_loader = build_loader(build_dataset(_records(test_rows), dcfg, train=False), dcfg, shuffle=False)
            result.test_dice, result.test_iou = evaluate(model, test_loader, device, cfg)
            tracker.log_metrics({"test_dice": result.test_dice, "test_iou": result.test_iou})
        tracker.log_metrics({"best_val_dice": result.val_dice, "best_val_iou": result.val_iou,
                             "best_epoch": result.best_epoch})
        tracker.log_artifact(ckpt, ARTIFACT_DIR)
    return result
