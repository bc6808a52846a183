"""Background consistency: the prediction must not change when the background does.

Loss term λ · mean_i KL(p(x_i) ‖ p(x̃_i)), where x̃_i is image i with the background of an image of the previous
batch (:class:`isnet.data.background.BackgroundSwapd` at p = 1). It penalises the background's effect on the
output itself, whatever path it takes through the network, including the part that LRP heatmaps do not show
(relevance absorbed by the biases), which ISNet's heatmap loss cannot see. The cross-entropy stays on the
original images.

Both x and x̃ go through the network in one extra forward pass on the 2B images, so that batch normalisation
sees one batch and an image whose swap changes nothing gets exactly the same prediction twice (term 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field

from isnet.methods.base import LossTerms, register
from isnet.methods.bg_swap import BackgroundMethod, BackgroundParams, background_transform

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext


def consistency_divergence(model: torch.nn.Module, image: torch.Tensor, swapped: torch.Tensor) -> torch.Tensor:
    """Per image KL(p(image) ‖ p(swapped)) from one forward pass of both, differentiable in both."""
    logits = model(torch.cat([image, swapped])).float()
    log_p, log_q = F.log_softmax(logits, dim=1).chunk(2)
    return (log_p.exp() * (log_p - log_q)).sum(1)


class ConsistencyParams(BackgroundParams):
    """Background consistency: lam * mean KL(p(x) || p(x with a swapped background))."""

    lam: float = Field(1.0, ge=0, description="weight of the KL term (1: as strong as the cross-entropy per "
                                              "nat of divergence)")


@register("bg_consistency", params=ConsistencyParams)
class BgConsistencyMethod(BackgroundMethod):
    """Background consistency: KL between the predictions on an image and on it with a swapped background."""

    name = "bg_consistency"

    def __init__(self, cfg: "TrainConfig"):
        self.params = cfg.method.bg_consistency
        self.swap = background_transform(self.params, 1.0, cfg.train.seed + 7919)  # not bg_swap's draws

    def loss(self, ce, out, batch, trainer: "TrainContext") -> LossTerms:
        image = batch["image"]
        swapped = self.swap({"image": image.detach(), "mask": batch["mask"]})["image"]
        divergence = consistency_divergence(trainer.model, image, swapped).mean()
        return LossTerms(terms={"bg_consistency": self.params.lam * divergence},
                         metrics={"bg_consistency_kl": float(divergence.detach())})
