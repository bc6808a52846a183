"""Conservation on every supported architecture, the rule options, the target forms, errors, no mutation."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from isnet.lrp import LRPConfig, lrp_heatmaps, supports_model


def one_channel(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=3)
    if name.startswith("resnet"):
        old = model.conv1
        model.conv1 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    elif name.startswith("densenet"):
        old = model.features.conv0
        model.features.conv0 = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
    else:
        old = model.features[0]
        model.features[0] = nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding)
    return model


def small_vgg() -> nn.Module:
    """vgg16_bn with a narrow classifier (the 25088x4096 one only costs memory here)."""
    model = one_channel("vgg16_bn")
    model.avgpool = nn.AdaptiveAvgPool2d(2)
    model.classifier = nn.Sequential(
        nn.Linear(2048, 32), nn.ReLU(True), nn.Dropout(), nn.Linear(32, 32), nn.ReLU(True), nn.Dropout(),
        nn.Linear(32, 3),
    )
    return model


def plain_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()), nn.AvgPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 3),
    )


BUILDERS = {
    "resnet18": lambda: one_channel("resnet18"),
    "resnet50": lambda: one_channel("resnet50"),
    "densenet121": lambda: one_channel("densenet121"),
    "vgg16_bn": small_vgg,
    "sequential": plain_cnn,
}


def zero_biases(model: nn.Module) -> nn.Module:
    """No bias anywhere (BN: running_mean = β = 0), so no relevance is absorbed."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
                m.bias.zero_()
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.zero_()
    return model


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("first_rule", ["zb", "epsilon"])
def test_conservation(name: str, first_rule: str) -> None:
    model = zero_biases(BUILDERS[name]()).double().eval()
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    targets = torch.tensor([[0, 2], [1, 0]])
    logits, heat = lrp_heatmaps(model, x, targets, config=LRPConfig(epsilon=1e-9, first_rule=first_rule))
    explained = logits.gather(1, targets)
    torch.testing.assert_close(heat.sum((2, 3)), explained, rtol=1e-4, atol=1e-10)


def test_real_vgg16_bn_runs() -> None:
    model = one_channel("vgg16_bn").eval()
    x = torch.rand(1, 1, 32, 32)
    logits, heat = lrp_heatmaps(model, x, torch.tensor([[1]]))
    assert heat.shape == (1, 1, 32, 32) and torch.isfinite(heat).all()
    assert torch.equal(logits, model(x))


@pytest.mark.parametrize("body_rule", ["epsilon", "zplus", "alpha2beta1", "epsilon_zplus"])
@pytest.mark.parametrize("first_rule", ["zb", "epsilon", "flat"])
@pytest.mark.parametrize("name", ["resnet18", "densenet121", "sequential"])
def test_rules_give_finite_heatmaps(name: str, body_rule: str, first_rule: str) -> None:
    model = BUILDERS[name]().train(name == "sequential")
    x = torch.rand(2, 1, 32, 32)
    cfg = LRPConfig(body_rule=body_rule, first_rule=first_rule, low=-0.5, high=1.0)
    logits, heat = lrp_heatmaps(model, x - 0.5, torch.tensor([[0], [1]]), config=cfg, create_graph=True)
    assert heat.shape == (2, 1, 32, 32)
    assert torch.isfinite(heat).all() and heat.abs().sum() > 0
    heat.abs().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_zplus_conserves_without_biases() -> None:
    model = zero_biases(plain_cnn()).double().eval()
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    for rule in ("zplus", "alpha2beta1"):
        logits, heat = lrp_heatmaps(model, x, torch.tensor([[0], [1]]), config=LRPConfig(1e-9, rule))
        torch.testing.assert_close(heat.sum((1, 2, 3)), logits[[0, 1], [0, 1]], rtol=1e-4, atol=1e-10)


def test_k_classes_equal_k_single_calls_and_target_forms() -> None:
    model = BUILDERS["resnet18"]().double().eval()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[0, 1, 2], [2, 1, 0], [1, 1, 0]])
    logits, heat = lrp_heatmaps(model, x, targets)
    assert heat.shape == (3, 3, 32, 32)
    for k in range(3):
        _, single = lrp_heatmaps(model, x, targets[:, k : k + 1])
        torch.testing.assert_close(heat[:, k : k + 1], single, rtol=1e-10, atol=1e-12)

    relevance = torch.nn.functional.one_hot(targets, 3).double() * logits[:, None, :].detach()
    _, from_float = lrp_heatmaps(model, x, relevance)
    torch.testing.assert_close(from_float, heat, rtol=1e-10, atol=1e-12)

    _, from_callable = lrp_heatmaps(model, x, lambda out: out.argmax(1, keepdim=True))
    top = logits.argmax(1)
    _, top_heat = lrp_heatmaps(model, x, top[:, None])
    torch.testing.assert_close(from_callable, top_heat)


def test_unsupported_models_raise_type_error() -> None:
    bad = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GELU(), nn.Flatten(), nn.LazyLinear(3))
    assert not supports_model(bad)
    with pytest.raises(TypeError, match="GELU"):
        lrp_heatmaps(bad, torch.rand(1, 1, 8, 8), torch.tensor([[0]]))
    with pytest.raises(TypeError, match="Transformer"):
        lrp_heatmaps(nn.Transformer(d_model=8, nhead=2), torch.rand(1, 1, 8, 8), torch.tensor([[0]]))
    assert all(supports_model(build()) for build in BUILDERS.values())


@pytest.mark.parametrize("train", [False, True])
def test_model_is_not_modified(train: bool) -> None:
    model = BUILDERS["resnet18"]().train(train)
    before = copy.deepcopy(model.state_dict())
    lrp_heatmaps(model, torch.rand(2, 1, 32, 32), torch.tensor([[0], [1]]), create_graph=True)
    for key, value in model.state_dict().items():
        if train and ("running_" in key or "num_batches" in key):
            continue
        assert torch.equal(value, before[key]), key
    assert all(not m.training for m in model.modules()) if not train else model.training
