"""RRR, right for the right reasons (Ross et al.): penalise input gradients in the background.

Loss term λ·mean_i Σ_pixels ((1 − m_i)·∂(Σ_c log p_c)(x_i)/∂x_i)², with m the lung mask: each image's own
input gradient, squared and summed over its background pixels, then averaged over the batch, so λ means the
same at every batch size (the gradient of the batch *sum* of Σ_c log p_c is each image's own gradient; the
gradient of the batch *mean*, as in ISNet's published RRR baseline, is 1/B of it, which makes the penalty
scale as 1/B²; ``gradient: batch_mean`` reproduces that baseline). The input gradient is taken with
``create_graph=True`` on the forward graph of the step, so it composes with ISNet (whose LRP forward returns
logits whose graph reaches the input) as well as with the plain forward. The gradient is taken with respect
to the [0, 1] image whatever ``data.intensity`` is (under 'xrv', x = (2u - 1)·1024, so ∂/∂u = 2048·∂/∂x),
so λ means the same under every convention.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from isnet.config.registry import MethodParams
from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext


def rrr_penalty(logits: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, span: float = 1.0,
                gradient: str = "sample") -> torch.Tensor:
    """Mean over the batch of Σ_pixels ((1 − m)·g)², differentiable w.r.t. the weights, where u = (x − low)/span
    is the image in [0, 1] (``span`` = high − low of the input range) and g = ∂(Σ_c log p_c)/∂u of each image
    (``gradient: sample``, independent of the batch size B) or of the batch mean of Σ_c log p_c
    (``batch_mean``: g / B, ISNet's published RRR baseline)."""
    log_p = F.log_softmax(logits.float(), dim=1).sum()
    (grad,) = torch.autograd.grad(log_p, x, create_graph=True)
    scale = span / (x.shape[0] if gradient == "batch_mean" else 1)
    if scale != 1.0:
        grad = grad * scale
    background = 1.0 - (mask > 0.5).to(grad.dtype)
    return ((background * grad) ** 2).flatten(1).sum(1).mean()


class RRRParams(MethodParams):
    """Right for the right reasons: lam * mean over images of ||(1 - m) * d(sum_c log p_c)/dx||^2."""

    lam: float = Field(10.0, ge=0, description="weight of the input-gradient penalty (the same at every batch "
                                               "size with gradient: sample); measured on 64 px phantoms in "
                                               "docs/methods.md")
    gradient: Literal["sample", "batch_mean"] = Field(
        "sample", description="sample: each image's own input gradient; batch_mean: the gradient of the batch "
                              "mean of sum_c log p_c, as ISNet's published RRR baseline (1/B of it, so the "
                              "penalty scales as 1/B^2 and lam depends on the batch size)")


@register("rrr", params=RRRParams)
class RRRMethod(Method):
    name = "rrr"
    needs_masks = True

    def __init__(self, cfg: "TrainConfig"):
        self.lam = cfg.method.rrr.lam
        self.gradient = cfg.method.rrr.gradient
        low, high = cfg.data.value_range
        self.span = high - low

    def before_forward(self, batch: dict, trainer: "TrainContext") -> dict:
        x = batch["image"]
        if x.requires_grad:  # another method made it part of a graph already
            return batch
        return {**batch, "image": x.detach().requires_grad_(True)}

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        penalty = rrr_penalty(out.logits, batch["image"], batch["mask"], self.span, self.gradient)
        return LossTerms(terms={"rrr": self.lam * penalty}, metrics={"rrr_penalty": float(penalty.detach())})
