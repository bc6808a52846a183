"""A Conv2d whose relevance-pass backward has a cheap double backward.

Differentiating autograd's own conv input-gradient (for the heatmap loss) goes through
``_convolution_double_backward``, which computes the weight term with a slow transposed convolution on CPU.
Here the relevance pass returns :class:`ConvInputGrad`, whose backward uses the native weight-gradient and
convolution kernels directly. Ordinary backward passes use ``aten.convolution_backward`` (itself
differentiable), so gradients are unchanged.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .rules import (EpsilonAffineScale, EpsilonScale, RuleInfo, affine_value, epsilon_scaled, epsilon_step_grads,
                    in_relevance_pass, stabilize)

Conf = tuple  # (stride, padding, dilation, groups)

#: under vmap, the K classes are folded into one convolution of batch K·B only where the relevance map has at most
#: this many pixels (8×8). Measured on CPU (ConvInputGrad and its double backward on resnet18's layer shapes,
#: batch 8, K = 3, 1 thread; time of 3 calls on B / one call on 3·B): 1.6–2.2 at 2×2, 1.0–1.6 at 4×4, 0.9–1.2 at
#: 7×7–8×8, 0.9–1.0 at 14×14–16×16, 0.4–0.9 at 28×28 and larger, where one call per class is kept.
FOLD_MAX_PIXELS = 64


class ConvInputGrad(torch.autograd.Function):
    """g ↦ ∂conv/∂input ᵀ g, differentiable in g and in the weight.

    Under ``torch.func.vmap`` (the K explained classes of :func:`isnet.lrp.heatmap._relevance_grads` batched in one
    relevance backward) the K copies of ``g`` are folded into the batch dimension: one ``conv2d_input`` of batch
    K·B, recorded as one ConvInputGrad node whose double backward is again one convolution and one weight gradient
    summed over all K·B samples (functorch's generic rule would compute per-class weight gradients instead)."""

    @staticmethod
    def forward(g: Tensor, w: Tensor, input_shape: torch.Size, conf: Conf) -> Tensor:  # type: ignore[override]
        stride, padding, dilation, groups = conf
        return torch.nn.grad.conv2d_input(input_shape, w, g, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        g, w, _, conf = inputs
        ctx.save_for_backward(g, w)
        ctx.conf = conf

    @staticmethod
    def vmap(info, in_dims, g: Tensor, w: Tensor, input_shape: torch.Size, conf: Conf):  # type: ignore[override]
        g_dim, w_dim = in_dims[0], in_dims[1]
        if w_dim is not None:  # a batched weight (not produced by the LRP engine): one call per batch entry
            w = w.movedim(w_dim, 0)
            if g_dim is not None:
                g = g.movedim(g_dim, 0)
            outs = [ConvInputGrad.apply(g if g_dim is None else g[i], w[i], input_shape, conf)
                    for i in range(w.shape[0])]
            return torch.stack(outs), 0
        if g_dim is None:
            return ConvInputGrad.apply(g, w, input_shape, conf), None
        g = g.movedim(g_dim, 0)
        k, b = g.shape[0], g.shape[1]
        if g.shape[-2] * g.shape[-1] > FOLD_MAX_PIXELS:  # large maps: one call per class is faster
            return torch.stack([ConvInputGrad.apply(g[i], w, input_shape, conf) for i in range(k)]), 0
        folded = ConvInputGrad.apply(g.reshape((k * b,) + tuple(g.shape[2:])), w,
                                     (k * b,) + tuple(input_shape[1:]), conf)
        return folded.reshape((k, b) + tuple(folded.shape[1:])), 0

    @staticmethod
    def backward(ctx, gg: Tensor):  # type: ignore[override]
        g, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        d_g = d_w = None
        if ctx.needs_input_grad[0]:
            d_g = F.conv2d(gg, w, None, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            d_w = torch.nn.grad.conv2d_weight(gg, w.shape, g, stride, padding, dilation, groups)
        return d_g, d_w, None, None


class Conv2dLRP(torch.autograd.Function):
    """F.conv2d with the standard gradient, except in the relevance pass (input gradient via ConvInputGrad)."""

    @staticmethod
    def forward(ctx, a: Tensor, w: Tensor, b: Optional[Tensor], conf: Conf) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(a, w)
        ctx.conf = conf
        ctx.has_bias = b is not None
        # a BN folded into this convolution may route the relevance around it (EpsilonConvOut): the relevance pass
        # then reaches this node without a gradient, which must cost nothing (no zeros, no convolution)
        ctx.set_materialize_grads(False)
        stride, padding, dilation, groups = conf
        return F.conv2d(a, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g: Optional[Tensor]):  # type: ignore[override]
        if g is None:
            return None, None, None, None
        a, w = ctx.saved_tensors
        if in_relevance_pass():
            # g.contiguous(): where g is one consumer's channel slice (DenseNet), keeping the slice would keep the
            # whole concatenation's relevance alive for the heatmap loss's backward
            d_a = ConvInputGrad.apply(g.contiguous(), w, a.shape, ctx.conf) if ctx.needs_input_grad[0] else None
            return d_a, None, None, None
        stride, padding, dilation, groups = ctx.conf
        need = ctx.needs_input_grad
        d_a, d_w, d_b = torch.ops.aten.convolution_backward(
            g, a, w, [w.shape[0]] if ctx.has_bias else None, list(stride), list(padding), list(dilation),
            False, [0] * len(stride), groups, [need[0], need[1], bool(need[2]) and ctx.has_bias],
        )
        return d_a, d_w, d_b if ctx.has_bias else None, None


class EpsilonConvInputGrad(torch.autograd.Function):
    """The relevance step of LRP-ε at the output ``y`` of a convolution, or of a BatchNorm folded into it (``y = s·z +
    t``, per channel; s, t None without a BN), as one node: ``g`` (the modified gradient at ``y``) ↦
    ∂conv/∂input ᵀ (g · |y| / (|y| + ε) · s).

    It is :class:`isnet.lrp.rules.EpsilonAffineScale` (or EpsilonScale) followed by :class:`ConvInputGrad`, except
    that the scaled relevance ``c`` between them is not kept for the heatmap loss's backward (which needs it for
    the weight gradient): it is recomputed there from ``g`` and ``z``, which are kept anyway. One activation-sized
    tensor less per convolution for the whole step, for one elementwise product more in its backward."""

    @staticmethod
    def forward(g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], w: Tensor,  # type: ignore[override]
                epsilon: float, input_shape: torch.Size, conf: Conf) -> Tensor:
        c = epsilon_scaled(g, z, s, t, epsilon)  # g never batched here (see vmap)
        stride, padding, dilation, groups = conf
        return torch.nn.grad.conv2d_input(input_shape, w, c, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        g, z, s, t, w, epsilon, _, conf = inputs
        ctx.save_for_backward(g, z, s, t, w)
        ctx.epsilon, ctx.conf = epsilon, conf
        ctx.fused = kernels.requested()
        ctx.set_materialize_grads(False)

    @staticmethod
    def vmap(info, in_dims, g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], w: Tensor,  # type: ignore[override]
             epsilon: float, input_shape: torch.Size, conf: Conf):
        """The batched classes: the two nodes it fuses, each with its own batching rule (c is kept there)."""
        if any(d is not None for d in in_dims[1:5]):
            raise NotImplementedError("EpsilonConvInputGrad: only the relevance g may be batched")
        if in_dims[0] is None:
            return EpsilonConvInputGrad.apply(g, z, s, t, w, epsilon, input_shape, conf), None
        g = g.movedim(in_dims[0], 0)  # [K, B, ...], broadcast against z below
        c = EpsilonScale.apply(g, z, None, epsilon) if s is None else EpsilonAffineScale.apply(g, z, s, t, epsilon)
        return ConvInputGrad.vmap(info, (0, None), c, w, input_shape, conf)

    @staticmethod
    def backward(ctx, gg: Optional[Tensor]):  # type: ignore[override]
        if gg is None:
            return (None,) * 8
        g, z, s, t, w = ctx.saved_tensors
        need = ctx.needs_input_grad[:4]
        stride, padding, dilation, groups = ctx.conf
        # the gradient at c, the scaled relevance between the two fused steps (d_c's conv only where it is needed)
        d_c = F.conv2d(gg, w, None, stride, padding, dilation, groups) if any(need) else None
        need_w = ctx.needs_input_grad[4]
        d_g, d_z, d_s, d_t, c = epsilon_step_grads(d_c, g, z, s, t, ctx.epsilon, need, u_scratch=True, need_c=need_w,
                                                   fused=ctx.fused)
        d_w = None
        if need_w:
            d_w = torch.nn.grad.conv2d_weight(gg, w.shape, c, stride, padding, dilation, groups)
        return d_g, d_z, d_s, d_t, d_w, None, None, None


class EpsilonConvOut(torch.autograd.Function):
    """LRP-ε at the output ``y`` of the convolution ``z = conv(a)``, or of a BatchNorm folded into it (``y = s·z +
    t``; s, t None without a BN): the relevance pass sends the relevance straight into ``a``
    (:class:`EpsilonConvInputGrad`), past the BN and the convolution. Ordinary backward: ``g`` into ``y``."""

    @staticmethod
    def forward(ctx, y: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], a: Tensor,  # type: ignore[override]
                w: Tensor, info: RuleInfo, conf: Conf) -> Tensor:
        ctx.save_for_backward(z, s, t, w)
        ctx.info, ctx.conf, ctx.input_shape = info, conf, a.shape
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return (g,) + (None,) * 7
        z, s, t, w = ctx.saved_tensors
        eps = ctx.info.epsilon
        d_a = None
        if ctx.needs_input_grad[4]:
            if ctx.info.seed:
                c = g / stabilize(affine_value(z, s, t), eps)
                d_a = ConvInputGrad.apply(c if s is None else c * s, w, ctx.input_shape, ctx.conf)
            else:
                d_a = EpsilonConvInputGrad.apply(g, z, s, t, w, eps, ctx.input_shape, ctx.conf)
        return None, None, None, None, d_a, None, None, None


def lrp_conf(conv: nn.Conv2d) -> Optional[Conf]:
    """The (stride, padding, dilation, groups) :class:`Conv2dLRP` runs ``conv`` with, or None where the module's own
    forward must run (string padding, another padding mode, hooks)."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros" or conv._forward_hooks or conv._forward_pre_hooks:
        return None
    return (tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)


def conv2d(conv: nn.Conv2d, a: Tensor) -> Tensor:
    """``conv(a)`` through Conv2dLRP where the padding is explicit (torchvision models), else the module."""
    conf = lrp_conf(conv)
    if conf is None:
        return conv(a)
    return Conv2dLRP.apply(a, conv.weight, conv.bias, conf)


def epsilon_conv_out(y: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], a: Tensor, conv: nn.Conv2d,
                     info: RuleInfo) -> Optional[Tensor]:
    """Attach LRP-ε at ``y = s·z + t`` (``z = conv(a)`` from :func:`conv2d`; s, t None: ``y`` is ``z``) with the
    relevance routed into ``a``; None where ``conv`` ran through its module (the caller then attaches the rule at
    ``y``)."""
    conf = lrp_conf(conv)
    if conf is None:
        return None
    return EpsilonConvOut.apply(y, z, s, t, a, conv.weight, info, conf)
