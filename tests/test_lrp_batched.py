"""The K explained classes in one batched relevance backward (torch.func.vmap) give the same heatmaps, the same
ISNet-loss gradients with respect to every weight and the same BatchNorm running statistics as one backward pass
per class, on every supported architecture, in train and eval mode; ``batch_classes=None`` picks the batched pass
for K > 1 and falls back to the loop when the batched pass fails."""
import copy

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.vgg import VGG, make_layers

import isnet.lrp.conv as conv_mod
import isnet.lrp.heatmap as heatmap_mod
from isnet.lrp import LRPConfig, lrp_heatmaps
from isnet.methods.isnet_loss import ISNetLossConfig, isnet_heatmap_loss, isnet_total_loss
from isnet.models import build_classifier

from conftest import randomize_bn


def one_channel(model: nn.Module, attr: str) -> nn.Module:
    parent, name = model, attr.split(".")
    for part in name[:-1]:
        parent = getattr(parent, part)
    old = getattr(parent, name[-1])
    setattr(parent, name[-1], nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding,
                                        bias=old.bias is not None))
    return model


def resnet18() -> nn.Module:
    m = one_channel(torchvision.models.resnet18(weights=None, num_classes=3), "conv1")
    m.fc = nn.Sequential(nn.Dropout(0.3), m.fc)
    return m


def densenet121() -> nn.Module:
    """DenseNet-121's structure (dense layers, transitions, BN after concatenations), with fewer and narrower
    layers so that the test stays fast."""
    m = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2,
                                    drop_rate=0.2, num_classes=3)
    return one_channel(m, "features.conv0")


def vgg() -> nn.Module:
    """A torchvision VGG with BatchNorm, narrow (VGG-11's layer pattern at 1/8 of the width)."""
    features = make_layers([8, "M", 16, "M", 32, 32, "M", 64, 64, "M", 64, 64, "M"], batch_norm=True)
    m = one_channel(VGG(features, num_classes=3), "features.0")
    m.avgpool = nn.AdaptiveAvgPool2d(2)
    m.classifier = nn.Sequential(nn.Linear(256, 16), nn.ReLU(True), nn.Dropout(), nn.Linear(16, 3))
    return m


def small_cnn() -> nn.Module:
    return build_classifier("small_cnn", 3, width=4)


BUILDERS = {"resnet18": resnet18, "densenet": densenet121, "vgg_bn": vgg, "small_cnn": small_cnn}
LOSS = ISNetLossConfig(C1=0.5, C2=5.0)


