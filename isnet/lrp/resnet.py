"""LRP-aware forward of torchvision ResNets (BasicBlock and Bottleneck)."""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from .batchnorm import BatchNorm
from .sequential import check_layers, run_layers
from .tracer import Tracer


def _pairs(block: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    names = ("1", "2") if isinstance(block, BasicBlock) else ("1", "2", "3")
    return [(getattr(block, "conv" + n), getattr(block, "bn" + n)) for n in names]


def check_resnet(model: ResNet) -> None:
    if not isinstance(model.conv1, nn.Conv2d) or not isinstance(model.bn1, BatchNorm):
        raise TypeError(f"LRP: unsupported ResNet stem {type(model.conv1).__name__}/{type(model.bn1).__name__}")
    check_layers([model.maxpool, model.avgpool, model.fc])
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            if type(block) not in (BasicBlock, Bottleneck):
                raise TypeError(f"LRP: unsupported layer type {type(block).__name__}")
            for conv, bn in _pairs(block):
                check_layers([conv, bn])
            if block.downsample is not None:
                check_layers([block.downsample])


def _block(tr: Tracer, block: nn.Module, a: Tensor) -> Tensor:
    out = a
    pairs = _pairs(block)
    for k, (conv, bn) in enumerate(pairs):
        out = tr.linear_layer(out, conv, bn)
        if k < len(pairs) - 1:
            out = tr.relu(out)
    identity = a if block.downsample is None else run_layers(tr, a, [block.downsample])
    return tr.relu(tr.add(out, identity))


def resnet_forward(tr: Tracer, model: ResNet, x: Tensor) -> Tensor:
    a = tr.relu(tr.linear_layer(x, model.conv1, model.bn1))
    a = run_layers(tr, a, [model.maxpool])
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            a = _block(tr, block, a)
    a = run_layers(tr, a, [model.avgpool])
    return run_layers(tr, a.flatten(1), [model.fc])
