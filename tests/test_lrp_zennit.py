"""Eval-mode heatmaps equal zennit's (the reference for LRP values) on deep copies of the same models."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.densenet import _DenseBlock, _Transition

from isnet.lrp import LRPConfig, lrp_heatmaps

from conftest import randomize_bn as _randomize_bn

zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import SpecialFirstLayerMapComposite  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.rules import Epsilon, Norm, Pass, ZBox  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402
from zennit.types import Activation, AvgPool, Convolution  # noqa: E402

EPS = 0.01


def randomize_bn(model: nn.Module) -> nn.Module:
    return _randomize_bn(model).double().eval()


def exact_bn_identity(model: nn.Module) -> nn.Module:
    """zennit's BN merge leaves the BN computing x/sqrt(1+eps) instead of x; move eps into running_var so
    that the merged copy computes exactly the original function."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_var.data += m.eps
            m.eps = 0.0
    return model


def zennit_heatmap(model: nn.Module, x: torch.Tensor, y: torch.Tensor, canonizers: list) -> torch.Tensor:
    composite = SpecialFirstLayerMapComposite(
        layer_map=[
            (Activation, Pass()),
            (Sum, Norm(EPS)),
            (AvgPool, Norm(EPS)),
            (Convolution, Epsilon(EPS)),
            (nn.Linear, Epsilon(EPS)),
        ],
        first_map=[(Convolution, ZBox(0.0, 1.0, EPS))],
        canonizers=canonizers,
    )
    with Gradient(model, composite) as attributor:
        _, rel = attributor(x, lambda out: F.one_hot(y, out.shape[1]).to(out) * out)
    return rel.sum(1)


def assert_matches(model: nn.Module, reference: nn.Module, canonizers: list, size: int = 32, channels: int = 1) -> None:
    torch.manual_seed(3)
    x = torch.rand(2, channels, size, size, dtype=torch.float64)
    y = torch.tensor([0, 2])
    _, ours = lrp_heatmaps(model, x, y[:, None], config=LRPConfig(epsilon=EPS))
    ref = zennit_heatmap(reference, x, y, canonizers)
    err = (ours[:, 0] - ref).abs().max() / ref.abs().max()
    print(f"relative max error {err:.2e}")
    assert err <= 1e-5, f"relative max error {err:.2e}"


def test_resnet18_matches_zennit() -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    model = randomize_bn(model)
    assert_matches(model, exact_bn_identity(copy.deepcopy(model)), [ResNetCanonizer()])


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("variant_targets", ["stochastic", "original"])
def test_three_channel_torchvision_resnet18(train: bool, variant_targets: str) -> None:
    """torchvision's resnet18 as shipped (3-channel stem): our heatmaps equal zennit's in eval mode, and the
    original (all classes) and one-class targets both run in train and eval mode."""
    torch.manual_seed(0)
    model = randomize_bn(torchvision.models.resnet18(weights=None, num_classes=3))
    if not train:
        assert_matches(model, exact_bn_identity(copy.deepcopy(model)), [ResNetCanonizer()], channels=3)
    model.train(train)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[0, 1, 2], [0, 1, 2]]) if variant_targets == "original" else torch.tensor([[1], [2]])
    logits, heat = lrp_heatmaps(model, x, targets, create_graph=True)
    assert heat.shape == (2, targets.shape[1], 32, 32) and torch.isfinite(heat).all()
    heat.abs().sum().backward()
    assert model.conv1.weight.grad is not None


def test_vgg16_bn_matches_zennit() -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg16_bn(weights=None, num_classes=3)
    model.features[0] = nn.Conv2d(1, 64, 3, padding=1)
    # the 25088x4096 classifier is irrelevant to the rules under test: same structure, smaller widths
    model.avgpool = nn.AdaptiveAvgPool2d(2)
    model.classifier = nn.Sequential(
        nn.Linear(2048, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, 3),
    )
    model = randomize_bn(model)
    assert_matches(model, exact_bn_identity(copy.deepcopy(model)), [VGGCanonizer()])


