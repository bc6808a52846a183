"""Which classes the ISNet loss explains in a training step (the three variants).

* ``original``: every class, so the network cannot hide a background shortcut in
  a class it is not currently predicting (cost grows with the number of classes;
  the LRP engine explains them in one batched backward pass where that is faster,
  i.e. for small inputs, see ``isnet.lrp.heatmap.BATCH_MAX_PIXELS``).
* ``stochastic`` (Faster ISNet): one class per image, the top class half of the
  time, otherwise a uniformly random other class, so every class is still
  penalised in expectation at the cost of a single heatmap.
* ``selective`` (Faster ISNet): one heatmap per image of a single softmax-based
  score, given to the LRP engine as initial relevances at the logit layer.

Selective score, our choice: the top class ``c``'s log-probability
``log p_c = z_c - logsumexp(z)``, explained at the logit layer by
gradient x input, ``R_j = z_j * (1[j = c] - p_j)``.  Reasons:

* it is the softmax output the classifier is trained on, and its gradient
  ``onehot - p`` is exactly the cross-entropy gradient direction, so the
  relevance says which logits support ``c`` *against* the competing classes
  (logits of likely rivals get negative relevance), which is what the
  softmax-based variant is meant to capture;
* the weights ``1[j = c] - p_j`` sum to zero, so the total relevance
  ``z_c - sum_j p_j z_j`` is invariant to adding a constant to all logits, like
  ``log p_c`` itself; explaining the raw logit would not be;
* it needs no LRP rule for the softmax layer and costs one backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["VARIANTS", "explain_targets", "selective_relevance"]

VARIANTS: tuple[str, ...] = ("original", "stochastic", "selective")


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, C], got {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (C >= 1)")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")


def selective_relevance(logits: Tensor) -> Tensor:
    """Initial output relevance [B, 1, C] for the top class's log-probability.

    ``R_j = z_j * (1[j = c] - p_j)`` with ``c = argmax z`` (see module docstring).
    """
    _check_logits(logits)
    z = logits.detach()
    p = torch.softmax(z, dim=1)
    onehot = torch.zeros_like(z)
    onehot.scatter_(1, z.argmax(dim=1, keepdim=True), 1.0)
    return (z * (onehot - p)).unsqueeze(1)


def _stochastic_classes(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    batch, n_classes = logits.shape
    top = logits.detach().argmax(dim=1)
    if n_classes == 1:
        return top.unsqueeze(1)
    rng_device = generator.device if generator is not None else torch.device("cpu")
    take_top = torch.rand(batch, generator=generator, device=rng_device) < 0.5
    # Uniform over the C-1 other classes: draw from [0, C-2] and skip the top class.
    other = torch.randint(0, n_classes - 1, (batch,), generator=generator, device=rng_device)
    take_top = take_top.to(logits.device)
    other = other.to(logits.device)
    other = other + (other >= top).long()
    return torch.where(take_top, top, other).unsqueeze(1)


def explain_targets(logits: Tensor, variant: str, generator: torch.Generator | None = None) -> Tensor:
    """Targets for the LRP engine for one training step.

    Returns ``LongTensor [B, C]`` (original: all classes), ``LongTensor [B, 1]``
    (stochastic: one class per image) or ``float [B, 1, C]`` (selective: initial
    output relevances).  ``logits`` are detached here; ``generator`` makes the
    stochastic draw reproducible.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ISNet variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    _check_logits(logits)
    batch, n_classes = logits.shape
    if variant == "original":
        return torch.arange(n_classes, device=logits.device).expand(batch, n_classes).clone()
    if variant == "stochastic":
        return _stochastic_classes(logits, generator)
    return selective_relevance(logits)
