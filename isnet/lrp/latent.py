"""LRP relevance at an intermediate tensor: the input or output of one module of the model.

In the relevance pass every rule sends "modified gradients" down the graph such that the relevance of any tensor
``a`` that a layer consumes is ``R_a = a · g_a`` (see :mod:`isnet.lrp.rules`). :func:`lrp_relevance_at` runs the
LRP-aware forward of :func:`isnet.lrp.lrp_heatmaps`, takes ``a`` where the named module is called, and returns
``a · autograd.grad(logits, a, initial relevance)`` computed inside :func:`relevance_pass`. Only the part of the
network after ``a`` is differentiated: the layers before it run without a graph. Nothing is kept for a backward
(the result is detached); like ``model(x)`` the forward updates BatchNorm running statistics in train mode, so a
caller that runs it besides a training forward saves and restores the buffers.
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from .batchnorm import BatchNorm
from .config import LRPConfig
from .heatmap import Targets, _forward_for, _initial_relevance
from .rules import relevance_pass
from .sequential import AVG_POOL, LINEAR
from .tracer import Tracer

#: modules whose output the LRP forward wraps in the layer's rule: the relevance at their output is taken at that
#: rule's output (what the next layer consumes), not at the tensor the module returned
_RULE_OUTPUT = LINEAR + BatchNorm + AVG_POOL


def _resolve(model: nn.Module, layer: str | nn.Module) -> tuple[str, nn.Module]:
    if isinstance(layer, nn.Module):
        for name, m in model.named_modules():
            if m is layer:
                return name, m
        raise ValueError("the layer is not a module of the model")
    modules = dict(model.named_modules())
    if layer not in modules:
        raise ValueError(f"{layer!r} is not a module of the model (e.g. {', '.join(list(modules)[1:6])}, ...)")
    return layer, modules[layer]


def lrp_relevance_at(
    model: nn.Module,
    x: Tensor,
    targets: Targets,
    layer: str | nn.Module,
    at: Literal["input", "output"] = "input",
    *,
    config: LRPConfig = LRPConfig(),
) -> tuple[Tensor, Tensor]:
    """LRP relevance of the tensor entering (``at="input"``) or leaving (``"output"``) ``layer``.

    ``layer``: a module of ``model`` or its name in ``model.named_modules()``, called as a module by the LRP forward
    (e.g. a ResNet's ``avgpool``; not a container such as ``layer4``, whose children are called instead).
    ``targets``: as in :func:`isnet.lrp.lrp_heatmaps`. Returns (logits [B, C], relevance [B, K, *feature shape]),
    both detached, in the model's current mode (train mode: BatchNorm with the batch statistics, held constant in
    the relevance pass). Relevance is defined at the input of an LRP layer: ``ValueError`` where the rules route
    relevance around the tensor (e.g. the output of a convolution folded with the BatchNorm after it, the input
    of a BatchNorm, the model input — use :func:`lrp_heatmaps` there).
    """
    if at not in ("input", "output"):
        raise ValueError(f"at must be 'input' or 'output', got {at!r}")
    forward = _forward_for(model)
    name, module = _resolve(model, layer)
    where = f"the {at} of {name!r}"
    tr = Tracer(x.detach(), config, differentiable=False)
    probes: list[Tensor] = []

    def capture(t: Tensor) -> Tensor:
        if probes:
            raise ValueError(f"LRP relevance at {where}: the module is called more than once in the forward")
        leaf = t.detach().requires_grad_(True)
        torch.set_grad_enabled(True)  # the layers after this point are recorded; the no_grad block below ends it
        probe = leaf.clone()  # not the leaf itself: an in-place op may follow (DenseNet's final ReLU)
        probes.append(probe)
        if at == "output":
            tr.watch = probe
        return probe

    if at == "input":
        handle = module.register_forward_pre_hook(lambda mod, args: (capture(args[0]),) + tuple(args[1:]))
    else:
        handle = module.register_forward_hook(lambda mod, args, out: capture(out))
    try:
        with torch.no_grad():
            logits = tr.output(forward(tr, model, tr.x))
            if not probes:
                raise ValueError(f"LRP relevance at {where}: the LRP forward never calls this module (it calls "
                                 f"the leaves of containers such as ResNet's layer4, and applies ReLU functionally)")
            tensor = probes[0]
            if at == "output" and tr.watched is not None:
                tensor = tr.watched
            elif at == "output" and isinstance(module, _RULE_OUTPUT):
                raise ValueError(f"LRP has no relevance at {where}: it is folded into the layer that follows "
                                 f"(e.g. a convolution's BatchNorm); take the output of that layer")
            if not tensor.requires_grad:
                raise ValueError(f"LRP relevance at {where}: the output does not depend on it")
            rel = _initial_relevance(logits, targets).detach()
            maps = []
            with relevance_pass(config.compile):
                for k in range(rel.shape[1]):
                    (g,) = torch.autograd.grad(logits, tensor, rel[:, k], retain_graph=k + 1 < rel.shape[1],
                                               allow_unused=True)
                    if g is None:
                        raise ValueError(f"LRP relevance at {where}: the rules route relevance around this tensor "
                                         f"(e.g. the input of a BatchNorm or of the first layer)")
                    maps.append((tensor * g).detach())
    finally:
        handle.remove()
    return logits.detach(), torch.stack(maps, 1)
