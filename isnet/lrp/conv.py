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

from .rules import in_relevance_pass

Conf = tuple  # (stride, padding, dilation, groups)


class ConvInputGrad(torch.autograd.Function):
    """g ↦ ∂conv/∂input ᵀ g, differentiable in g and in the weight."""

    @staticmethod
    def forward(ctx, g: Tensor, w: Tensor, input_shape: torch.Size, conf: Conf) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(g, w)
        ctx.conf = conf
        stride, padding, dilation, groups = conf
        return torch.nn.grad.conv2d_input(input_shape, w, g, stride, padding, dilation, groups)

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
        stride, padding, dilation, groups = conf
        return F.conv2d(a, w, b, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        a, w = ctx.saved_tensors
        if in_relevance_pass():
            d_a = ConvInputGrad.apply(g, w, a.shape, ctx.conf) if ctx.needs_input_grad[0] else None
            return d_a, None, None, None
        stride, padding, dilation, groups = ctx.conf
        need = ctx.needs_input_grad
        d_a, d_w, d_b = torch.ops.aten.convolution_backward(
            g, a, w, [w.shape[0]] if ctx.has_bias else None, list(stride), list(padding), list(dilation),
            False, [0] * len(stride), groups, [need[0], need[1], bool(need[2]) and ctx.has_bias],
        )
        return d_a, d_w, d_b if ctx.has_bias else None, None


def conv2d(conv: nn.Conv2d, a: Tensor) -> Tensor:
    """``conv(a)`` through Conv2dLRP where the padding is explicit (torchvision models), else the module."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros" or conv._forward_hooks or conv._forward_pre_hooks:
        return conv(a)
    conf = (tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups)
    return Conv2dLRP.apply(a, conv.weight, conv.bias, conf)
