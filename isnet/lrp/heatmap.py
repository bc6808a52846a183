"""Public entry: differentiable LRP heatmaps for the classifiers isnet trains."""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import ResNet
from torchvision.models.vgg import VGG

from .config import LRPConfig
from .densenet import check_densenet, densenet_forward
from .resnet import check_resnet, resnet_forward
from .rules import relevance_pass
from .sequential import check_layers, sequential_forward
from .tracer import Tracer
from .vgg import check_vgg, vgg_forward

Targets = Union[Tensor, Callable[[Tensor], Tensor]]

_ARCHS = (
    (ResNet, check_resnet, resnet_forward),
    (DenseNet, check_densenet, densenet_forward),
    (VGG, check_vgg, vgg_forward),
    (nn.Sequential, lambda m: check_layers(m), sequential_forward),
)


def _forward_for(model: nn.Module) -> Callable[[Tracer, nn.Module, Tensor], Tensor]:
    for cls, check, forward in _ARCHS:
        if isinstance(model, cls):
            check(model)
            return forward
    raise TypeError(f"LRP: unsupported model type {type(model).__name__}")


def supports_model(model: nn.Module) -> bool:
    """Whether :func:`lrp_heatmaps` can explain ``model`` (a TypeError would name the offending layer)."""
    try:
        _forward_for(model)
    except TypeError:
        return False
    return True


def _initial_relevance(logits: Tensor, targets: Targets) -> Tensor:
    """[B, K, C] relevance at the output: one-hot × logit for class indices, or the given float relevance.

    A callable receives the live logits, so a float relevance it computes from them stays a differentiable
    function of the weights (ISNet's selective variant); it detaches them itself where a constant is meant."""
    if callable(targets):
        targets = targets(logits)
    targets = torch.as_tensor(targets, device=logits.device)
    batch, n_classes = logits.shape
    if not targets.is_floating_point():
        if targets.dim() == 1:
            targets = targets[:, None]
        if targets.shape[0] != batch or targets.dim() != 2:
            raise ValueError(f"class-index targets must be [B, K] with B={batch}, got {tuple(targets.shape)}")
        if targets.numel() and (targets.min() < 0 or targets.max() >= n_classes):
            raise ValueError(f"class indices must lie in [0, {n_classes})")
        return F.one_hot(targets.long(), n_classes).to(logits.dtype) * logits[:, None, :]
    if targets.dim() == 2:
        targets = targets[:, None, :]
    if targets.dim() != 3 or targets.shape[0] != batch or targets.shape[2] != n_classes:
        raise ValueError(f"relevance targets must be [B, K, C]=[{batch}, K, {n_classes}], got {tuple(targets.shape)}")
    return targets.to(logits.dtype)


def _relevance_grads(logits: Tensor, inputs: list[Tensor], rel: Tensor, create_graph: bool,
                     batched: bool = False, fused: bool = False) -> list:
    """Gradients [K, B, ...] of the relevance pass for the K initial relevances ``rel`` [B, K, C].

    ``batched``: all K classes in one backward pass, ``torch.func.vmap`` over ``autograd.grad`` of the shared
    forward graph. Every node's backward then runs once on [K, B, ...] relevances (the convolutions fold K into
    the batch, see :class:`isnet.lrp.conv.ConvInputGrad`), and with ``create_graph`` the recorded graph is batched
    too, so the heatmap loss's double backward also runs once instead of K times. Otherwise one autograd.grad per
    class (``autograd.grad(is_grads_batched=True)`` would not do: it runs the legacy vmap, which has no batching
    rule for convolution backward and does not support the custom Functions).
    """
    kwargs = dict(retain_graph=True, create_graph=create_graph, allow_unused=True)
    with relevance_pass(fused):
        if not batched:
            per_map = [torch.autograd.grad(logits, inputs, rel[:, k], **kwargs) for k in range(rel.shape[1])]
            return [None if g[0] is None else torch.stack(g) for g in zip(*per_map)]
        unused: list[bool] = []

        def one_class(seed: Tensor) -> tuple[Tensor, ...]:
            grads = torch.autograd.grad(logits, inputs, seed, **kwargs)
            unused[:] = [g is None for g in grads]  # vmap returns tensors only; which inputs are unused is static
            return tuple(g for g in grads if g is not None)

        used = iter(torch.func.vmap(one_class, in_dims=1)(rel))
        return [None if u else next(used) for u in unused]