def _fold(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return s.detach(), (bn.bias - bn.running_mean * s).detach()


def _folded_conv(conv: nn.Conv2d, s: torch.Tensor, t: torch.Tensor) -> nn.Conv2d:
    new = copy.deepcopy(conv)
    bias = torch.zeros_like(t) if conv.bias is None else conv.bias.detach()
    new.weight = nn.Parameter(conv.weight.detach() * s[:, None, None, None])
    new.bias = nn.Parameter(bias * s + t)
    return new


def _channel_affine(s: torch.Tensor, t: torch.Tensor, pool: int) -> nn.Conv2d:
    """A BN slice (s, t) after a pool×pool average pooling (pool=1: none) as one depthwise convolution."""
    c = s.numel()
    conv = nn.Conv2d(c, c, pool, stride=pool, groups=c).double()
    conv.weight = nn.Parameter((s / pool**2).reshape(c, 1, 1, 1).expand(c, 1, pool, pool).clone())
    conv.bias = nn.Parameter(t.clone())
    return conv


class FoldedDenseNet(nn.Module):
    """A torchvision DenseNet with each BN after a concatenation split over the producers of its slices and
    folded into them by hand (one folded copy of a producer per consumer BN), so zennit can explain it."""

    def __init__(self, net: torchvision.models.DenseNet) -> None:
        super().__init__()
        f = net.features
        self.conv0 = _folded_conv(f.conv0, *_fold(f.norm0))
        self.pool0 = copy.deepcopy(f.pool0)
        self.plan: list[tuple[str, int]] = []
        self.consumers = nn.ModuleList()
        self.convs = nn.ModuleList()
        sources: list[tuple[str, nn.Module, int]] = [("stem", None, f.conv0.out_channels)]
        for child in list(f.children())[4:]:
            if isinstance(child, _DenseBlock):
                for layer in child.values():
                    self._consumer(layer.norm1, sources)
                    self.convs.append(_folded_conv(layer.conv1, *_fold(layer.norm2)))
                    self.plan.append(("layer", len(self.convs) - 1))
                    sources.append(("conv", layer.conv2, layer.conv2.out_channels))
            elif isinstance(child, _Transition):
                self._consumer(child.norm, sources)
                self.convs.append(copy.deepcopy(child.conv))
                self.plan.append(("transition", len(self.convs) - 1))
                sources = [("pool", None, child.conv.out_channels)]
            else:  # norm5
                self._consumer(child, sources)
                self.plan.append(("final", -1))
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.classifier = copy.deepcopy(net.classifier)

    def _consumer(self, bn: nn.BatchNorm2d, sources: list) -> None:
        s, t = _fold(bn)
        mods, start = nn.ModuleList(), 0
        for kind, producer, n in sources:
            sl = slice(start, start + n)
            start += n
            if kind == "conv":
                mods.append(_folded_conv(producer, s[sl], t[sl]))
            else:
                mods.append(_channel_affine(s[sl], t[sl], 1 if kind == "stem" else 2))
        self.consumers.append(mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = [self.pool0(F.relu(self.conv0(x)))]
        for consumer, (kind, idx) in zip(self.consumers, self.plan):
            z = F.relu(torch.cat([m(i) for m, i in zip(consumer, inputs)], 1))
            if kind == "layer":
                inputs.append(F.relu(self.convs[idx](z)))
            elif kind == "transition":
                inputs = [self.convs[idx](z)]
            else:
                return self.classifier(self.gap(z).flatten(1))
        raise AssertionError("no final BN")


def test_densenet_matches_zennit_on_hand_folded_copy() -> None:
    torch.manual_seed(0)
    model = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=8, num_classes=3)
    model.features.conv0 = nn.Conv2d(1, 8, 7, 2, 3, bias=False)
    model = randomize_bn(model)
    reference = FoldedDenseNet(model).double().eval()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    torch.testing.assert_close(reference(x), model(x))  # the hand-folded copy computes the same function
    assert_matches(model, reference, [])
