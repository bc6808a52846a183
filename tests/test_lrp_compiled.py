"""``lrp.compile``: the ε relevance steps' arithmetic fused by torch.compile gives the heatmaps and weight gradients
of the eager engine, on every node that uses it (ε at a BN folded into a convolution, ε at a concatenation's BN,
ε at a convolution without BN, ε at a residual sum), one class per pass and batched classes (vmap, eager there).
In float64, so that a wrong formula cannot hide behind float32 rounding (a BN scale's gradient is a sum of large
terms that cancel: 1e-3 from terms of 1e-1)."""
import copy

import pytest
import torch
from torch import nn

from isnet.lrp import LRPConfig, lrp_heatmaps
from isnet.lrp import kernels

from test_lrp_gradients import _assert_weight_gradients_match_finite_differences, small_densenet, small_resnet, tiny_cnn


def no_bn_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3)).train()


def _heat_and_grads(model: nn.Module, x: torch.Tensor, targets: torch.Tensor, compile: bool, batched: bool):
    model = copy.deepcopy(model)
    torch.manual_seed(3)  # the same dropout masks in both runs
    _, heat = lrp_heatmaps(model, x, targets, config=LRPConfig(compile=compile), create_graph=True,
                           batch_classes=batched)
    mask = torch.zeros_like(heat)
    mask[..., 8:24, 8:24] = 1
    (heat * (1 - mask)).abs().sum().backward()
    return heat.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("build", [small_densenet, small_resnet, no_bn_cnn])
@pytest.mark.parametrize("classes", [[[0]] * 4, [[0, 2]] * 4])
def test_compiled_relevance_steps_match_the_eager_engine(build, classes) -> None:
    model = build().double()
    x = torch.rand(4, 1, 32, 32, dtype=torch.float64)
    targets = torch.tensor(classes)
    for batched in ([False, True] if targets.shape[1] > 1 else [False]):
        before = dict(kernels.calls)
        heat, grads = _heat_and_grads(model, x, targets, False, batched)
        assert kernels.calls == before  # off by default
        heat_c, grads_c = _heat_and_grads(model, x, targets, True, batched)
        assert kernels.calls["scaled"] > before.get("scaled", 0) and kernels.calls["grads"] > before.get("grads", 0)
        torch.testing.assert_close(heat_c, heat, rtol=1e-9, atol=1e-12 * heat.abs().max().item())
        assert grads_c.keys() == grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(grads_c[name], g, rtol=1e-9, atol=1e-12 * g.abs().max().item(), msg=name)
    assert not kernels.requested()  # the switch is scoped to the call


def test_compiled_heatmap_loss_gradient_matches_finite_differences() -> None:
    """Float64: the compiled ε-step gradients are exact, not merely close to the eager ones."""
    _assert_weight_gradients_match_finite_differences(tiny_cnn().train(True), 1, compile=True)
