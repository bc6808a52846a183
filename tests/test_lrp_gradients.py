"""The heatmap is a differentiable function of the weights (finite differences), in eval- and train-mode BN,
and one lrp_heatmaps call can replace the trainer's forward pass (logits, BN statistics, CE gradients)."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from isnet.lrp import LRPConfig, lrp_heatmaps

from conftest import randomize_bn


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    m = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    ).double()
    return randomize_bn(m)


def heatmap_loss(heat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Background energy plus a GWRP-like ranked pooling of the background magnitude."""
    bg = (heat * (1 - mask)).flatten(2)
    ranked = bg.abs().sort(dim=-1, descending=True).values
    w = 0.9 ** torch.arange(ranked.shape[-1], dtype=heat.dtype)
    return (bg ** 2).sum() + ((ranked * w).sum(-1) / w.sum()).sum()


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("n_classes", [1, 2])
def test_heatmap_loss_gradient_matches_finite_differences(train: bool, n_classes: int) -> None:
    model = tiny_cnn().train(train)
    torch.manual_seed(1)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1
    targets = torch.tensor([[0, 1], [2, 0], [1, 2]])[:, :n_classes]
    cfg = LRPConfig(epsilon=0.01)

    def loss() -> torch.Tensor:
        _, heat = lrp_heatmaps(model, x, targets, config=cfg, create_graph=True)
        return heatmap_loss(heat, mask)

    for conv in (model[0], model[3]):
        w = conv.weight
        (grad,) = torch.autograd.grad(loss(), w)
        fd = torch.zeros_like(w)
        h = 1e-6
        with torch.no_grad():
            for idx in range(w.numel()):
                orig = w.view(-1)[idx].item()
                w.view(-1)[idx] = orig + h
                up = loss().item()
                w.view(-1)[idx] = orig - h
                down = loss().item()
                w.view(-1)[idx] = orig
                fd.view(-1)[idx] = (up - down) / (2 * h)
        torch.testing.assert_close(grad, fd, rtol=1e-4, atol=1e-7 * fd.abs().max().item())


def small_resnet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.resnet18(weights=None, num_classes=3)
    m.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    m.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(512, 3))
    return m.train()


def small_densenet() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    m = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=8, drop_rate=0.2,
                                    num_classes=3)
    m.features.conv0 = nn.Conv2d(1, 8, 7, 2, 3, bias=False)
    return m.train()


@pytest.mark.parametrize("build", [small_resnet, small_densenet])
def test_train_mode_call_replaces_the_forward_pass(build) -> None:
    model = build()
    ref = copy.deepcopy(model)
    x = torch.rand(4, 1, 32, 32)
    y = torch.tensor([0, 1, 2, 1])

    torch.manual_seed(5)
    logits, heat = lrp_heatmaps(model, x, torch.tensor([[0, 1, 2]] * 4), create_graph=True)
    torch.manual_seed(5)
    ref_logits = ref(x)
    assert torch.equal(logits, ref_logits)  # same values, same dropout mask
    for (name, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name  # running statistics updated once, exactly like model(x)

    F.cross_entropy(logits, y).backward(retain_graph=True)
    F.cross_entropy(ref_logits, y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)

    model.zero_grad()
    heat.abs().sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert first_conv.weight.grad.abs().sum() > 0


def test_dropout_mask_is_shared_by_logits_and_heatmap() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5),
        nn.Linear(4 * 8 * 8, 3, bias=False),
    ).double().train()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    logits, heat = lrp_heatmaps(model, x, torch.tensor([[0], [1]]), config=LRPConfig(epsilon=1e-12))
    explained = logits[[0, 1], [0, 1]]
    torch.testing.assert_close(heat.sum((1, 2, 3)), explained, rtol=1e-8, atol=1e-12)


def test_train_mode_relevance_does_not_leak_between_samples() -> None:
    """Batch statistics are constants for the relevance pass: relevance given to sample 0 only never reaches
    sample 1's pixels (an ordinary train-mode BN backward would route it there through the statistics)."""
    model = tiny_cnn().train()
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64)

    def only_first(logits: torch.Tensor) -> torch.Tensor:
        rel = torch.zeros(4, 1, 3, dtype=logits.dtype)
        rel[0, 0, 0] = logits[0, 0]
        return rel

    for rule in ("epsilon", "zplus", "alpha2beta1"):
        _, heat = lrp_heatmaps(model, x, only_first, config=LRPConfig(body_rule=rule))
        assert heat[0].abs().sum() > 0
        assert torch.equal(heat[1:], torch.zeros_like(heat[1:])), rule