def isnet_step(model: nn.Module, x: torch.Tensor, mask: torch.Tensor, y: torch.Tensor, config: LRPConfig,
               batch_classes: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Logits, heatmaps of all 3 classes and the gradient of the ISNet loss (CE + heatmap loss) per weight."""
    torch.manual_seed(7)  # the same dropout masks for both calls
    targets = torch.arange(3).expand(x.shape[0], 3)
    logits, heat = lrp_heatmaps(model, x, targets, config=config, create_graph=True, batch_classes=batch_classes)
    total = isnet_total_loss(F.cross_entropy(logits, y), isnet_heatmap_loss(heat, mask, LOSS), LOSS)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(total, params, allow_unused=True)
    return logits.detach(), heat.detach(), [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


def assert_relative(a: torch.Tensor, b: torch.Tensor, tol: float, what: str, floor: float = 0.0) -> None:
    """max |a − b| ≤ tol · max |b|; ``floor``: the least scale (a gradient that is 0 up to rounding, e.g. of a
    conv bias before a train-mode BatchNorm, is compared with the scale of the other gradients)."""
    scale = b.abs().max().clamp_min(max(floor, torch.finfo(b.dtype).tiny))
    err = float((a - b).abs().max() / scale)
    assert err <= tol, f"{what}: relative max error {err:.2e}"


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_batched_classes_equal_the_per_class_loop(name: str, train: bool) -> None:
    torch.manual_seed(0)
    model = randomize_bn(BUILDERS[name]()).double().train(train)
    loop_model, batched_model = model, copy.deepcopy(model)
    torch.manual_seed(1)
    size = 32
    x = torch.rand(2, 1, size, size, dtype=torch.float64)
    mask = torch.zeros(2, 1, size, size, dtype=torch.float64)
    mask[..., 6:26, 4:28] = 1
    y = torch.tensor([0, 2])
    config = LRPConfig(epsilon=0.01)

    ref = isnet_step(loop_model, x, mask, y, config, batch_classes=False)
    got = isnet_step(batched_model, x, mask, y, config, batch_classes=True)
    assert torch.equal(got[0], ref[0])  # one shared forward: identical logits
    assert_relative(got[1], ref[1], 1e-6, "heatmaps")
    assert ref[1].abs().sum() > 0
    floor = 1e-6 * max(float(r.abs().max()) for r in ref[2])
    for (pname, _), g, r in zip(model.named_parameters(), got[2], ref[2]):
        assert_relative(g, r, 1e-6, f"gradient of {pname}", floor)
    for (key, a), b in zip(batched_model.state_dict().items(), loop_model.state_dict().values()):
        assert torch.equal(a, b), key  # running statistics updated once, identically


@pytest.mark.parametrize("first_rule,body_rule", [("epsilon", "epsilon"), ("flat", "zplus"), ("zb", "alpha2beta1"),
                                                  ("zb", "epsilon_zplus")])
def test_batched_classes_equal_the_loop_for_other_rules(first_rule: str, body_rule: str) -> None:
    torch.manual_seed(0)
    model = randomize_bn(densenet121()).double().train()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64) - 0.3
    mask = torch.zeros(2, 1, 32, 32, dtype=torch.float64)
    mask[..., 8:24, 8:24] = 1
    config = LRPConfig(epsilon=0.01, first_rule=first_rule, body_rule=body_rule, low=-0.3, high=0.7)
    ref = isnet_step(copy.deepcopy(model), x, mask, torch.tensor([0, 2]), config, batch_classes=False)
    got = isnet_step(model, x, mask, torch.tensor([0, 2]), config, batch_classes=True)
    assert_relative(got[1], ref[1], 1e-6, "heatmaps")
    floor = 1e-6 * max(float(r.abs().max()) for r in ref[2])
    for g, r in zip(got[2], ref[2]):
        assert_relative(g, r, 1e-6, "gradient", floor)


@pytest.mark.parametrize("fold_max", [0, 10**9], ids=["never-fold", "always-fold"])
def test_batched_convolutions_folded_or_per_class(monkeypatch: pytest.MonkeyPatch, fold_max: int) -> None:
    """Under vmap ConvInputGrad folds the classes into the batch for small maps only; both ways are exact."""
    monkeypatch.setattr(conv_mod, "FOLD_MAX_PIXELS", fold_max)
    torch.manual_seed(0)
    model = randomize_bn(vgg()).double().train()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    mask = torch.zeros_like(x)
    mask[..., 8:24, 8:24] = 1
    ref = isnet_step(copy.deepcopy(model), x, mask, torch.tensor([0, 2]), LRPConfig(), batch_classes=False)
    got = isnet_step(model, x, mask, torch.tensor([0, 2]), LRPConfig(), batch_classes=True)
    assert_relative(got[1], ref[1], 1e-6, "heatmaps")
    floor = 1e-6 * max(float(r.abs().max()) for r in ref[2])
    for g, r in zip(got[2], ref[2]):
        assert_relative(g, r, 1e-6, "gradient", floor)


def test_batched_classes_in_float32_and_without_graph() -> None:
    torch.manual_seed(0)
    model = randomize_bn(resnet18()).eval()
    x = torch.rand(4, 1, 64, 64)
    targets = torch.tensor([[0, 1, 2]] * 4)
    _, ref = lrp_heatmaps(model, x, targets, batch_classes=False)
    _, got = lrp_heatmaps(model, x, targets, batch_classes=True)
    assert not got.requires_grad
    assert_relative(got, ref, 1e-5, "float32 heatmaps")


def test_default_batches_several_classes_and_falls_back_to_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    model = small_cnn().double().eval()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    calls: list[bool] = []
    real = heatmap_mod._relevance_grads

    def spy(*args, **kwargs):
        calls.append(args[4] if len(args) > 4 else kwargs.get("batched", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(heatmap_mod, "_relevance_grads", spy)
    _, ref = lrp_heatmaps(model, x, torch.tensor([[0, 1, 2], [2, 1, 0]]), batch_classes=False)
    lrp_heatmaps(model, x, torch.tensor([[0], [1]]))
    lrp_heatmaps(model, x, torch.tensor([[0, 1, 2], [2, 1, 0]]))
    side = int((heatmap_mod.BATCH_MAX_PIXELS / 2) ** 0.5) + 1  # 2 images above the size limit of batching
    lrp_heatmaps(model, torch.rand(2, 1, side, side, dtype=torch.float64), torch.tensor([[0, 1], [2, 1]]))
    assert calls == [False, False, True, False]  # one class: the plain pass; several: batched; large input: loop

    def broken_vmap(*args, **kwargs):
        raise RuntimeError("no batching rule")

    monkeypatch.setattr(torch.func, "vmap", broken_vmap)
    with pytest.warns(RuntimeWarning, match="batched relevance pass failed"):
        _, heat = lrp_heatmaps(model, x, torch.tensor([[0, 1, 2], [2, 1, 0]]))
    torch.testing.assert_close(heat, ref, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="no batching rule"):
        lrp_heatmaps(model, x, torch.tensor([[0, 1, 2], [2, 1, 0]]), batch_classes=True)
