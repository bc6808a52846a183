"""Functional BatchNorm folding: the per-channel affine map a BN applies, as differentiable tensors.

Nothing here mutates a module. The BN module itself still computes the forward value (so logits and running
statistics are exactly those of ``model(x)``); the scale/shift below only steer the relevance backward.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .rules import StatGate, TrainBNGate

BatchNorm = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


def uses_batch_stats(bn: nn.modules.batchnorm._BatchNorm) -> bool:
    """Whether ``bn`` normalises with the statistics of the current batch (train mode or no running stats)."""
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def scale_shift(bn: nn.modules.batchnorm._BatchNorm, x: Tensor, detach_stats: bool = False,
                stats: Optional[tuple[Tensor, Tensor]] = None) -> tuple[Tensor, Tensor]:
    """(s, t) with ``bn(x) == s·x + t`` per channel. With batch statistics they are functions of ``x`` that
    the relevance pass treats as constants (StatGate), while ordinary backward passes differentiate them.
    ``detach_stats``: the statistics are constants for every backward, and the shift ``t`` too (only γ keeps
    its gradient): the original ISNet LRP block's choice. ``stats``: the batch's (mean, 1/σ) when the forward
    already computed them (:class:`BatchNormWithStats`)."""
    if uses_batch_stats(bn):
        if stats is not None:
            mean, invstd = stats
        else:
            dims = [d for d in range(x.dim()) if d != 1]
            var, mean = _synced_var_mean(bn, x, dims) if _syncs(bn) else torch.var_mean(x, dim=dims, unbiased=False)
            invstd = torch.rsqrt(var + bn.eps)
        if detach_stats:
            invstd, mean = invstd.detach(), mean.detach()
        else:
            invstd, mean = StatGate.apply(invstd), StatGate.apply(mean)
    else:
        invstd, mean = torch.rsqrt(bn.running_var + bn.eps), bn.running_mean
    s = invstd
    if bn.weight is not None:
        s = bn.weight * s
    t = -mean * s
    if bn.bias is not None:
        t = t + bn.bias
    return s, (t.detach() if detach_stats else t)


class BatchNormWithStats(torch.autograd.Function):
    """Train-mode batch norm that also returns the batch's mean and 1/σ as differentiable outputs, so the
    rule's scale needs no second pass over the activations for them (``native_batch_norm`` computes them
    anyway). Backward: the native batch-norm gradient for ``y`` plus the statistics' own gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_mean: Optional[Tensor],  # type: ignore[override]
                running_var: Optional[Tensor], momentum: float, eps: float) -> tuple[Tensor, Tensor, Tensor]:
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, momentum, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.set_materialize_grads(False)  # the relevance pass reaches it without gradients (see TrainBNGate)
        return y, mean, invstd

    @staticmethod
    def backward(ctx, g_y: Optional[Tensor], g_mean: Optional[Tensor], g_invstd: Optional[Tensor]):  # type: ignore[override]
        if g_y is None and g_mean is None and g_invstd is None:
            return (None,) * 7
        x, weight, mean, invstd = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if torch.is_grad_enabled():  # a backward with create_graph (RRR's input-gradient penalty): differentiable ops
            return _differentiable_backward(ctx, x, weight, g_y, g_mean, g_invstd)
        d_x = d_w = d_b = None
        if g_y is not None:
            d_x, d_w, d_b = torch.ops.aten.native_batch_norm_backward(
                g_y, x, weight, None, None, mean, invstd, True, ctx.eps,
                [need_x, need_w and weight is not None, need_b and weight is not None])
        if need_x and (g_mean is not None or g_invstd is not None):
            # the statistics' gradients: g_mean/n + a·(x − mean) per channel, a = −g_invstd·(1/σ)³/n
            # (d(1/σ)/dx = −(1/σ)³ (x − mean) / n), added into d_x in place (x − mean, not a·x − a·mean, which
            # would cancel in float32 where the mean is large against σ)
            shape = (1, -1) + (1,) * (x.dim() - 2)
            n = x.numel() / x.shape[1]
            if g_invstd is not None:
                a = (-g_invstd * invstd.pow(3) / n).reshape(shape)
                centred = x - mean.reshape(shape)
                d_x = centred.mul_(a) if d_x is None else d_x.addcmul_(centred, a)
            if g_mean is not None:
                m = (g_mean / n).reshape(shape)
                d_x = m.expand_as(x).clone() if d_x is None else d_x.add_(m)
        return d_x, d_w, d_b, None, None, None, None


def _differentiable_backward(ctx, x: Tensor, weight: Optional[Tensor], g_y: Optional[Tensor],
                             g_mean: Optional[Tensor], g_invstd: Optional[Tensor]) -> tuple:
    """BatchNormWithStats's backward from plain differentiable ops, for a backward that is itself differentiated
    (``native_batch_norm_backward`` has no derivative with respect to the saved statistics)."""
    bias_needed = ctx.needs_input_grad[2]
    dims = [d for d in range(x.dim()) if d != 1]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    var, mean = torch.var_mean(x, dim=dims, unbiased=False)
    invstd = torch.rsqrt(var + ctx.eps)
    y = (x - mean.reshape(shape)) * invstd.reshape(shape)
    if weight is not None:
        y = y * weight.reshape(shape)
    outs, grads = [], []
    for out, g in ((y, g_y), (mean, g_mean), (invstd, g_invstd)):
        if g is not None:
            outs.append(out)
            grads.append(g)
    inputs = [x] + ([weight] if weight is not None else [])
    d = torch.autograd.grad(outs, inputs, grads, create_graph=True, allow_unused=True)
    d_x, d_w = d[0], (d[1] if weight is not None else None)
    d_b = g_y.sum(dims) if (bias_needed and g_y is not None) else None
    return d_x, d_w, d_b, None, None, None, None


def _native_train_bn(bn: nn.modules.batchnorm._BatchNorm, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``bn(x)`` in train mode (running statistics updated as nn.BatchNorm does) with the batch's mean and 1/σ."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        if bn.momentum is None:  # cumulative moving average
            momentum = 1.0 / float(bn.num_batches_tracked)
    track = bn.training or not bn.track_running_stats
    rm = bn.running_mean if track else None
    rv = bn.running_var if track else None
    return BatchNormWithStats.apply(x, bn.weight, bn.bias, rm, rv, momentum, bn.eps)


def _native_ok(bn: nn.Module, x: Tensor) -> bool:
    """Whether :func:`_native_train_bn` computes exactly what the module would: a plain BatchNorm (no subclass
    forward, no hooks, not synchronised) on a float32/64 tensor."""
    return (type(bn) in (nn.BatchNorm1d, nn.BatchNorm2d) or (isinstance(bn, nn.SyncBatchNorm) and not _syncs(bn))) \
        and not bn._forward_hooks and not bn._forward_pre_hooks and x.dtype in (torch.float32, torch.float64) \
        and not torch.is_autocast_enabled(x.device.type)


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
    stats = None
    if uses_batch_stats(bn) and _native_ok(bn, x):
        y, mean, invstd = _native_train_bn(bn, x)
        stats = (mean, invstd)
    else:
        y = bn(x)
    s, t = scale_shift(bn, x, detach_stats, stats)
    if uses_batch_stats(bn):
        y = TrainBNGate.apply(y, x, s)
    return y, s, t


def channel_shape(s: Tensor, ndim: int) -> Tensor:
    """Reshape a per-channel vector to broadcast over a tensor of ``ndim`` dimensions (channels at dim 1)."""
    return s.reshape((1, -1) + (1,) * (ndim - 2))
