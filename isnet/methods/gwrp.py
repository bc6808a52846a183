"""Global weighted ranked pooling (GWRP).

GWRP sits between max pooling (decay 0) and mean pooling (decay 1): values are
sorted in descending order and rank ``i`` gets weight ``decay**i``.  The ISNet
loss uses it on background relevance so that a few strong hot spots (a text
tag, a laterality letter) weigh as much as diffuse relevance spread over the
whole background, which a plain mean would dilute.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["gwrp", "gwrp_weights"]


def gwrp_weights(length: int, decay: float, *, dtype: torch.dtype, device: torch.device | str | None = None) -> Tensor:
    """Normalised rank weights ``decay**i / sum_j decay**j`` for ``i < length``.

    Powers are taken directly in ``dtype``: for long inputs the tail underflows to
    exactly 0, which is harmless because those ranks would contribute nothing
    anyway, and the normaliser is dominated by the first ranks.  ``decay = 0``
    gives weight 1 to rank 0 only (max pooling, ``0**0 == 1``).
    """
    if length < 1:
        raise ValueError(f"gwrp needs at least one value to pool, got length {length}")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"gwrp decay must lie in [0, 1] (0 = max, 1 = mean), got {decay}")
    ranks = torch.arange(length, dtype=dtype, device=device)
    weights = torch.pow(torch.tensor(decay, dtype=dtype, device=device), ranks)
    return weights / weights.sum()


def gwrp(values: Tensor, decay: float) -> Tensor:
    """Pool ``values`` [N, M] over the last dimension with GWRP -> [N].

    Differentiable: ``torch.sort`` routes the gradient back to the original
    positions, so each element receives the weight of the rank it occupies.
    """
    if values.dim() != 2:
        raise ValueError(f"gwrp expects values of shape [N, M], got {tuple(values.shape)}")
    if not values.is_floating_point():
        raise ValueError(f"gwrp expects a floating-point tensor, got {values.dtype}")
    weights = gwrp_weights(values.shape[-1], decay, dtype=values.dtype, device=values.device)
    if decay == 1.0:
        # Mean pooling: the sort would not change the result, so skip it.
        return values.mean(dim=-1)
    ranked, _ = torch.sort(values, dim=-1, descending=True)
    return ranked @ weights
