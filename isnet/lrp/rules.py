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
from typing import Iterator, Optional

import torch
from torch import Tensor

from . import kernels

_RELEVANCE_DEPTH = 0


@contextmanager
def relevance_pass(fused: bool = False) -> Iterator[None]:
    """Switch the LRP Functions to their relevance backward for the duration of the block; ``fused``: the ε steps
    recorded in it use the compiled kernels (``lrp.compile``, :mod:`isnet.lrp.kernels`)."""
    global _RELEVANCE_DEPTH
    _RELEVANCE_DEPTH += 1
    try:
        with kernels.fused(fused):
            yield
    finally:
        _RELEVANCE_DEPTH -= 1


def in_relevance_pass() -> bool:
    return _RELEVANCE_DEPTH > 0


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """z + sign(z)·ε with sign(0) = +1 (the LRP-ε denominator)."""
    return z + epsilon * ((z >= 0).to(z.dtype) * 2 - 1)


def affine_value(z: Tensor, s: Optional[Tensor], t: Optional[Tensor]) -> Tensor:
    """``y = s·z + t`` recomputed from a BatchNorm's input (a new tensor), or ``z`` itself where no BN is folded in
    (s, t None)."""
    return z if s is None else torch.addcmul(t, z, s)


def scale_by(x: Tensor, s: Optional[Tensor]) -> Tensor:
    """``x·s`` in place (``x`` must be a temporary the caller owns), or ``x`` where there is no scale."""
    return x if s is None else x.mul_(s)


def epsilon_ratio(z: Tensor, s: Optional[Tensor], t: Optional[Tensor], epsilon: float) -> Tensor:
    """|y| / (|y| + ε) (= y / stab(y)) for ``y = s·z + t`` (or ``y = z``), as a new tensor the caller may overwrite."""
    a = z.abs() if s is None else affine_value(z, s, t).abs_()
    return a.div_(a + epsilon)


def epsilon_scaled(g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], epsilon: float) -> Tensor:
    """The ε step's scaled relevance ``g · |y| / (|y| + ε) · s``, with ``y = s·z + t``, or ``y = z`` where t is None
    (s then only scales, or is None too): the compiled kernel where :func:`isnet.lrp.kernels.active`, else eager, in
    the ratio's memory unless ``g`` carries the batched classes (under vmap, or a leading class dimension)."""
    if kernels.active():
        return kernels.scaled(g, z, s, t, epsilon)
    f = epsilon_ratio(z, None, None, epsilon) if t is None else epsilon_ratio(z, s, t, epsilon)
    own = f.shape == g.shape and not torch._C._are_functorch_transforms_active()
    return scale_by(f.mul_(g) if own else g * f, s)


@dataclass
class RuleInfo:
    """Non-tensor state of one rule application. ``seed`` is set after the forward when this layer turns out to
    produce the model output: its incoming "gradient" is then the initial relevance itself, not R / y."""

    epsilon: float
    alpha: float = 1.0
    beta: float = 0.0
    seed: bool = False


def _keep(ctx, info: RuleInfo, *tensors: Tensor) -> None:
    """What a rule's forward keeps for its backward: the tensors its relevance needs, and its RuleInfo."""
    ctx.save_for_backward(*tensors)
    ctx.info = info


def _outside(g: Tensor, n_inputs: int) -> tuple:
    """A rule's backward outside the relevance pass: the identity for ``y``, nothing for its other inputs."""
    return (g,) + (None,) * (n_inputs - 1)


