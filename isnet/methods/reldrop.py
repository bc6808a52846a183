"""RelDrop: relevance-driven input dropout (DESIGN.md §5).

Once per training batch, an eval-mode LRP pass of the true class (the rules of ``method.isnet`` shared by
every run's diagnostics; ``engine: isnet`` is our engine, ``engine: zennit`` the same rules as a zennit
composite on an eval copy of the model, :mod:`isnet.lrp.zennit_ref`) gives a relevance map R per image; each
image is then occluded with probability ``prob``:

* pixel variant: R̂ = min-max normalised R, U uniform noise; a pixel is dropped when α·U + (1−α)·R̂ ≥ 1 − β
  (α = 1: random occlusion of a fraction β; α = 0: the pixels with R̂ ≥ 1 − β, the most relevant ones);
* block variant: one box with random-erasing area and aspect ranges, centred on one of the ``top_k`` most
  relevant pixels (with probability α on a random pixel instead).

Dropped pixels get the fill value (zero, the image mean, or uniform noise). The extra LRP pass (one forward
and one relevance backward, no graph kept) is the cost of the method.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch

from isnet.lrp import LRPConfig, lrp_heatmaps
from isnet.lrp.zennit_ref import check_equivalent, zennit_heatmaps
from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import RelDropConfig, TrainConfig
    from isnet.train.trainer import Trainer


def normalise(rel: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of [B, 1, H, W] relevance to [0, 1] (a constant map becomes 0)."""
    flat = rel.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(rel.shape)


def pixel_drop(rel: torch.Tensor, alpha: float, beta: float, gen: torch.Generator) -> torch.Tensor:
    """Boolean [B, 1, H, W]: α·U + (1−α)·R̂ ≥ 1 − β."""
    u = torch.rand(rel.shape, generator=gen).to(rel.device)
    return alpha * u + (1 - alpha) * normalise(rel) >= 1 - beta


def block_drop(rel: torch.Tensor, p: "RelDropConfig", gen: torch.Generator) -> torch.Tensor:
    """Boolean [B, 1, H, W]: one box per image, centred on a top-k relevant pixel (or, with prob. α, anywhere)."""
    b, _, h, w = rel.shape
    drop = torch.zeros(rel.shape, dtype=torch.bool, device=rel.device)
    k = min(p.top_k, h * w)
    top = rel.flatten(1).topk(k, dim=1).indices.cpu()
    for i in range(b):
        r = torch.rand(5, generator=gen).tolist()
        area = (p.area[0] + r[0] * (p.area[1] - p.area[0])) * h * w
        log_lo, log_hi = math.log(p.aspect[0]), math.log(p.aspect[1])
        aspect = math.exp(log_lo + r[1] * (log_hi - log_lo))
        bh = min(h, max(1, round(math.sqrt(area * aspect))))
        bw = min(w, max(1, round(math.sqrt(area / aspect))))
        if r[2] < p.alpha:
            centre = int(r[3] * h * w)
        else:
            centre = int(top[i, min(int(r[4] * k), k - 1)])
        cy, cx = divmod(centre, w)
        y0, x0 = max(0, cy - bh // 2), max(0, cx - bw // 2)
        drop[i, :, y0:y0 + bh, x0:x0 + bw] = True
    return drop


def occlude(x: torch.Tensor, drop: torch.Tensor, fill: str, gen: torch.Generator) -> torch.Tensor:
    """Replace the dropped pixels of x [B, C, H, W] by zero, the per-image mean, or uniform noise."""
    if fill == "zero":
        value = torch.zeros((), dtype=x.dtype, device=x.device)
    elif fill == "mean":
        value = x.mean((1, 2, 3), keepdim=True)
    else:
        value = torch.rand(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    return torch.where(drop.expand_as(x), value, x)


@register("reldrop")
class RelDropMethod(Method):
    name = "reldrop"

    def __init__(self, cfg: "TrainConfig"):
        self.params = cfg.method.reldrop
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 202)
        self._fraction = float("nan")

    def on_fit_start(self, trainer: "Trainer") -> None:
        if self.params.engine == "zennit":  # fail before the first step, not inside it
            try:
                check_equivalent(trainer.model, self.lrp_config(trainer))
            except ValueError as e:
                raise ValueError(f"method.reldrop.engine=zennit: {e}") from None

    def lrp_config(self, trainer: "Trainer") -> LRPConfig:
        """The run's rules (z^B bounds, body and first-layer rule) with RelDrop's own ε."""
        return dataclasses.replace(trainer.lrp_config, epsilon=self.params.epsilon)

    def relevance(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, trainer: "Trainer") -> torch.Tensor:
        """Eval-mode LRP of the true class, [B, 1, H, W]; the model's train/eval mode is restored."""
        if self.params.engine == "zennit":  # works on an eval-mode copy: the model is not touched
            return zennit_heatmaps(model, x, y, self.lrp_config(trainer))
        was_training = model.training
        model.eval()
        try:
            _, heat = lrp_heatmaps(model, x.detach(), y[:, None], config=self.lrp_config(trainer))
        finally:
            model.train(was_training)
        return heat

    def drop_mask(self, rel: torch.Tensor) -> torch.Tensor:
        p = self.params
        drop = pixel_drop(rel, p.alpha, p.beta, self.generator) if p.variant == "pixel" else \
            block_drop(rel, p, self.generator)
        chosen = (torch.rand(rel.shape[0], generator=self.generator) < p.prob).to(rel.device)
        return drop & chosen[:, None, None, None]

    def before_forward(self, batch: dict, trainer: "Trainer") -> dict:
        if not trainer.model.training or self.params.prob == 0:
            return batch
        x = batch["image"]
        drop = self.drop_mask(self.relevance(trainer.model, x, batch["label"], trainer))
        self._fraction = float(drop.float().mean())
        return {**batch, "image": occlude(x, drop, self.params.fill, self.generator)}

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        return LossTerms(metrics={"reldrop_fraction": self._fraction})

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
