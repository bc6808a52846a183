"""The ISNet method: cross-entropy mixed with the background-relevance heatmap loss (DESIGN.md §4).

One forward pass gives logits and differentiable LRP heatmaps of the classes chosen by the variant; the
heatmap loss pushes relevance out of the background. When the foreground band C1/C2 is not configured,
a short plain warm-up on a copy of the model measures the lung relevance and tunes it first.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from isnet.lrp import lrp_heatmaps, supports_model
from isnet.methods.base import LossTerms, Method, StepOutput, register
from isnet.methods.isnet_loss import (
    ISNetLossConfig,
    explain_targets,
    isnet_heatmap_loss,
    lung_relevance_totals,
    tune_foreground_band,
)

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.train.trainer import Trainer


@register("isnet")
class ISNetMethod(Method):
    name = "isnet"
    needs_masks = True
    owns_forward = True

    def __init__(self, cfg: "TrainConfig"):
        c = cfg.method.isnet
        self.params = c
        self.C1, self.C2 = c.C1, c.C2
        self.lrp = cfg.lrp_config()  # z^B bounds = the range of data.intensity
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 101)

    def loss_config(self) -> ISNetLossConfig:
        c = self.params
        return ISNetLossConfig(P=c.P, d=c.d, E=c.E, A=c.A, B=c.B, C1=self.C1, C2=self.C2, variant=c.variant)

    def _targets(self, logits: torch.Tensor) -> torch.Tensor:
        return explain_targets(logits, self.params.variant, self.generator)

    # -- hooks ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: "Trainer") -> None:
        if not supports_model(trainer.model):
            raise ValueError(f"ISNet needs an LRP-supported backbone; {trainer.cfg.model.backbone} is not")
        if self.C1 is None or self.C2 is None:
            self.C1, self.C2, warm = self._tune_band(trainer)
            if self.params.init_from_warmup:
                trainer.model.load_state_dict(warm.state_dict())
                print("isnet: training starts from the warm-up weights", flush=True)
            print(f"isnet: foreground band tuned from a {self.params.warmup_epochs}-epoch plain warm-up: "
                  f"C1={self.C1:.4g}, C2={self.C2:.4g}", flush=True)
            trainer.tracker.log_params({"method.isnet.C1_tuned": self.C1, "method.isnet.C2_tuned": self.C2})

    def _tune_band(self, trainer: "Trainer") -> tuple[float, float, torch.nn.Module]:
        """Train a copy of the model with plain cross-entropy, then measure Σ|R| inside the lungs."""
        model = copy.deepcopy(trainer.model)
        opt = torch.optim.AdamW(model.parameters(), lr=trainer.cfg.optim.lr,
                                weight_decay=trainer.cfg.optim.weight_decay)
        for _ in range(self.params.warmup_epochs):
            model.train()
            for batch in trainer.train_loader:
                x, y = batch["image"].to(trainer.device), batch["label"].to(trainer.device)
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        model.eval()
        totals = []
        for batch in trainer.train_loader:
            x = batch["image"].to(trainer.device)
            _, heat = lrp_heatmaps(model, x, self._targets, config=self.lrp)
            totals.append(lung_relevance_totals(heat, batch["mask"].to(trainer.device)))
        c1, c2 = tune_foreground_band(torch.cat(totals))
        return c1, c2, model

    def forward(self, model: torch.nn.Module, batch: dict, trainer: "Trainer") -> StepOutput:
        logits, heat = lrp_heatmaps(model, batch["image"], self._targets, config=self.lrp, create_graph=True)
        return StepOutput(logits=logits, extras={"heatmaps": heat})

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        cfg = self.loss_config()
        terms = isnet_heatmap_loss(out.extras["heatmaps"], batch["mask"], cfg)
        # (1 − P)·CE + P·L_hm, composed with the other methods by combine_losses
        return LossTerms(ce_weight=1.0 - cfg.P, terms={"isnet": cfg.P * terms["L_hm"]},
                         metrics={"L_bg": float(terms["L_bg"].detach()), "L_fg": float(terms["L_fg"].detach()),
                                  "L_hm": float(terms["L_hm"].detach()), "bg_share": float(terms["bg_share"])})

    def grad_clip_norm(self) -> float | None:
        return self.params.grad_clip_norm

    def state_dict(self) -> dict[str, Any]:
        return {"C1": self.C1, "C2": self.C2, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("C1") is not None:
            self.C1, self.C2 = float(state["C1"]), float(state["C2"])
        if "generator" in state:
            self.generator.set_state(state["generator"])