class _RelevanceStep(torch.autograd.Function):
    """Base of the relevance-step nodes (EpsilonScale, EpsilonAffineScale, RoutedScale, RoutedAffineScale):
    ``forward(*tensors, epsilon)`` keeps its tensor inputs and ε for the heatmap loss's backward, which may reach it
    without a gradient (not materialised); vmap rule generated (the batched classes)."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(*inputs[:-1])
        ctx.epsilon = inputs[-1]
        ctx.fused = kernels.requested()
        ctx.set_materialize_grads(False)


class EpsilonScale(_RelevanceStep):
    """``g · |y| / (|y| + ε) · s`` (= g · y / stab(y) · s; ``s`` per channel, or None): the relevance step of an ε
    rule, recorded as one node that keeps only ``g``, ``y`` and ``s`` for the heatmap loss's backward.

    The factor is formed here rather than once in the forward: a stored factor would be one more activation-sized
    tensor per layer alive for the whole step, and with ``create_graph`` a plain ``g * factor`` would keep the
    product's inputs and the factor's own intermediates as well. d/dy = g·s·ε·sign(y) / (|y| + ε)²."""

    @staticmethod
    def forward(g: Tensor, y: Tensor, s: Optional[Tensor], epsilon: float) -> Tensor:  # type: ignore[override]
        return epsilon_scaled(g, y, s, None, epsilon)

    @staticmethod
    def backward(ctx, gg: Optional[Tensor]):  # type: ignore[override]
        if gg is None:
            return None, None, None, None
        g, y, s = ctx.saved_tensors
        need_g, need_y, need_s, _ = ctx.needs_input_grad
        if s is None and ctx.fused and kernels.usable():  # the compiled kernel (eager: the formulas below)
            needs = (need_g, need_y, False, False)
            return epsilon_step_grads(gg, g, y, None, None, ctx.epsilon, needs, fused=True)[:2] + (None, None)
        a = y.abs()
        den = a + ctx.epsilon
        gs = gg if s is None else gg * s
        d_g = gs * (a / den) if need_g else None
        d_y = (gs * g) * (torch.sign(y) * (ctx.epsilon / den.square())) if need_y else None
        d_s = (gg * g * (a / den)).sum_to_size(s.shape) if s is not None and need_s else None
        return d_g, d_y, d_s, None


class EpsilonOut(torch.autograd.Function):
    """LRP-ε at the output ``y`` of a linear layer (conv, dense, average pooling, residual sum).
    ``factor_y``: the tensor (equal to ``y``) the factor y / stab(y) is formed from and differentiated through.
    ``den``: the tensor (equal to ``y``) the output layer's seed is divided by, ``y`` unless its bias is detached."""

    @staticmethod
    def forward(ctx, y: Tensor, factor_y: Tensor, info: RuleInfo, den: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        _keep(ctx, info, y if den is None else den, factor_y)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return _outside(g, 4)
        den, factor_y = ctx.saved_tensors
        if ctx.info.seed:
            return g / stabilize(den, ctx.info.epsilon), None, None, None
        return EpsilonScale.apply(g, factor_y, None, ctx.info.epsilon), None, None, None


class EpsilonAffineScale(_RelevanceStep):
    """:class:`EpsilonScale` at ``y = s·z + t``, with ``y`` recomputed from the BN input ``z`` (which the BN keeps for
    its own backward anyway) instead of kept: one activation-sized tensor less per BatchNorm for the whole step,
    for one multiply-add more in each backward. d/dz = d/dy·s, d/ds = g·f(y) + d/dy·z, d/dt = d/dy."""

    @staticmethod
    def forward(g: Tensor, z: Tensor, s: Tensor, t: Tensor, epsilon: float) -> Tensor:  # type: ignore[override]
        return epsilon_scaled(g, z, s, t, epsilon)

    @staticmethod
    def backward(ctx, gg: Optional[Tensor]):  # type: ignore[override]
        if gg is None:
            return None, None, None, None, None
        g, z, s, t = ctx.saved_tensors
        return epsilon_step_grads(gg, g, z, s, t, ctx.epsilon, ctx.needs_input_grad[:4], fused=ctx.fused)[:4] + (None,)


def epsilon_step_grads(u: Optional[Tensor], g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor],
                       epsilon: float, needs: tuple[bool, ...], u_scratch: bool = False, need_c: bool = False,
                       fused: bool = False) -> tuple[Optional[Tensor], ...]:
    """Gradients (g, z, s, t) of ``c = g · f(y) · s`` for the incoming gradient ``u`` at ``c``, where ``y = s·z + t``
    (``y = z`` and no scale where s, t are None) and ``f(y) = |y| / (|y| + ε)``; plus ``c`` itself where ``need_c``
    (the fused convolution node's weight gradient). ``u`` may be None where no gradient is needed; ``u_scratch``:
    ``u`` is the caller's temporary and may be overwritten; ``fused``: the node was recorded with ``lrp.compile``
    (the compiled kernel runs where it may). f'(y) = ε·sign(y) / (|y| + ε)². Shared by the ε relevance nodes that
    recompute ``y``. (In-place operations are used wherever the tensor is a temporary of this function: on CPU every
    new activation-sized tensor costs fresh pages, about as much as the arithmetic itself.)"""
    if fused and kernels.usable():
        # without u (no gradient needed but the weight's) g stands in for it, unused: same shape, no recompile
        return kernels.grads(g if u is None else u, g, z, s, t, epsilon, needs, need_c=need_c)
    need_g, need_z, need_s, need_t = needs
    affine = s is not None
    y = affine_value(z, s, t)
    r = y.abs().add_(epsilon).reciprocal_()  # 1 / (|y| + ε)
    f = torch.rsub(r, 1, alpha=epsilon)  # 1 − ε·r = |y| / (|y| + ε)
    d_g = d_z = d_s = d_t = None
    if need_g:
        d_g = scale_by(u * f, s)
    if need_z or need_s or need_t:
        gy = u.mul_(g) if u_scratch else u * g
        # d/dy = gy·s·ε·sign(y)·r² (ε folded into the per-channel s; sign in place where y is a temporary)
        d_y = gy * (s * epsilon if affine else epsilon)
        d_y.mul_(r.mul_(r).mul_(y.sign_() if affine else torch.sign(y)))
        if need_s and affine:
            d_s = gy.mul_(f).add_(d_y * z).sum_to_size(s.shape)  # addcmul_ has no vmap batching rule
        if need_t and affine:
            d_t = d_y.sum(0, keepdim=True).sum_to_size(t.shape)  # a new tensor even where no dimension is summed
        if need_z:
            d_z = d_y.mul_(s) if affine else d_y  # d_y's last use
    c = scale_by(f.mul_(g), s) if need_c else None  # in f's memory (f's last use)
    return d_g, d_z, d_s, d_t, c


