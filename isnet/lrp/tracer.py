"""LRP-aware functional building blocks used by the per-architecture forwards.

Each method computes exactly what the model's own module computes (the modules themselves are called, so
logits, dropout masks and BN running statistics are those of ``model(x)``) and attaches the LRP rule of that
layer as an identity-forward autograd Function (see :mod:`isnet.lrp.rules`). A "layer" here is a linear map with
any BatchNorm that directly follows it folded in; the rule Function sits at the BN output.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .batchnorm import batch_norm, channel_shape
from .config import LRPConfig
from .conv import conv2d, epsilon_conv_out
from .structural import relu
from .rules import AlphaBetaOut, RuleInfo, epsilon_folded_out, epsilon_out, routed_out

Op = Callable[[Tensor, Tensor], Tensor]


def _conv_op(conv: nn.Conv2d) -> Op:
    def op(inp: Tensor, w: Tensor) -> Tensor:
        return F.conv2d(inp, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    return op


def _linear_op(inp: Tensor, w: Tensor) -> Tensor:
    return F.linear(inp, w)


def _channel_op(inp: Tensor, w: Tensor) -> Tensor:
    return inp * channel_shape(w, inp.dim())


class Tracer:
    """Holds the rule configuration and the bookkeeping of one LRP-aware forward pass.

    ``heat_terms`` lists (tensor, coefficient) pairs; the heatmap is Σ coef · tensor · ∂/∂tensor summed over
    channels: x·∇x for ε, and the three-term trick x·∇x − l·∇l − h·∇h for z^B. ``x`` is the input the model
    forward is traced from (it requires grad); ``x_value`` the same values without that requirement, used by
    first-layer rules whose relevance does not flow through the forward graph.
    """

    def __init__(self, x: Tensor, config: LRPConfig, x_value: Optional[Tensor] = None,
                 differentiable: bool = True) -> None:
        self.x = x
        # without create_graph nothing differentiates the heatmap (detach_biases then changes nothing)
        self.differentiable = differentiable
        self.x_value = x if x_value is None else x_value
        self.config = config
        self.heat_terms: list[tuple[Tensor, float]] = [(x, 1.0)]
        self._first_pending = True
        self._last_out: Optional[Tensor] = None
        self._last_info: Optional[RuleInfo] = None
        # relevance at a module's output (isnet.lrp.latent): the tensor a module returned, and the rule's output
        # that wraps it (a view of it), which is what the next layers consume
        self.watch: Optional[Tensor] = None
        self.watched: Optional[Tensor] = None

    # ------------------------------------------------------------------ rule plumbing
    def _info(self, **kwargs: float) -> RuleInfo:
        return RuleInfo(self.config.epsilon, **kwargs)

    def _emit(self, out: Tensor, info: RuleInfo) -> Tensor:
        self._last_out, self._last_info = out, info
        w = self.watch
        if w is not None and out.data_ptr() == w.data_ptr() and out.shape == w.shape:  # rules return views
            self.watched = out
        return out

    def epsilon(self, y: Tensor) -> Tensor:
        """LRP-ε at ``y`` (output of any linear map, including pooling and sums)."""
        info = self._info()
        return self._emit(epsilon_out(y, info), info)

    @property
    def _detach(self) -> bool:
        return self.config.detach_biases and self.differentiable

    def _without_own_bias(self, y: Tensor, lin: Tensor) -> Tensor:
        """``y`` with the value unchanged but differentiable only through ``lin``, the layer's bias-free linear part
        (``detach_biases``: the layer's own bias, BN shift and statistics are constants in the relevance graph)."""
        return lin + (y - lin).detach()

    def _biasless(self, z: Tensor, module: nn.Module) -> Tensor:
        b = getattr(module, "bias", None)
        return z if b is None else z - channel_shape(b, z.dim())

    def _rule(self, y: Tensor, a: Tensor, op: Op, w: Tensor, b: Optional[Tensor], rule: str,
              y_rule: Optional[Tensor] = None) -> Tensor:
        """z⁺ or α2β1 for the linear map ``y = op(a, w) + b`` (zennit's conventions for signs and biases).
        ``y_rule``: the value the rule's factors are formed from (``y`` with its own bias detached)."""
        y_rule = y if y_rule is None else y_rule
        has_neg = bool((a < 0).any())
        a_pos = a.clamp(min=0) if has_neg else a
        a_neg = a.clamp(max=0) if has_neg else None
        w_pos, w_neg = w.clamp(min=0), w.clamp(max=0)

        def term(first_w: Tensor, bias: Optional[Tensor], second_w: Tensor) -> Tensor:
            z = op(a_pos, first_w)
            if bias is not None:
                z = z + channel_shape(bias, z.dim())
            if a_neg is not None:
                z = z + op(a_neg, second_w)
            return z

        zpos = term(w_pos, None if b is None else b.clamp(min=0), w_neg)
        if rule == "zplus":
            info = self._info()
            return self._emit(routed_out(y, info, zpos, zpos, factor_from=y_rule), info)
        if rule == "alpha2beta1":
            zneg = term(w_neg, None if b is None else b.clamp(max=0), w_pos)
            info = self._info(alpha=2.0, beta=1.0)
            return self._emit(AlphaBetaOut.apply(y, info, zpos, zneg), info)
        raise ValueError(f"unknown rule {rule!r}")

    def _first(self, y: Tensor, module: nn.Module, op: Op, w: Tensor, y_rule: Optional[Tensor] = None,
               affine: Optional[tuple[Tensor, Tensor, Tensor]] = None) -> Tensor:
        """The first layer's rule; its input is the model input ``self.x``. ``affine``: (z, s, t) of a BatchNorm
        folded into it (``y = s·z + t``, and ``y_rule`` is ``y``), for the routed rules to recompute ``y`` from
        instead of keeping it."""
        cfg, x = self.config, self.x_value
        y_rule = y if y_rule is None else y_rule
        info = self._info()
        if cfg.first_rule == "epsilon":
            if y_rule is y:
                return self.epsilon(y)
            return self._emit(epsilon_out(y, info, factor_from=y_rule), info)
        if cfg.first_rule == "flat":
            u = torch.ones_like(x).requires_grad_(True)
            zu = op(u, torch.ones_like(w))
            self.heat_terms = [(u, 1.0)]
            return self._emit(routed_out(y, info, zu, zu, factor_from=y_rule, affine=affine), info)
        # z^B: denominator Σ x·w − l·w⁺ − h·w⁻ (biases cancel, as in zennit's ZBox). The three terms are one
        # linear map of the stacked input [x, l, h] with weights [w, −w⁺, −w⁻], whose input × gradient summed
        # over channels is the z^B relevance; bound terms that are 0 are left out.
        inputs, weights = [x], [w]
        for bound, wmod in ((cfg.low, w.clamp(min=0)), (cfg.high, w.clamp(max=0))):
            if bound != 0:
                inputs.append(torch.full_like(x, bound))
                weights.append(-wmod)
        groups = getattr(module, "groups", 1)
        if groups == 1:
            stacked = torch.cat(inputs, 1)
            stacked = stacked if stacked.requires_grad else stacked.requires_grad_(True)
            den = op(stacked, torch.cat(weights, 1))
            self.heat_terms = [(stacked, 1.0)]
            return self._emit(routed_out(y, info, den, den, factor_from=y_rule, affine=affine), info)
        leaves = [t if t.requires_grad else t.requires_grad_(True) for t in inputs]
        terms = [op(t, wt) for t, wt in zip(leaves, weights)]
        self.heat_terms = [(t, 1.0) for t in leaves]
        total = sum(terms[1:], terms[0])
        return self._emit(routed_out(y, info, total, *terms, factor_from=y_rule, affine=affine), info)

    # ------------------------------------------------------------------ layers
    def linear_layer(
        self, a: Tensor, module: nn.Module, bn: Optional[nn.Module] = None, *, defer: bool = False
    ) -> Tensor:
        """Conv2d/Linear ``module`` on ``a``, optionally followed by ``bn`` (folded functionally).

        defer=True returns the raw output without a rule, when every consumer is a BN whose ε rule at its
        output completes the layer (DenseNet: a BN after a concatenation, split over its producers).
        """
        first = self._first_pending and a is self.x
        self._first_pending = False
        if first and self.config.first_rule != "epsilon":
            a = self.x_value  # the relevance takes the rule's own path: no input gradient on the forward graph
        z = conv2d(module, a) if isinstance(module, nn.Conv2d) else module(a)
        s = t = sc = tc = None  # sc, tc: the BN's scale and shift shaped to broadcast over z
        y = z
        if bn is not None:
            y, s, t = batch_norm(bn, z, detach_stats=self._detach)
            sc, tc = channel_shape(s, z.dim()), channel_shape(t, z.dim())
        dense = isinstance(module, nn.Linear)
        rule = self.config.layer_rule(dense)
        if defer and not first:
            return y
        y_rule = y  # the value the rule's factors are formed from
        if self._detach:
            lin = self._biasless(z, module)
            y_rule = self._without_own_bias(y, lin if s is None else channel_shape(s, z.dim()) * lin)
        if not first and rule == "epsilon":
            info = self._info()
            out = None
            if y_rule is y and isinstance(module, nn.Conv2d):  # relevance past the convolution into its input
                out = epsilon_conv_out(y, z, sc, tc, a, module, info)
            if out is None and s is not None:  # ε at the BN output, relevance straight into the layer's output z
                out = epsilon_folded_out(y, z, sc, tc, info, y_rule)
            if out is None:
                out = epsilon_out(y, info, factor_from=y_rule)
            return self._emit(out, info)
        w: Tensor = module.weight
        b: Optional[Tensor] = module.bias
        if s is not None:
            w = w * s.reshape((-1,) + (1,) * (w.dim() - 1))
            b = t if b is None else b * s + t
        if b is not None and self._detach:
            b = b.detach()
        op = _linear_op if dense else _conv_op(module)  # type: ignore[arg-type]
        if first:
            return self._first(y, module, op, w, y_rule, None if s is None or y_rule is not y else (z, sc, tc))
        return self._rule(y, a, op, w, b, rule, y_rule)

    def batch_norm(self, a: Tensor, bn: nn.Module) -> Tensor:
        """A BatchNorm not preceded by a linear layer of its own: an elementwise linear layer."""
        y, s, t = batch_norm(bn, a, detach_stats=self._detach)
        self._first_pending = self._first_pending and a is not self.x
        y_rule = self._without_own_bias(y, _channel_op(a, s)) if self._detach else y
        rule = self.config.layer_rule(dense=False)
        if rule == "epsilon":  # ε at the BN output, relevance straight into its input (as for a folded BN)
            info = self._info()
            return self._emit(epsilon_folded_out(y, a, channel_shape(s, a.dim()), channel_shape(t, a.dim()), info,
                                                 y_rule), info)
        return self._rule(y, a, _channel_op, s, t, rule, y_rule)

    def avg_pool(self, a: Tensor, pool: Callable[[Tensor], Tensor], *, defer: bool = False) -> Tensor:
        """Average pooling is linear: LRP-ε at its output."""
        y = pool(a)
        return y if defer else self.epsilon(y)

    def max_pool(self, a: Tensor, pool: nn.Module) -> Tensor:
        """Max pooling: winner takes all, which is exactly the gradient of the max."""
        return pool(a)

    def add(self, a: Tensor, b: Tensor) -> Tensor:
        """Residual sum: relevance shared in proportion to each branch's contribution (ε-stabilised)."""
        return self.epsilon(a + b)

    @staticmethod
    def relu(a: Tensor) -> Tensor:
        return relu(a)

    @staticmethod
    def dropout(a: Tensor, module: nn.Module) -> Tensor:
        """Same call (and random mask) as the module, never in place."""
        return F.dropout(a, module.p, module.training)

    def output(self, y: Tensor) -> Tensor:
        """Mark ``y`` as the model output: the layer producing it takes the initial relevance directly."""
        if y is self._last_out and self._last_info is not None:
            self._last_info.seed = True
            return y
        info = self._info(seed=True)  # fallback: an ε "identity layer" at the output
        return self._emit(epsilon_out(y, info), info)
