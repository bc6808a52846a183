"""Functional BatchNorm folding: the per-channel affine map a BN applies, as differentiable tensors.

Nothing here mutates a module. The BN module itself still computes the forward value (so logits and running
statistics are exactly those of ``model(x)``); the scale/shift below only steer the relevance backward.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .rules import StatGate, TrainBNGate

BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` normalises with the statistics of the current batch (train mode or no running stats)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def scale_shift(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, detach_stats: bool = False
                ) -> tuple[Tensor, Tensor]:
    """(s, t) with ``bn(x) == s·x + t`` per channel. With batch statistics they are functions of ``x`` that
    the relevance pass treats as constants (StatGate), while ordinary backward passes differentiate them.
    ``detach_stats``: the statistics are constants for every backward, and the shift ``t`` too (only γ keeps
    its gradient): the original ISNet LRP block's choice."""
    if uses_batch_stats(bn):
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = _synced_var_mean(bn, x, dims) if _syncs(bn) else torch.var_mean(x, dim=dims, unbiased=False)
        if detach_stats:
            var, mean = var.detach(), mean.detach()
        else:
            var, mean = StatGate.apply(var), StatGate.apply(mean)
    else:
        var, mean = bn.running_var, bn.running_mean
    s = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        s = bn.weight * s
    t = -mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s, (t.detach() if detach_stats else t)


def _syncs(bn: nn.Module) -> bool:
    """A SyncBatchNorm in training mode inside a process group of more than one rank: its forward normalises
    with the statistics of the global batch, so the rule's scale must use them too."""
    if not (isinstance(bn, nn.SyncBatchNorm) and bn.training):
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size(bn.process_group) > 1


def _synced_var_mean(bn: nn.SyncBatchNorm, x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor]:
    """Biased variance and mean over the global batch, differentiable (the all-reduce's backward sums the
    gradients over ranks, as SyncBatchNorm's own backward does)."""
    from torch.distributed import ReduceOp
    from torch.distributed.nn.functional import all_reduce

    count = torch.full_like(x.sum(dims), x.numel() / x.shape[1])
    stats = all_reduce(torch.stack([x.sum(dims), (x * x).sum(dims), count]), op=ReduceOp.SUM,
                       group=bn.process_group or torch.distributed.group.WORLD)
    mean = stats[0] / stats[2]
    var = (stats[1] / stats[2] - mean * mean).clamp_min(0)
    return var, mean


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, detach_stats: bool = False
               ) -> tuple[Tensor, Tensor, Tensor]:
    """Apply ``bn`` exactly as the model does; returns (y, s, t). With batch statistics, ``y`` is wrapped so
    that the relevance pass sees the linear map ``s·x`` only (no dependence on the other samples)."""
    y = bn(x)
    s, t = scale_shift(bn, x, detach_stats)
    if uses_batch_stats(bn):
        y = TrainBNGate.apply(y, x, s)
    return y, s, t


def channel_shape(s: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast over a tensor of ``ndim`` dimensions (channels at dim 1)."""
    return s.reshape((1, -1) + (1,) * (ndim - 2))