class EpsilonFoldedOut(torch.autograd.Function):
    """LRP-ε at the output ``y = s·z + t`` of a BatchNorm, with the relevance sent straight into ``z`` (the output of
    the linear layer the BN is folded into, or the BN's own input when it stands alone): ``g·y/stab(y)·s`` in one
    node instead of the ε multiply followed by the BN's own backward (TrainBNGate in train mode, native batch-norm
    backward in eval). ``factor_y`` None: the factor is formed from ``s·z + t`` (:class:`EpsilonAffineScale`, nothing
    activation-sized kept); else from that tensor (equal to ``y``; ``detach_biases`` gives one with its own graph).
    Ordinary backward: ``g`` into ``y``."""

    @staticmethod
    def forward(ctx, y: Tensor, z: Tensor, s: Tensor, t: Tensor, info: RuleInfo,  # type: ignore[override]
                factor_y: Optional[Tensor] = None) -> Tensor:
        ctx.recompute = factor_y is None
        _keep(ctx, info, z, s, t) if factor_y is None else _keep(ctx, info, factor_y, s)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return _outside(g, 6)
        eps = ctx.info.epsilon
        if ctx.recompute:
            z, s, t = ctx.saved_tensors
            if ctx.info.seed:
                return None, g / stabilize(affine_value(z, s, t), eps) * s, None, None, None, None
            return None, EpsilonAffineScale.apply(g, z, s, t, eps), None, None, None, None
        factor_y, s = ctx.saved_tensors
        if ctx.info.seed:
            return None, g / stabilize(factor_y, eps) * s, None, None, None, None
        return None, EpsilonScale.apply(g, factor_y, s, eps), None, None, None, None