#: ``batch_classes=None`` batches the K classes when the input has at most this many pixels in all (batch × height ×
#: width: 8 images of 96×96). Measured on CPU (resnet18 ISNet training step, batch 8, 3 classes, 1 thread, loop and
#: batched interleaved in one process): batched took 0.77–0.85× the loop's time at 64 px, 0.96× at 96 px,
#: 0.98–1.07× at 128 px and 1.16× at 224 px, where vmap's batching rules copy the large early feature maps K times
#: (ReLU and max-pool backward, the first convolution). Docs: docs/benchmarks.md, "Batching the classes".
BATCH_MAX_PIXELS = 8 * 96 * 96


def _batch_classes(x: Tensor, n_maps: int, batch_classes: Optional[bool]) -> bool:
    if batch_classes is not None:
        return batch_classes
    return n_maps > 1 and x.shape[0] * x.shape[-2] * x.shape[-1] <= BATCH_MAX_PIXELS


def lrp_heatmaps(
    model: nn.Module,
    x: Tensor,
    targets: Targets,
    *,
    config: LRPConfig = LRPConfig(),
    create_graph: bool = False,
    batch_classes: Optional[bool] = None,
) -> tuple[Tensor, Tensor]:
    """Forward ``model`` once and explain it with LRP.

    Returns (logits [B, C], heatmaps [B, K, H, W] summed over input channels). ``targets``: LongTensor [B, K]
    of classes to explain (initial relevance = one-hot × logit), float Tensor [B, K, C] of initial relevances,
    or a callable mapping the logits (with their graph) to either. The logits are exactly ``model(x)`` (same graph, same
    dropout mask, BN running statistics updated once), so a trainer needs no second forward; with
    ``create_graph=True`` the heatmaps are differentiable functions of the weights. The K heatmaps share the
    forward pass and its graph. ``batch_classes``: True explains the K classes in one batched relevance backward
    pass (every layer's relevance and double backward run once on K·B samples: faster for small feature maps),
    False in one backward pass per class; None (default) batches when K > 1 and the input has at most
    ``BATCH_MAX_PIXELS`` pixels in all, and falls back to the per-class passes (with a warning) where the batched
    pass fails. Both give the same heatmaps and gradients up to float rounding.
    """
    forward = _forward_for(model)
    grad_enabled = torch.is_grad_enabled()
    with torch.enable_grad():
        xr = x if x.requires_grad else x.detach().requires_grad_(True)
        tr = Tracer(xr, config, x_value=x, differentiable=create_graph)
        logits = tr.output(forward(tr, model, xr))
        if logits.dim() != 2:
            raise ValueError(f"LRP: expected logits [B, C], got {tuple(logits.shape)}")
        rel = _initial_relevance(logits, targets)
        inputs = [t for t, _ in tr.heat_terms]
        n_maps = rel.shape[1]
        batched = _batch_classes(x, n_maps, batch_classes)
        try:
            grads = _relevance_grads(logits, inputs, rel, create_graph, batched, config.compile)
        except (RuntimeError, NotImplementedError) as exc:
            if not batched or batch_classes is not None:
                raise
            warnings.warn(f"LRP: batched relevance pass failed ({type(exc).__name__}: {exc}); explaining the "
                          f"{n_maps} classes one backward pass each", RuntimeWarning, stacklevel=2)
            grads = _relevance_grads(logits, inputs, rel, create_graph, False, config.compile)
        # each term summed over its own channels: the first-layer rules stack bounds beside the C input channels
        heat = torch.zeros((n_maps, x.shape[0]) + tuple(x.shape[2:]), dtype=logits.dtype, device=x.device)
        for (t, coef), g in zip(tr.heat_terms, grads):
            if g is not None:
                heat = heat + (coef * t * g).sum(2)
        heat = heat.transpose(0, 1)
    if not create_graph:
        heat = heat.detach()
    if not grad_enabled:
        logits = logits.detach()
    return logits, heat
