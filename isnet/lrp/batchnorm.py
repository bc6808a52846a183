"""Functional BatchNorm folding: the per-channel affine map a BN applies, as differentiable tensors.

Nothing here mutates a module. The BN module itself still computes the forward value (so logits and running
statistics are exactly those of ``model(x)``); the scale/shift below only steer the relevance backward.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .rules import StatGate, TrainBNGate

BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d)


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` normalises with the statistics of the current batch (train mode or no running stats)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def scale_shift(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> tuple[Tensor, Tensor]:
    """(s, t) with ``bn(x) == s·x + t`` per channel. With batch statistics they are functions of ``x`` that
    the relevance pass treats as constants (StatGate), while ordinary backward passes differentiate them."""
    if uses_batch_stats(bn):
        dims = [d for d in range(x.dim()) if d != 1]
        var, mean = torch.var_mean(x, dim=dims, unbiased=False)
        var, mean = StatGate.apply(var), StatGate.apply(mean)
    else:
        var, mean = bn.running_var, bn.running_mean
    s = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        s = bn.weight * s
    t = -mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s, t


def batch_norm(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Apply ``bn`` exactly as the model does; returns (y, s, t). With batch statistics, ``y`` is wrapped so
    that the relevance pass sees the linear map ``s·x`` only (no dependence on the other samples)."""
    y = bn(x)
    s, t = scale_shift(bn, x)
    if uses_batch_stats(bn):
        y = TrainBNGate.apply(y, x, s)
    return y, s, t


def channel_shape(s: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast over a tensor of ``ndim`` dimensions (channels at dim 1)."""
    return s.reshape((1, -1) + (1,) * (ndim - 2))