def epsilon_folded_out(y: Tensor, z: Tensor, s: Tensor, t: Tensor, info: RuleInfo,
                       factor_from: Optional[Tensor] = None) -> Tensor:
    """Attach LRP-ε at ``y = s·z + t`` (s, t per channel, broadcastable) with the relevance routed into ``z``.
    ``factor_from``: a tensor (equal to ``y``) with its own graph for the factor (``detach_biases``); default:
    the factor is recomputed from ``z``, ``s`` and ``t``, whose graphs it follows."""
    return EpsilonFoldedOut.apply(y, z, s, t, info, None if factor_from is y else factor_from)


class RoutedScale(_RelevanceStep):
    """``g · y / stab(den)``: the relevance step of a rule whose denominator is not ``y`` (z^B, flat, z⁺), as one node
    that keeps ``g``, ``y`` and ``den`` (no stored factor, no stabilised copy of ``den``). d/dg = y/stab(den),
    d/dy = g/stab(den), d/dden = −g·y/stab(den)² (the stabiliser's sign term is piecewise constant)."""

    @staticmethod
    def forward(g: Tensor, y: Tensor, den: Tensor, epsilon: float) -> Tensor:  # type: ignore[override]
        return (g * y).div_(stabilize(den, epsilon))

    @staticmethod
    def backward(ctx, gg: Optional[Tensor]):  # type: ignore[override]
        if gg is None:
            return None, None, None, None
        g, y, den = ctx.saved_tensors
        need_g, need_y, need_den, _ = ctx.needs_input_grad
        q = stabilize(den, ctx.epsilon).reciprocal_()
        ggq = gg * q
        d_g = ggq * y if need_g else None
        d_y = ggq * g if need_y else None
        d_den = (ggq * g).mul_(y).mul_(q).neg_() if need_den else None
        return d_g, d_y, d_den, None


class RoutedAffineScale(_RelevanceStep):
    """:class:`RoutedScale` at ``y = s·z + t`` (a BatchNorm folded into the first layer), with ``y`` recomputed from
    the BN input ``z`` (kept by the BN anyway) instead of kept, as :class:`EpsilonAffineScale` does for ε.
    d/dz = d/dy·s, d/ds = d/dy·z, d/dt = d/dy with d/dy = g/stab(den)."""

    @staticmethod
    def forward(g: Tensor, z: Tensor, s: Tensor, t: Tensor, den: Tensor, epsilon: float) -> Tensor:  # type: ignore[override]
        return (g * affine_value(z, s, t)).div_(stabilize(den, epsilon))

    @staticmethod
    def backward(ctx, gg: Optional[Tensor]):  # type: ignore[override]
        if gg is None:
            return None, None, None, None, None, None
        g, z, s, t, den = ctx.saved_tensors
        need_g, need_z, need_s, need_t, need_den, _ = ctx.needs_input_grad
        q = stabilize(den, ctx.epsilon).reciprocal_()
        ggq = gg * q
        y = affine_value(z, s, t)
        d_g = d_z = d_s = d_t = d_den = None
        if need_g:
            d_g = ggq * y
        if need_z or need_s or need_t or need_den:
            d_y = ggq.mul_(g)
            d_z = d_y * s if need_z else None
            d_s = (d_y * z).sum_to_size(s.shape) if need_s else None
            d_t = d_y.sum_to_size(t.shape) if need_t else None
            d_den = (d_y * y).mul_(q).neg_() if need_den else None
        return d_g, d_z, d_s, d_t, d_den, None


