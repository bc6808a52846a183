"""The relevance diagnostics of every run, as a built-in hook: each epoch, the validation background share
(LRP of the predicted class, the run's ``lrp`` rules) and every ``train.heatmap_every`` epochs a heatmap grid
logged to MLflow. Built in rather than registered: it is not a training method and cannot be listed."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from isnet.lrp import supports_model
from isnet.measure.figures import heatmap_grid
from isnet.measure.relevance import explain_loader
from isnet.methods.base import Method, TrainContext


class RelevanceDiagnostics(Method):
    name = "relevance_diagnostics"

    def validation_metrics(self, trainer: TrainContext, epoch: int) -> dict[str, float]:
        cfg = trainer.cfg
        every = cfg.train.heatmap_every
        figure_now = every > 0 and epoch % every == 0
        if not cfg.train.val_bg_share or not supports_model(trainer.model):
            return {}
        res = explain_loader(trainer.model, trainer.val_loader, trainer.device, trainer.lrp_config,
                             keep=8 if figure_now else 0)
        shares = res["bg_share"]
        if not len(shares) or np.isnan(shares).all():
            return {}
        kept = res["kept"]
        if figure_now and kept["image"]:
            names = cfg.data.classes
            titles = [f"{names[t]} → {names[p]}" for t, p in zip(kept["label"], kept["pred"])]
            fig = heatmap_grid(kept["image"], kept["mask"], kept["heatmap"], titles, value_range=cfg.data.value_range)
            trainer.tracker.log_figure(fig, f"heatmaps/val_epoch_{epoch:03d}.png")
            plt.close(fig)
        return {"val_bg_share": float(np.nanmean(shares))}
