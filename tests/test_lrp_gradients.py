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


def _assert_weight_gradients_match_finite_differences(model: nn.Sequential, n_classes: int,
                                                      compile: bool = False) -> None:
    torch.manual_seed(1)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1
    targets = torch.tensor([[0, 1], [2, 0], [1, 2]])[:, :n_classes]
    cfg = LRPConfig(epsilon=0.01, compile=compile)

    def loss() -> torch.Tensor:
        _, heat = lrp_heatmaps(model, x, targets, config=cfg, create_graph=True)
        return heatmap_loss(heat, mask)

    for conv in (m for m in model if isinstance(m, nn.Conv2d)):
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


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("n_classes", [1, 2])
def test_heatmap_loss_gradient_matches_finite_differences(train: bool, n_classes: int) -> None:
    _assert_weight_gradients_match_finite_differences(tiny_cnn().train(train), n_classes)


def test_heatmap_loss_gradient_matches_finite_differences_without_batch_norm() -> None:
    """Convolutions with a bias and no BatchNorm: the relevance step at the convolution's own output."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    ).double()
    _assert_weight_gradients_match_finite_differences(model, 1)


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


# ---------------------------------------------------------------- detach: none | biases


def _manual_mlp_heatmap(mlp: nn.Sequential, x: torch.Tensor, k: int, eps: float, detach: bool) -> torch.Tensor:
    """LRP-ε of class k through Flatten → Linear → ReLU → Linear written out by hand; ``detach``: each layer's own
    bias is a constant in its denominator (the original ISNet LRP block)."""
    _, l1, _, l2 = mlp
    a0 = x.flatten(1)
    stab = lambda v: v + eps * ((v >= 0).to(v.dtype) * 2 - 1)  # noqa: E731
    b1 = l1.bias.detach() if detach else l1.bias
    b2 = l2.bias.detach() if detach else l2.bias
    z1 = a0 @ l1.weight.T + l1.bias
    h = torch.relu(z1)
    y = h @ l2.weight.T + l2.bias
    r_out = F.one_hot(torch.full((x.shape[0],), k), y.shape[1]).to(y.dtype) * y
    c2 = r_out / stab(h @ l2.weight.T + b2)
    g_z1 = (c2 @ l2.weight) * (z1 > 0).to(z1.dtype)
    z1_rule = a0 @ l1.weight.T + b1
    c1 = g_z1 * z1_rule / stab(z1_rule)
    return (a0 * (c1 @ l1.weight)).reshape(x.shape).sum(1)


@pytest.mark.parametrize("detach", [False, True])
def test_detach_biases_matches_the_hand_written_rule(detach: bool) -> None:
    """Same heatmap values either way; with detach_biases the weight/bias gradient of a heatmap loss is that of
    the rule with each layer's bias held constant in its own denominator (and differs from the exact one)."""
    torch.manual_seed(3)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    cfg = LRPConfig(epsilon=0.05, first_rule="epsilon", detach_biases=detach)
    _, heat = lrp_heatmaps(mlp, x, torch.full((4, 1), 2), config=cfg, create_graph=True)
    manual = _manual_mlp_heatmap(mlp, x, 2, 0.05, detach)
    torch.testing.assert_close(heat[:, 0], manual)
    got = torch.autograd.grad((heat ** 2).sum(), list(mlp.parameters()))
    want = torch.autograd.grad((manual ** 2).sum(), list(mlp.parameters()))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    other = torch.autograd.grad((_manual_mlp_heatmap(mlp, x, 2, 0.05, not detach) ** 2).sum(), list(mlp.parameters()))
    assert not torch.allclose(got[1], other[1])  # the first layer's bias gradient depends on the choice


@pytest.mark.parametrize("train", [False, True])
def test_detach_biases_keeps_values_and_cuts_batch_statistics(train: bool) -> None:
    """Conv + BN: heatmaps and logits are equal under both settings; the heatmap-loss gradients differ (BN shift
    and batch statistics are constants in the relevance graph) and the CE gradient is untouched."""
    model = tiny_cnn().train(train)
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    outs = {}
    for detach in (False, True):
        m = copy.deepcopy(model)
        logits, heat = lrp_heatmaps(m, x, torch.tensor([[0], [1], [2]]),
                                    config=LRPConfig(detach_biases=detach), create_graph=True)
        params = list(m.parameters())
        outs[detach] = (logits, heat, torch.autograd.grad(heat.square().sum(), params, retain_graph=True),
                        torch.autograd.grad(F.cross_entropy(logits, torch.tensor([0, 1, 2])), params))
    torch.testing.assert_close(outs[True][0], outs[False][0])
    torch.testing.assert_close(outs[True][1], outs[False][1])
    for g_t, g_f in zip(outs[True][3], outs[False][3]):
        torch.testing.assert_close(g_t, g_f)
    bias_grads = [(t, f) for (name, _), t, f in zip(model.named_parameters(), outs[True][2], outs[False][2])
                  if name.endswith("bias")]
    assert any(not torch.allclose(t, f) for t, f in bias_grads)
    assert all(torch.isfinite(t).all() for t in outs[True][2])
