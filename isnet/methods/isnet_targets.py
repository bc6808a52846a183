"""Which classes the ISNet loss explains in a training step (the variants).

* ``original``: every class, so the network cannot hide a background shortcut in
  a class it is not currently predicting (cost grows with the number of classes;
  the LRP engine explains them in one batched backward pass where that is faster,
  i.e. for small inputs, see ``isnet.lrp.heatmap.BATCH_MAX_PIXELS``).
* ``stochastic`` (Faster ISNet): one class per image: the top class with
  probability ``top_prob`` (5/11 in the reference), otherwise a uniformly random
  other class, so every class is still penalised in expectation at the cost of
  a single heatmap.
* ``selective`` (Faster ISNet, as the reference): per image the class ``c`` with
  the **lowest** logit, explaining the softmax-based quantity
  ``eta = log(p_c + eps_s) - log(1 - p_c + eps_s)`` (``eps_s = 0.01``).  The
  engine starts from the logits, so eta enters as the initial relevance
  ``R_j = z_j * d eta / d z_j`` (gradient x logit: what the reference's
  gradient-based LRP assigns to each logit), with
  ``d eta / d z_j = (1/(p_c + eps_s) + 1/(1 - p_c + eps_s)) * p_c * (1[j = c] - p_j)``.
  It is computed from the live logits, so the training graph carries the
  softmax's dependence on the weights as the reference's does.
* ``selective_top`` (our earlier variant, kept as an option): the top class's
  log-probability, ``R_j = z_j * (1[j = c] - p_j)`` with ``c = argmax z``; it
  needs no epsilon and its relevance is invariant to a shift of all logits.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["VARIANTS", "STOCHASTIC_TOP_PROB", "SELECTIVE_EPS", "explain_targets", "selective_relevance",
           "selective_top_relevance"]

VARIANTS: tuple[str, ...] = ("original", "stochastic", "selective", "selective_top")
#: probability of explaining the top class in the stochastic variant (the reference's 5/11)
STOCHASTIC_TOP_PROB = 5.0 / 11.0
#: stabiliser of the selective variant's eta (the reference network's default)
SELECTIVE_EPS = 0.01


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [B, C], got {tuple(logits.shape)}")
    if logits.shape[1] < 1:
        raise ValueError("logits must have at least one class (C >= 1)")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be floating point, got {logits.dtype}")


def selective_relevance(logits: Tensor, eps: float = SELECTIVE_EPS) -> Tensor:
    """Initial output relevance [B, 1, C] of the reference's selective variant.

    ``R_j = z_j * d eta / d z_j`` for ``eta = log(p_c + eps) - log(1 - p_c + eps)``, ``c = argmin z``
    (see module docstring). Differentiable in ``logits``; pass detached logits for a constant seed.
    """
    _check_logits(logits)
    p = torch.softmax(logits, dim=1)
    c = logits.detach().argmin(dim=1, keepdim=True)
    p_c = p.gather(1, c)
    onehot = torch.zeros_like(p).scatter_(1, c, 1.0)
    k = 1.0 / (p_c + eps) + 1.0 / (1.0 - p_c + eps)
    return (logits * k * p_c * (onehot - p)).unsqueeze(1)


def selective_top_relevance(logits: Tensor) -> Tensor:
    """Initial output relevance [B, 1, C] for the top class's log-probability (our ``selective_top``).

    ``R_j = z_j * (1[j = c] - p_j)`` with ``c = argmax z``, from detached logits.
    """
    _check_logits(logits)
    z = logits.detach()
    p = torch.softmax(z, dim=1)
    onehot = torch.zeros_like(z)
    onehot.scatter_(1, z.argmax(dim=1, keepdim=True), 1.0)
    return (z * (onehot - p)).unsqueeze(1)


def _stochastic_classes(logits: Tensor, generator: torch.Generator | None, top_prob: float) -> Tensor:
    batch, n_classes = logits.shape
    top = logits.detach().argmax(dim=1)
    if n_classes == 1:
        return top.unsqueeze(1)
    rng_device = generator.device if generator is not None else torch.device("cpu")
    take_top = torch.rand(batch, generator=generator, device=rng_device) < top_prob
    # Uniform over the C-1 other classes: draw from [0, C-2] and skip the top class.
    other = torch.randint(0, n_classes - 1, (batch,), generator=generator, device=rng_device)
    take_top = take_top.to(logits.device)
    other = other.to(logits.device)
    other = other + (other >= top).long()
    return torch.where(take_top, top, other).unsqueeze(1)


def explain_targets(logits: Tensor, variant: str, generator: torch.Generator | None = None, *,
                    top_prob: float = STOCHASTIC_TOP_PROB, selective_eps: float = SELECTIVE_EPS) -> Tensor:
    """Targets for the LRP engine for one training step.

    Returns ``LongTensor [B, C]`` (original: all classes), ``LongTensor [B, 1]``
    (stochastic: one class per image) or ``float [B, 1, C]`` (selective variants:
    initial output relevances; ``selective`` keeps the graph of ``logits``).
    ``generator`` makes the stochastic draw reproducible.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown ISNet variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if not 0.0 <= top_prob <= 1.0:
        raise ValueError(f"top_prob must lie in [0, 1], got {top_prob}")
    _check_logits(logits)
    batch, n_classes = logits.shape
    if variant == "original":
        return torch.arange(n_classes, device=logits.device).expand(batch, n_classes).clone()
    if variant == "stochastic":
        return _stochastic_classes(logits, generator, top_prob)
    if variant == "selective":
        return selective_relevance(logits, selective_eps)
    return selective_top_relevance(logits)
