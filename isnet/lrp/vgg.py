"""LRP-aware forward of torchvision VGG (with or without BatchNorm)."""
from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.vgg import VGG

from .sequential import check_layers, run_layers
from .tracer import Tracer


def _layers(model: VGG) -> list[nn.Module]:
    return [model.features, model.avgpool, nn.Flatten(1), model.classifier]


def check_vgg(model: VGG) -> None:
    check_layers(_layers(model))


def vgg_forward(tr: Tracer, model: VGG, x: Tensor) -> Tensor:
    return run_layers(tr, x, _layers(model))
