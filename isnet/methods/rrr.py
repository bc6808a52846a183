"""RRR, right for the right reasons (DESIGN.md §5): penalise input gradients in the background.

Loss term λ·‖(1 − m)·∂(Σ_c log p_c)/∂x‖², summed over pixels and averaged over the batch, with m the lung
mask. The input gradient is taken with ``create_graph=True`` on the forward graph of the step, so it composes
with ISNet (whose LRP forward returns logits whose graph reaches the input) as well as with the plain forward.
The gradient is taken with respect to the [0, 1] image whatever ``data.intensity`` is (under 'xrv',
x = (2u - 1)·1024, so ∂/∂u = 2048·∂/∂x), so λ means the same under every convention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.train.trainer import Trainer


def rrr_penalty(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, span: float = 1.0) -> torch.Tensor:
    """Mean over the batch of Σ_pixels ((1 − m)·∂Σ_c log p_c/∂u)², differentiable w.r.t. the weights, where
    u = (x − low)/span is the image in [0, 1] (``span`` = high − low of the input range)."""
    log_p = F.log_softmax(logits.float(), dim=1).sum()
    (grad,) = torch.autograd.grad(log_p, x, create_graph=True)
    if span != 1.0:
        grad = grad * span
    background = 1.0 - (mask > 0.5).to(grad.dtype)
    return ((background * grad) ** 2).flatten(1).sum(1).mean()


@register("rrr")
class RRRMethod(Method):
    name = "rrr"
    needs_masks = True

    def __init__(self, cfg: "TrainConfig"):
        self.lam = cfg.method.rrr.lam
        low, high = cfg.data.value_range
        self.span = high - low

    def before_forward(self, batch: dict, trainer: "Trainer") -> dict:
        x = batch["image"]
        if x.requires_grad:  # another method made it part of a graph already
            return batch
        return {**batch, "image": x.detach().requires_grad_(True)}

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        penalty = rrr_penalty(out.logits, batch["image"], batch["mask"], self.span)
        return LossTerms(terms={"rrr": self.lam * penalty}, metrics={"rrr_penalty": float(penalty.detach())})
