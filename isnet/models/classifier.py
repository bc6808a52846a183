"""Chest X-ray classifiers: torchvision backbones with a single-channel stem.

Nothing is downloaded: every backbone is built with ``weights=None``; pretrained weights are loaded
afterwards from local files when ``model.init`` asks for them (``isnet.train.init``). The first convolution is
rebuilt for one input channel (radiographs are grey) with the same kernel, stride and padding as the original.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm


def small_cnn(num_classes: int, in_channels: int = 1, width: int = 32) -> nn.Sequential:
    """A four-block conv-BN-ReLU network: fast enough for CPU tests and the quick-start, and LRP-friendly."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i in range(4):
        c_out = width * 2 ** i
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=False)]
        layers.append(nn.MaxPool2d(2) if i < 3 else nn.AdaptiveAvgPool2d(1))
        c_in = c_out
    layers += [nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)


def _single_channel(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                     bias=conv.bias is not None)


def build_classifier(backbone: str, num_classes: int, in_channels: int = 1, width: int = 32) -> nn.Module:
    """Build an untrained classifier; unknown names raise ``ValueError`` listing the choices."""
    if backbone == "small_cnn":
        return small_cnn(num_classes, in_channels, width)
    if backbone in ("resnet18", "resnet50"):
        m = getattr(tvm, backbone)(weights=None, num_classes=num_classes)
        m.conv1 = _single_channel(m.conv1, in_channels)
    elif backbone == "densenet121":
        m = tvm.densenet121(weights=None, num_classes=num_classes)
        m.features.conv0 = _single_channel(m.features.conv0, in_channels)
    elif backbone == "vgg16_bn":
        m = tvm.vgg16_bn(weights=None, num_classes=num_classes)
        m.features[0] = _single_channel(m.features[0], in_channels)
    else:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of small_cnn, resnet18, resnet50, "
                         "densenet121, vgg16_bn")
    return m


