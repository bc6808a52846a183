"""The training loop: data, model, optimiser and the enabled methods composed through their hooks."""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from isnet.config.load import config_to_dict
from isnet.config.schema import TrainConfig
from isnet.data.dataset import build_dataset, build_loader, eval_loader, memory_cache_rate
from isnet.data.manifest import Manifest
from isnet.errors import UserError
from isnet.lrp import LRPConfig, run_lrp_config
from isnet.methods.base import LOSS_RULE, Method, StepOutput, combine_losses
from isnet.tracking import Tracker
from isnet.tracking_names import site_keys
from isnet.train.balance import balance_gradients, ce_gradient
from isnet.train.diagnostics import RelevanceDiagnostics
from isnet.train.distributed import DistContext, SingleProcess
from isnet.train.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint, save_checkpoint
from isnet.train.evaluation import per_site_accuracy, predict, score
from isnet.train.seeding import epoch_seed

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class FitResult:
    run_id: str | None
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    checkpoint_dir: Path
    test_metrics: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    already_finished: bool = False  # ``--resume`` of a run that had finished: nothing was run or written
    #: seconds the methods' ``on_fit_start`` hooks took (ISNet's band warm-up), not part of any epoch's time
    fit_start_seconds: float = 0.0


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def build_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig):
    o = cfg.optim
    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o.epochs)
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=o.step_size, gamma=o.gamma)
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


