"""Concatenation and ReLU with a cheap double backward.

Both are exact in every backward pass; what changes is the graph the relevance pass records with
``create_graph=True``, which the heatmap loss's backward then runs:

- ``torch.cat``'s backward is one slice per input, and the backward of each slice allocates a zero tensor the size
  of the whole concatenation and copies into it. A DenseNet concatenates ever more feature maps (block 3's last
  layer has 24 inputs), so the heatmap loss's backward spent its time zero-filling and adding these tensors.
  :func:`concat` records one :class:`Split` node instead, whose backward is a single ``torch.cat``.
- ReLU's input gradient ``g·[out > 0]`` recorded under ``create_graph`` also differentiates with respect to ``out``,
  a derivative that is zero everywhere: autograd allocates that zero tensor for every ReLU and adds it into the
  forward graph's gradients. :func:`relu` masks with a constant ``out`` in the relevance pass.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .rules import in_relevance_pass


class Split(torch.autograd.Function):
    """``g`` split along dim 1 into pieces of ``sizes`` channels; backward concatenates the pieces' gradients."""

    generate_vmap_rule = True

    @staticmethod
    def forward(g: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:  # type: ignore[override]
        return tuple(torch.split(g, sizes, 1))

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        pass

    @staticmethod
    def backward(ctx, *grads: Tensor):  # type: ignore[override]
        return torch.cat(grads, 1), None


class Concat(torch.autograd.Function):
    """``torch.cat(tensors, 1)`` whose backward is one :class:`Split` node."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*tensors: Tensor) -> Tensor:  # type: ignore[override]
        return torch.cat(tensors, 1)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.sizes = tuple(t.shape[1] for t in inputs)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return Split.apply(g, ctx.sizes)


def concat(tensors: Sequence[Tensor]) -> Tensor:
    """Channel concatenation (dim 1) for the LRP-aware forwards."""
    return tensors[0] if len(tensors) == 1 else Concat.apply(*tensors)


class ReLU(torch.autograd.Function):
    """``F.relu``; in the relevance pass its backward ``g·[out > 0]`` is a function of ``g`` only."""

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:  # type: ignore[override]
        out = F.relu(a)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(g, out.detach() if in_relevance_pass() else out, 0)


def relu(a: Tensor) -> Tensor:
    return ReLU.apply(a)
