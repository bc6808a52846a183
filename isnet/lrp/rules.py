"""LRP rules as identity-forward autograd Functions.

One forward graph serves two purposes. An ordinary backward through it (the CE loss, or the backward of a
heatmap loss) sees the true derivatives: every Function below is the identity (or returns the gradient of the
tensor that carries the real value). Inside :func:`relevance_pass` the same Functions switch to their LRP
backward: a Function placed at the output ``y`` of a linear layer receives the "modified gradient" ``g`` with
``R_y = y * g`` and sends ``c = R_y / stab(denominator)`` down the graph (into ``y`` itself for LRP-ε, into extra
tensors computed with modified weights for z^B, z⁺ and α2β1), so that ``R = input * gradient`` at every layer.

All backward formulas use differentiable torch operations on saved tensors, so ``autograd.grad(...,
create_graph=True)`` during the relevance pass records a graph whose derivatives with respect to the weights
are exact. The global flag is a plain counter (not thread-local), because autograd runs CUDA backward passes on
its own worker threads.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import Tensor

_RELEVANCE_DEPTH = 0


@contextmanager
def relevance_pass() -> Iterator[None]:
    """Switch the LRP Functions to their relevance backward for the duration of the block."""
    global _RELEVANCE_DEPTH
    _RELEVANCE_DEPTH += 1
    try:
        yield
    finally:
        _RELEVANCE_DEPTH -= 1


def in_relevance_pass() -> bool:
    return _RELEVANCE_DEPTH > 0


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """z + sign(z)·ε with sign(0) = +1 (the LRP-ε denominator)."""
    return z + epsilon * ((z >= 0).to(z.dtype) * 2 - 1)


@dataclass
class RuleInfo:
    """Non-tensor state of one rule application. ``seed`` is set after the forward when this layer turns out to
    produce the model output: its incoming "gradient" is then the initial relevance itself, not R / y."""

    epsilon: float
    alpha: float = 1.0
    beta: float = 0.0
    seed: bool = False


def _scaled(g: Tensor, y: Tensor, den: Tensor, info: RuleInfo) -> Tensor:
    """``R_y / stab(den)`` with ``R_y = y·g`` (or ``g`` itself at the seed). The factor is formed on the
    unbatched saved tensors first, so that K batched heatmaps cost one batched multiplication."""
    if info.seed:
        return g / stabilize(den, info.epsilon)
    return g * (y / stabilize(den, info.epsilon))


class EpsilonOut(torch.autograd.Function):
    """LRP-ε at the output ``y`` of a linear layer (conv, dense, average pooling, residual sum, folded BN)."""

    @staticmethod
    def forward(ctx, y: Tensor, info: RuleInfo) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(y)
        ctx.info = info
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return g, None
        (y,) = ctx.saved_tensors
        info = ctx.info
        if info.seed:
            return g / stabilize(y, info.epsilon), None
        a = y.abs()  # y / (y + sign(y)·ε) == |y| / (|y| + ε): fewer passes over the activation
        return g * (a / (a + info.epsilon)), None


class RoutedOut(torch.autograd.Function):
    """A rule whose denominator is not ``y`` (z^B, flat, z⁺): forward returns ``y``; the relevance backward
    sends ``R_y / stab(den)`` into each of ``routes`` (tensors built with the rule's modified weights and inputs)
    instead of into ``y``."""

    @staticmethod
    def forward(ctx, y: Tensor, info: RuleInfo, den: Tensor, *routes: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(y, den)
        ctx.info = info
        ctx.n_routes = len(routes)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return (g, None, None) + (None,) * ctx.n_routes
        y, den = ctx.saved_tensors
        c = _scaled(g, y, den, ctx.info)
        return (None, None, None) + (c,) * ctx.n_routes


class AlphaBetaOut(torch.autograd.Function):
    """LRP-αβ: positive contributions ``zpos`` get α·R/zpos, negative ones ``zneg`` get −β·R/zneg."""

    @staticmethod
    def forward(ctx, y: Tensor, info: RuleInfo, zpos: Tensor, zneg: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(y, zpos, zneg)
        ctx.info = info
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return g, None, None, None
        y, zpos, zneg = ctx.saved_tensors
        info = ctx.info
        cpos = _scaled(g, y, zpos, info) * info.alpha
        cneg = _scaled(g, y, zneg, info) * -info.beta
        return None, None, cpos, cneg


class StatGate(torch.autograd.Function):
    """Identity on batch statistics; blocks them during the relevance pass, so that LRP treats train-mode BN
    statistics as constants (no leak between samples) while the double backward still differentiates them."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        return None if in_relevance_pass() else g


class TrainBNGate(torch.autograd.Function):
    """Wraps the output ``y`` of a BatchNorm that uses batch statistics. Ordinary backward: the full BN gradient
    (through ``y``). Relevance pass: only ``g · γ/σ`` into the BN input ``x`` (statistics held constant)."""

    @staticmethod
    def forward(ctx, y: Tensor, x: Tensor, scale: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(scale)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return g, None, None
        (scale,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (g.dim() - 2)
        return None, g * scale.reshape(shape), None