class Trainer:
    """Owns one training run; methods see it through their hooks (model, loaders, device, tracker, config)."""

    #: the distributed interface: one process by default, a DistContext on torchrun ranks
    #: (isnet.train.distributed.distribute_trainer)
    dist: "SingleProcess | DistContext" = SingleProcess()

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that logs, checkpoints and validates."""
        return self.dist.is_main

    def __init__(self, cfg: TrainConfig, manifest: Manifest | None, model: torch.nn.Module, methods: list[Method],
                 tracker: Tracker | None, device: torch.device, checkpoint_dir: Path, progress: bool | None = None,
                 extra_transforms: Mapping[str, Sequence] | None = None,
                 dist: "SingleProcess | DistContext | None" = None, *,
                 loaders: tuple[Iterable[dict], Iterable[dict] | None] | None = None):
        """``dist``: a torchrun rank's :class:`DistContext` (then :func:`distribute_trainer` follows), so that
        this rank builds and caches only its own shard of the training split, and validation data on rank 0.
        ``loaders``: prebuilt (training, validation) loaders used as they are instead of data sets built from
        ``manifest`` (see :meth:`from_loaders`); everything else is set up as for a run."""
        self.cfg = cfg
        if dist is not None:
            self.dist = dist
        # per split ("train", "val", "test"): transforms inserted after resize, e.g. a stress-test bias
        self.extra_transforms = {k: list(v) for k, v in (extra_transforms or {}).items()}
        self.manifest = manifest
        self.model = model.to(device)
        self.methods = methods
        #: hooks every run has (not listed in methods:): the validation relevance diagnostics
        self.builtin_hooks = [RelevanceDiagnostics()]
        self.tracker = tracker
        self.device = device
        self.checkpoint_dir = Path(checkpoint_dir)
        self.progress = progress
        self.num_classes = len(cfg.data.classes)
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = build_scheduler(self.optimizer, cfg)
        self.epoch = 0  # completed epochs
        self.global_step = 0
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self.fit_start_seconds = 0.0
        if loaders is None:
            self._build_data()
        else:
            self.train_loader, self.val_loader = loaders
            self.train_ds = self.val_ds = None
            self.cache_info = {"mode": "prebuilt loaders"}
        use_amp = device.type == "cuda" and cfg.train.amp != "off"
        self.amp_dtype = (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported()
                          else torch.float16) if use_amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    @classmethod
    def from_loaders(cls, cfg: TrainConfig, model: torch.nn.Module, methods: list[Method], device: torch.device,
                     train_loader: Iterable[dict], val_loader: Iterable[dict] | None = None, *,
                     tracker: Tracker | None = None, checkpoint_dir: Path | None = None,
                     progress: bool | None = False) -> "Trainer":
        """A trainer over batches the caller supplies, without a manifest (the bench's train-step cases): built by
        the same ``__init__`` as a run's, so its optimiser, schedule, AMP policy and method wiring cannot drift
        from what ``isnet train`` runs. Without a tracker or checkpoint folder, only steps and the methods' hooks
        that touch neither can be run (no :meth:`fit`, :meth:`state_dict` or :meth:`test`)."""
        folder = checkpoint_dir if checkpoint_dir is not None else Path(tempfile.gettempdir()) / "isnet-unused"
        return cls(cfg, None, model, methods, tracker, device, folder, progress, loaders=(train_loader, val_loader))

    # -- data --------------------------------------------------------------------------------------------
    def _show_progress(self) -> bool:
        return self.is_main and self.progress is not False and (self.progress is True or sys.stderr.isatty())

    def _build_data(self) -> None:
        """Training data of this rank's shard (all of it in one process), reshuffled per epoch by the loader's
        generator; validation data on rank 0 only (the only rank that validates). One ``data.cache_max_gb``
        budget covers both splits."""
        data = self.cfg.data
        train_records = self.dist.shard(self.manifest.records("train"), self.cfg.train.seed)
        val_records = self.manifest.records("val") if self.is_main else []
        rate = None
        if data.cache == "memory" and train_records:
            rate = memory_cache_rate(data, train_records[0], len(train_records) + len(val_records),
                                     self.extra_transforms.get("train", ()))
        #: what the data cache holds on this rank, for the run's log
        self.cache_info = {"mode": data.cache, "train_images": len(train_records), "val_images": len(val_records)}
        if rate is not None:
            self.cache_info["rate"] = rate
        progress = self._show_progress()
        self.train_ds = build_dataset(train_records, data, train=True, progress=progress, cache_rate=rate,
                                      extra=self.extra_transforms.get("train", ()))
        if self.train_ds.folder is not None:
            self.cache_info["folder"] = str(self.train_ds.folder)
        self.train_loader = build_loader(self.train_ds, data, shuffle=True, generator=torch.Generator())
        self.val_ds = self.val_loader = None
        if self.is_main:
            self.val_ds = build_dataset(val_records, data, train=False, progress=progress, cache_rate=rate,
                                        extra=self.extra_transforms.get("val", ()))
            self.val_loader = build_loader(self.val_ds, data, shuffle=False)

    # -- checkpoints ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "fit_start_seconds": self.fit_start_seconds,
            "methods": {m.name: m.state_dict() for m in self.methods},
            "config": config_to_dict(self.cfg),
            "classes": list(self.cfg.data.classes),
            "run_id": self.tracker.run_id,
            "manifest_sha256": self.manifest.sha256,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["global_step"])
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        self.history = list(state["history"])
        self.fit_start_seconds = float(state.get("fit_start_seconds", 0.0))
        for m in self.methods:
            m.load_state_dict(state["methods"].get(m.name, {}))

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / LAST_NAME

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / BEST_NAME

    # -- one step ------------------------------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def forward(self, batch: dict) -> StepOutput:
        return self.dist.forward(self._forward, self.model, batch)  # DDP's forward on torchrun ranks

    def _forward(self, model: torch.nn.Module, batch: dict) -> StepOutput:
        owner = next((m for m in self.methods if m.owns_forward), None)
        if owner is not None:
            return owner.forward(model, batch, self)
        with self._autocast():
            return StepOutput(logits=model(batch["image"]))

    def train_step(self, batch: dict) -> dict[str, float]:
        batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        for m in self.methods:
            batch = m.before_forward(batch, self)
        out = self.forward(batch)
        logits = out.logits.float()
        ce = F.cross_entropy(logits, batch["label"])
        metrics: dict[str, float] = {"ce": float(ce.detach())}
        parts = {m.name: m.loss(ce, out, batch, self) for m in self.methods}  # each sees the true CE
        total, combined = combine_losses(ce, parts)
        if parts:
            metrics.update(combined)
        for part in parts.values():
            metrics.update(part.metrics)
        finite = bool(torch.isfinite(total))
        finite = self.dist.all_true(finite)  # all ranks stop together
        if not finite:
            raise TrainingDiverged(
                f"loss became {float(total)} at epoch {self.epoch + 1}, step {self.global_step + 1}; training "
                f"stopped and the last good checkpoint is kept at {self.last_path}. Lower the learning rate "
                f"or enable gradient clipping (optim.grad_clip_norm).")
        self.optimizer.zero_grad(set_to_none=True)
        balance = [r for r in (m.gradient_balance() for m in self.methods) if r]
        if balance:
            params = [p for p in self.model.parameters() if p.requires_grad]
            g_ce = ce_gradient(self.scaler.scale(ce * float(combined["ce_weight"])), params)
        self.scaler.scale(total).backward()
        if balance:
            factor = balance_gradients(params, self.dist.mean_tensors(g_ce), min(balance))
            if math.isfinite(factor):  # not on a mixed-precision step the scaler skips
                metrics["grad_balance"] = factor
        clip = [c for c in [self.cfg.optim.grad_clip_norm] + [m.grad_clip_norm() for m in self.methods] if c]
        if clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), min(clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        for m in self.methods:
            m.after_step(self)
        self.global_step += 1
        metrics["loss"] = float(total.detach())
        metrics["correct"] = float((logits.argmax(1) == batch["label"]).sum())
        metrics["n"] = float(len(batch["label"]))
        return metrics

    # -- epochs --------------------------------------------------------------------------------------
    def train_epoch(self) -> dict[str, float]:
        e = self.epoch + 1
        seed = epoch_seed(self.cfg.train.seed, e)
        torch.manual_seed(seed)
        self.train_loader.generator.manual_seed(seed)
        if hasattr(self.train_ds.transform, "set_random_state"):
            self.train_ds.transform.set_random_state(seed=seed)
        for m in self.methods:
            m.on_epoch_start(e, self)
        self.model.train()
        sums: dict[str, float] = {}
        bar = tqdm(self.train_loader, desc=f"epoch {e}/{self.cfg.optim.epochs}", leave=False, file=sys.stderr,
                   disable=self.progress is False or (self.progress is None and not sys.stderr.isatty()))
        for batch in bar:
            m = self.train_step(batch)
            n = m.pop("n")
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + (v if k == "correct" else v * n)
            sums["n"] = sums.get("n", 0.0) + n
            bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}", acc=f"{sums['correct'] / sums['n']:.3f}")
        sums = self.dist.sum_dict(sums)  # over ranks
        n = max(sums.pop("n", 1.0), 1.0)
        out = {f"train_{k}": v / n for k, v in sums.items() if k != "correct"}
        out["train_accuracy"] = sums.get("correct", 0.0) / n
        return out

    def validate(self) -> dict[str, float]:
        # rank 0 validates on the whole split; every rank gets its metrics
        return self.dist.broadcast_object(self._validate() if self.is_main else None)

    def _validate(self) -> dict[str, float]:
        pred = predict(self.model, self.val_loader, self.device)
        metrics = {f"val_{k}": v for k, v in score(pred, self.num_classes).items()}
        for m in (*self.builtin_hooks, *self.methods):
            metrics.update(m.validation_metrics(self, self.epoch + 1))
        return metrics

    @property
    def lrp_config(self) -> LRPConfig:
        """The run's ``lrp`` rules (z^B bounds from ``data.intensity``), used for every run's
        diagnostics so that runs compare."""
        return run_lrp_config(self.cfg)

    def fit(self) -> FitResult:
        """Train until the configured epochs or early stopping; checkpoint after every epoch."""
        self.tracker.set_tags({"loss.composition": LOSS_RULE})
        t0 = time.perf_counter()
        for m in self.methods:
            m.on_fit_start(self)
        if self.epoch == 0:  # what the methods spend before the first epoch (e.g. ISNet's warm-up) is paid too
            self.fit_start_seconds = time.perf_counter() - t0
            self.tracker.log_metrics({"fit_start_seconds": self.fit_start_seconds})
        self.dist.sync_methods(self.methods)  # every rank starts from rank 0's method state
        patience = self.cfg.optim.early_stopping_patience
        while self.epoch < self.cfg.optim.epochs:
            if patience and self.bad_epochs >= patience:
                break
            t0 = time.perf_counter()
            metrics = self.train_epoch()
            metrics.update(self.validate())
            metrics["lr"] = self.optimizer.param_groups[0]["lr"]
            self.scheduler.step()
            self.epoch += 1
            metrics["epoch_seconds"] = time.perf_counter() - t0
            for m in self.methods:
                metrics.update(m.on_epoch_end(self.epoch, metrics, self))
            # an epoch a method rules out (e.g. before ISNet's P schedule reaches its final P) can neither be
            # the best checkpoint nor count towards early stopping
            selectable = all(m.selectable(self.epoch) for m in self.methods)
            improved = selectable and metrics["val_loss"] < self.best_val_loss - 1e-6
            if improved:
                self.best_val_loss, self.best_epoch, self.bad_epochs = metrics["val_loss"], self.epoch, 0
            elif selectable:
                self.bad_epochs += 1
            self.history.append({"epoch": float(self.epoch), **metrics})
            self.tracker.log_metrics(metrics, step=self.epoch)
            if not self.is_main:  # distributed: rank 0 writes the checkpoints and reports
                continue
            if improved:
                save_checkpoint(self.best_weights_state(), self.best_path)
            save_checkpoint(self.state_dict(), self.last_path, keep_previous=True)
            logger.info(f"epoch {self.epoch}/{self.cfg.optim.epochs}  train loss {metrics['train_loss']:.4f} "
                        f"acc {metrics['train_accuracy']:.3f}  val loss {metrics['val_loss']:.4f} "
                        f"acc {metrics['val_accuracy']:.3f} auc {metrics['val_macro_auc']:.3f}  "
                        f"({metrics['epoch_seconds']:.0f}s){'  *best' if improved else ''}")
        if patience and self.bad_epochs >= patience and self.epoch < self.cfg.optim.epochs:
            logger.info(f"early stopping: no validation-loss improvement for {patience} epochs")
        for m in self.methods:
            m.on_fit_end(self)
        return FitResult(self.tracker.run_id, self.epoch, self.best_epoch, self.best_val_loss,
                         self.checkpoint_dir, history=self.history, fit_start_seconds=self.fit_start_seconds)

    def best_weights_state(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "model": self.model.state_dict(), "epoch": self.epoch,
                "val_loss": self.best_val_loss, "config": config_to_dict(self.cfg),
                "classes": list(self.cfg.data.classes), "run_id": self.tracker.run_id}

    def test(self) -> dict[str, float]:
        """Score the best checkpoint on the test split (overall and per site)."""
        records = self.manifest.records("test")
        if not records:
            return {}
        best = load_checkpoint(self.best_path, map_location=self.device)
        self.model.load_state_dict(best["model"])
        # one pass: nothing to cache; the same float32 images explain/predict/report see (eval_loader)
        loader = eval_loader(records, self.cfg.data, extra=self.extra_transforms.get("test", ()))
        pred = predict(self.model, loader, self.device)
        out = {f"test_{k}": v for k, v in score(pred, self.num_classes).items()}
        keys = site_keys(self.manifest.frame["site"])  # site names are data: escaped for MLflow, mapping logged
        out.update({f"test_accuracy_{keys[site]}": v for site, v in per_site_accuracy(pred).items()})
        return out
