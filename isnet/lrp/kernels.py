"""The elementwise arithmetic of the ε relevance step, optionally fused by ``torch.compile``.

Each ε step and its gradients are a dozen passes over an activation-sized tensor (|y|, |y| + ε, the ratio, the
products with g and s, the derivative's r²·sign(y), ...). In eager mode each pass reads and writes the whole tensor;
elementwise work was about a quarter of a DenseNet121 ISNet step on CPU, most of it these passes. Compiled, each
function below becomes one or two loops that read their inputs once. The functions are pure (no in-place updates of
their arguments) and are called only on plain tensors: inside an autograd Function's forward or backward with gradients
off and no functorch transform (vmap) active; everywhere else the eager forms in :mod:`isnet.lrp.rules` run.

Compilation is off by default (it costs tens of seconds on the first step and needs a C++ compiler on CPU):
``lrp.compile: true`` in a run's config (:class:`isnet.lrp.LRPConfig` ``compile``) switches it on for that run's
heatmaps, through :func:`fused`.
"""
from __future__ import annotations

import logging
import warnings
from collections import Counter
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

_compiled: dict[str, Callable] = {}
_FUSED_DEPTH = 0
#: how often each compiled kernel ran in this process (tests check that the fused path is taken)
calls: Counter = Counter()


@contextmanager
def fused(on: bool = True) -> Iterator[None]:
    """Relevance steps recorded inside the block (``on``) use the compiled kernels, in the relevance pass and in the
    heatmap loss's backward later (each node records the choice). A plain counter, like
    :func:`isnet.lrp.rules.relevance_pass`, because autograd runs CUDA backward passes on its own threads."""
    global _FUSED_DEPTH
    _FUSED_DEPTH += int(bool(on))
    try:
        yield
    finally:
        _FUSED_DEPTH -= int(bool(on))


def requested() -> bool:
    """Whether the relevance step being recorded now should use the compiled kernels: switched on, and not under a
    functorch transform (the batched classes' vmap, whose nodes run the eager forms forward and backward)."""
    return _FUSED_DEPTH > 0 and not torch._C._are_functorch_transforms_active()


def usable() -> bool:
    """Whether a compiled kernel may run here: gradients off (inside an autograd Function, or a backward without
    create_graph), so that it only ever sees plain tensors."""
    return not torch.is_grad_enabled()


def active() -> bool:
    return requested() and usable()


def _scaled(g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], epsilon: float) -> Tensor:
    """``g · |y| / (|y| + ε) · s`` with ``y = s·z + t``, or ``y = z`` where t is None (s then only scales, or is
    None too)."""
    a = (z if t is None else s * z + t).abs()
    c = g * (a / (a + epsilon))
    return c if s is None else c * s


def _grads(u: Tensor, g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], epsilon: float,
           need_g: bool, need_z: bool, need_st: bool, need_c: bool):
    """(d_g, d_z, d_s, d_t, c) of ``c = g·f(y)·s`` for the gradient ``u`` at ``c`` (see rules.epsilon_step_grads);
    ``c`` itself where ``need_c`` (the fused convolution node's weight gradient). Unneeded entries are None."""
    y = z if s is None else s * z + t
    a = y.abs()
    r = 1.0 / (a + epsilon)
    f = a * r
    fs = f if s is None else f * s
    d_g = u * fs if need_g else None
    c = g * fs if need_c else None
    d_z = d_s = d_t = None
    if need_z or need_st:
        gy = u * g
        d_y = gy * (epsilon * torch.sign(y)) * (r * r)
        if s is not None:
            d_y = d_y * s
        if need_st and s is not None:
            d_s = (gy * f + d_y * z).sum_to_size(s.shape)  # g may carry a leading class dimension (see conv.py)
            d_t = d_y.sum_to_size(t.shape)
        if need_z:
            d_z = d_y * s if s is not None else d_y
    return d_g, d_z, d_s, d_t, c


#: the kernels' uncompiled forms, by name
_PURE: dict[str, Callable] = {"scaled": _scaled, "grads": _grads}


def _run(name: str, *args):
    """The kernel ``name`` on ``args``, compiled. Where compilation fails (no C++ compiler, no Triton for the GPU, an
    inductor limitation), one warning says why and the process runs the same functions uncompiled from then on: the
    heatmaps are the same, only slower."""
    calls[name] += 1
    f = _compiled.get(name)
    if f is None:
        # inductor's CPU build looks for a CUDA toolkit and warns "No CUDA runtime is found" on every CPU-only
        # machine: noise in a training log, not a problem
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        f = _compiled[name] = torch.compile(_PURE[name], dynamic=True)
    if f is _PURE[name]:
        return f(*args)
    try:
        return f(*args)
    except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back to the same arithmetic, eagerly
        warnings.warn(f"lrp.compile: torch.compile of the relevance step failed ({type(exc).__name__}: "
                      f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}); running it "
                      f"uncompiled (same heatmaps, slower)", RuntimeWarning, stacklevel=3)
        _compiled.update(_PURE)
        return _PURE[name](*args)


def scaled(g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], epsilon: float) -> Tensor:
    """The ε step's scaled relevance, fused (call only where :func:`active`)."""
    return _run("scaled", g, z, s, t, epsilon)


def grads(u: Tensor, g: Tensor, z: Tensor, s: Optional[Tensor], t: Optional[Tensor], epsilon: float,
          needs: tuple[bool, ...], need_c: bool = False):
    """The ε step's gradients, fused (call only where :func:`active`); ``needs``: (g, z, s, t)."""
    need_g, need_z, need_s, need_t = needs
    return _run("grads", u, g, z, s, t, epsilon, need_g, need_z, need_s or need_t, need_c)