class RoutedOut(torch.autograd.Function):
    """A rule whose denominator is not ``y`` (z^B, flat, z⁺): forward returns ``y``; the relevance backward
    sends ``R_y / stab(den)`` into each of ``routes`` (tensors built with the rule's modified weights and inputs)
    instead of into ``y``. ``kept``: what R_y is formed from, ``(factor_y, den)`` (:class:`RoutedScale`, ``y``
    taken from ``factor_y``) or, at a folded BatchNorm ``y = s·z + t``, ``(z, s, t, den)``
    (:class:`RoutedAffineScale`, nothing activation-sized kept for ``y``); the routes follow them in ``tensors``."""

    @staticmethod
    def forward(ctx, y: Tensor, info: RuleInfo, kept: int, *tensors: Tensor) -> Tensor:  # type: ignore[override]
        _keep(ctx, info, *tensors[:kept])
        ctx.kept, ctx.n_routes = kept, len(tensors) - kept
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        none = (None,) * (2 + ctx.kept + ctx.n_routes)
        if not in_relevance_pass():
            return (g,) + none
        saved = ctx.saved_tensors
        eps = ctx.info.epsilon
        if ctx.info.seed:
            c = g / stabilize(saved[-1], eps)
        else:
            c = (RoutedScale if ctx.kept == 2 else RoutedAffineScale).apply(g, *saved, eps)
        return (None,) * (3 + ctx.kept) + (c,) * ctx.n_routes


class AlphaBetaOut(torch.autograd.Function):
    """LRP-αβ: positive contributions ``zpos`` get α·R/zpos, negative ones ``zneg`` get −β·R/zneg."""

    @staticmethod
    def forward(ctx, y: Tensor, info: RuleInfo, zpos: Tensor, zneg: Tensor) -> Tensor:  # type: ignore[override]
        _keep(ctx, info, y, zpos, zneg)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if not in_relevance_pass():
            return _outside(g, 4)
        y, zpos, zneg = ctx.saved_tensors
        info = ctx.info
        r = g if info.seed else g * y
        cpos = r * (info.alpha / stabilize(zpos, info.epsilon))
        cneg = r * (-info.beta / stabilize(zneg, info.epsilon))
        return None, None, cpos, cneg


def epsilon_out(y: Tensor, info: RuleInfo, factor_from: Optional[Tensor] = None) -> Tensor:
    """Attach LRP-ε at ``y``. y / (y + sign(y)·ε) == |y| / (|y| + ε). ``factor_from``: the tensor (equal to ``y``)
    whose graph the factor follows; default ``y``. (Nothing is formed in the forward: without ``create_graph`` the
    relevance pass records no graph, so the factor needs no detaching.)"""
    y_ = y if factor_from is None else factor_from
    return EpsilonOut.apply(y, y_, info, factor_from)


def routed_out(y: Tensor, info: RuleInfo, den: Tensor, *routes: Tensor, factor_from: Optional[Tensor] = None,
               affine: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
    """Attach a rule with denominator ``den`` whose relevance flows into ``routes``. ``factor_from``: the tensor
    (equal to ``y``) whose graph the factor follows; default ``y``. ``affine``: (z, s, t) with ``y = s·z + t`` (a
    folded BatchNorm, s and t broadcastable), the factor then recomputed from them (``factor_from`` unused)."""
    kept = (*affine, den) if affine is not None else (y if factor_from is None else factor_from, den)
    return RoutedOut.apply(y, info, len(kept), *kept, *routes)


class StatGate(torch.autograd.Function):
    """Identity on batch statistics; blocks them during the relevance pass, so that LRP treats train-mode BN
    statistics as constants (no leak between samples) while the double backward still differentiates them."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:  # type: ignore[override]
        ctx.set_materialize_grads(False)  # the relevance pass reaches it without a gradient: no zeros to allocate
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
        # Where the BN is folded into its convolution (EpsilonFoldedOut routes the relevance around it), the relevance
        # pass still visits this node, without a gradient: unmaterialised, it costs nothing (materialised zeros
        # would be multiplied, kept for the double backward and added into the convolution's relevance).
        ctx.set_materialize_grads(False)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        if g is None:
            return None, None, None
        if not in_relevance_pass():
            return g, None, None
        (scale,) = ctx.saved_tensors
        shape = (-1,) + (1,) * (g.dim() - 2)
        return None, g * scale.reshape(shape), None
