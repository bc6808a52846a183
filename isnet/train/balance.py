"""Gradient balance: keep the extra loss terms from drowning the cross-entropy's gradient.

From the initial weights, ISNet's heatmap loss has a weight gradient many times the cross-entropy's (an order of
magnitude larger on the first step of the quick-start runs; docs/notes/methods-log.md), so every update mostly
serves the heatmap and the classifier stays near chance. With a ratio r, each step's gradient becomes

    g = g_CE + c · (g − g_CE),   c = min(1, r · |g_CE| / |g − g_CE|),

where g is the gradient of the whole objective and g_CE that of its weighted cross-entropy term: the direction
of the other terms is kept, their norm is capped at r times the cross-entropy's. c = 1 (no change) whenever
they are already within the cap. The cross-entropy gradient costs one extra plain backward through the forward
graph; the expensive part (the heatmap's second-order backward) still runs once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ce_gradient", "balance_gradients"]


def ce_gradient(ce_term: Tensor, params: Sequence[Tensor]) -> list[Tensor]:
    """The gradient of ``ce_term`` with respect to ``params`` (zeros for unused ones), keeping the graph for the
    step's backward."""
    grads = torch.autograd.grad(ce_term, list(params), retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def _norm(tensors: Sequence[Tensor]) -> float:
    """The global L2 norm, read back once (not once per tensor: each read is a device sync on a GPU)."""
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors])))


def balance_gradients(params: Sequence[Tensor], g_ce: Sequence[Tensor], ratio: float) -> float:
    """Rescale, in ``p.grad``, the part of each gradient that is not the cross-entropy's (see the module
    docstring); returns the factor c applied (nan, with the gradients left alone, when they are not finite: a
    mixed-precision step that the gradient scaler will skip)."""
    if not ratio > 0:
        raise ValueError(f"the gradient balance ratio must be > 0, got {ratio}")
    rest = [(torch.zeros_like(p) if p.grad is None else p.grad) - g for p, g in zip(params, g_ce)]
    n_ce, n_rest = _norm(g_ce), _norm(rest)
    if not (math.isfinite(n_ce) and math.isfinite(n_rest)):
        return float("nan")
    if n_rest == 0.0:
        return 1.0
    c = min(1.0, ratio * n_ce / n_rest)
    if c < 1.0:
        for p, g, r in zip(params, g_ce, rest):
            p.grad = g + c * r
    return c
