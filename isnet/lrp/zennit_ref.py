"""zennit as a second LRP engine: a composite with the rules of an :class:`LRPConfig`, and heatmaps made with it.

Used by RelDrop's ``engine: zennit`` option and by the ``zennit-naive-*`` rows of ``isnet bench``. zennit is
imported lazily (only these callers need it).

Equivalence with our engine (``tests/test_lrp_zennit.py``, ``tests/test_methods_reldrop.py``) holds in eval mode
for ResNets, VGGs and plain ``nn.Sequential`` CNNs, for every rule of :class:`LRPConfig` (measured to ~1e-14 in
float64 on small_cnn and resnet18 for each body and first-layer rule). zennit has
no DenseNet canonizer (a BatchNorm after a concatenation stays a plain layer) and its BatchNorm canonizers fold
the running statistics into the weights in place; :func:`zennit_heatmaps` therefore works on a copy of the model
and refuses what has no equivalent composite, while :func:`zennit_composite` with ``strict=False`` builds the
closest composite anyway (a cost reference, as in the benchmark).
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import ResNet
from torchvision.models.vgg import VGG

from .config import LRPConfig
from .heatmap import supports_model


def check_equivalent(model: nn.Module, config: LRPConfig) -> None:
    """Raise ValueError when no zennit composite reproduces our engine's heatmaps for ``model`` and ``config``."""
    if isinstance(model, DenseNet):
        raise ValueError("zennit has no DenseNet canonizer (BatchNorm after concatenations), so its heatmaps differ "
                         "from our engine's; use our engine for DenseNets")
    if not isinstance(model, (ResNet, VGG, nn.Sequential)) or not supports_model(model):
        raise ValueError(f"no zennit composite equivalent to our rules for {type(model).__name__}")


def zennit_composite(model: nn.Module, config: LRPConfig = LRPConfig(), *, strict: bool = True):
    """A zennit composite with our rules: ``config.body_rule`` at convolutions and dense layers (ε, z⁺, α2β1, or ε
    for dense and z⁺ for convolutions), the ε-type ``Norm`` rule at average pooling and residual sums, gradient
    through activations, ``config.first_rule`` at the first convolution, every stabiliser = ``config.epsilon``;
    BatchNorm folded by zennit's canonizers. ``strict``: ValueError where it would not be
    equivalent (see :func:`check_equivalent`)."""
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import SpecialFirstLayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import AlphaBeta, Epsilon, Flat, Norm, Pass, ZBox, ZPlus
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Activation, AvgPool, Convolution

    if strict:
        check_equivalent(model, config)
    eps = config.epsilon
    if isinstance(model, ResNet):
        canonizers = [ResNetCanonizer()]
    elif isinstance(model, VGG):
        canonizers = [VGGCanonizer()]
    elif isinstance(model, DenseNet):  # not equivalent: every BN stays a plain layer (gradient passes through it);
        canonizers = []  # SequentialMergeBatchNorm would merge a dense layer's norm1 into the previous layer's conv2
    else:  # Sequential CNNs
        canonizers = [SequentialMergeBatchNorm()]
    rules = {"epsilon": lambda: Epsilon(eps), "zplus": lambda: ZPlus(eps),
             "alpha2beta1": lambda: AlphaBeta(2.0, 1.0, eps)}
    first = {"zb": lambda: ZBox(config.low, config.high, eps), "epsilon": lambda: Epsilon(eps),
             "flat": lambda: Flat(eps)}[config.first_rule]()
    return SpecialFirstLayerMapComposite(
        layer_map=[(Activation, Pass()), (Sum, Norm(eps)), (AvgPool, Norm(eps)),
                   (Convolution, rules[config.layer_rule(dense=False)]()),
                   (nn.Linear, rules[config.layer_rule(dense=True)]())],
        first_map=[(Convolution, first)],
        canonizers=canonizers,
    )


def exact_bn_identity(model: nn.Module) -> nn.Module:
    """zennit's BatchNorm merge leaves each BN computing x/sqrt(1 + eps) instead of x; moving eps into the running
    variance (eps = 0) makes the merged model compute exactly the original function. Mutates ``model``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
            m.running_var.data += m.eps
            m.eps = 0.0
    return model


def zennit_heatmaps(model: nn.Module, x: Tensor, targets: Tensor, config: LRPConfig = LRPConfig()) -> Tensor:
    """Eval-mode LRP heatmaps [B, K, H, W] (summed over input channels) of the classes ``targets`` (LongTensor
    [B, K] or [B]; initial relevance = one-hot × logit), made by zennit on an eval-mode copy of ``model`` (the
    model itself is not touched). ValueError where zennit has no composite equivalent to our rules."""
    from zennit.attribution import Gradient

    check_equivalent(model, config)
    ref = exact_bn_identity(copy.deepcopy(model)).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    targets = targets[:, None] if targets.dim() == 1 else targets
    composite = zennit_composite(ref, config)
    maps = []
    with torch.enable_grad(), Gradient(ref, composite) as attributor:
        for k in range(targets.shape[1]):
            t = targets[:, k]
            _, rel = attributor(x.detach(), lambda out, t=t: F.one_hot(t, out.shape[1]).to(out) * out)
            maps.append(rel.sum(1))
    return torch.stack(maps, 1).detach()
