"""LRP-aware forward of torchvision DenseNets.

Every BatchNorm after a concatenation (norm1 of each dense layer, the transitions' norm, norm5) is split by
channel slices over the layers that produced them: with LRP-ε this is exactly "ε at the BN output and none at
the producers' outputs" (a dense layer's conv2, a transition's average pooling), because the BN's per-channel
affine map of each slice then forms one linear layer with its producer, separately for every consumer BN.
The slice coming from the stem's max pooling has no linear producer and is a stand-alone affine layer.
With the z⁺/α2β1 body rules the BN after a concatenation is instead treated as its own (elementwise) layer.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.densenet import DenseNet, _DenseBlock, _DenseLayer, _Transition

from .sequential import check_layers, run_layers
from .structural import concat
from .tracer import Tracer


def _defer(tr: Tracer) -> bool:
    return tr.config.layer_rule(dense=False) == "epsilon"


def _dense_layer(tr: Tracer, layer: _DenseLayer, features: list[Tensor]) -> Tensor:
    a = tr.relu(tr.batch_norm(concat(features), layer.norm1))
    a = tr.relu(tr.linear_layer(a, layer.conv1, layer.norm2))
    out = tr.linear_layer(a, layer.conv2, defer=_defer(tr))
    if layer.drop_rate > 0:
        out = F.dropout(out, p=layer.drop_rate, training=layer.training)
    return out


def _dense_block(tr: Tracer, block: nn.Module, a: Tensor) -> Tensor:
    features = [a]
    for layer in block.values():
        features.append(_dense_layer(tr, layer, features))
    return concat(features)


def _transition(tr: Tracer, trans: nn.Module, a: Tensor) -> Tensor:
    a = tr.relu(tr.batch_norm(a, trans.norm))
    a = tr.linear_layer(a, trans.conv)
    return tr.avg_pool(a, trans.pool, defer=_defer(tr))


_BLOCKS = {_DenseBlock: _dense_block, _Transition: _transition}


def check_densenet(model: DenseNet) -> None:
    check_layers([model.features, model.classifier], extra=_BLOCKS)
    for m in model.features:
        if isinstance(m, _DenseBlock):
            for layer in m.values():
                if type(layer) is not _DenseLayer:
                    raise TypeError(f"LRP: unsupported layer type {type(layer).__name__}")
                check_layers([layer.norm1, layer.conv1, layer.norm2, layer.conv2])
        elif isinstance(m, _Transition):
            check_layers([m.norm, m.conv, m.pool])


def densenet_forward(tr: Tracer, model: DenseNet, x: Tensor) -> Tensor:
    a = tr.relu(run_layers(tr, x, model.features, extra=_BLOCKS))
    a = tr.avg_pool(a, lambda t: F.adaptive_avg_pool2d(t, (1, 1)))
    return run_layers(tr, a.flatten(1), [model.classifier])
