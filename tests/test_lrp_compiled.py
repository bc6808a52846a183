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


_slow = pytest.mark.slow  # each new case compiles kernels again (new ranks, shapes): 5-25 s apiece on 2 cores


@pytest.mark.parametrize("build,classes", [
    # DenseNet, one class: every node that uses the kernels (ε at a concatenation's BN, at a BN folded into a
    # convolution, at a convolution without BN, at the average pooling)
    (small_densenet, [[0]] * 4),
    pytest.param(small_densenet, [[0, 2]] * 4, marks=_slow),  # per class and batched (vmap)
    pytest.param(small_resnet, [[0]] * 4, marks=_slow),  # residual sums
    pytest.param(small_resnet, [[0, 2]] * 4, marks=_slow),
    pytest.param(no_bn_cnn, [[0, 2]] * 4, marks=_slow),
])
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


def test_the_run_config_switches_it_for_every_heatmap_of_the_run() -> None:
    """``lrp.compile`` is part of the run's lrp section: off by default, and ISNet's training heatmaps use it."""
    from isnet.config.schema import TrainConfig
    from isnet.lrp import run_lrp_config
    from isnet.methods import build_methods

    assert run_lrp_config(TrainConfig()).compile is False
    cfg = TrainConfig.model_validate({"lrp": {"compile": True}, "methods": ["isnet"]})
    assert run_lrp_config(cfg).compile is True
    (isnet,) = build_methods(["isnet"], cfg)
    assert isnet.lrp.compile is True
    with pytest.raises(ValueError, match="compile"):
        TrainConfig.model_validate({"lrp": {"compile": "sometimes"}})


def test_a_failing_compiler_falls_back_to_the_same_arithmetic_with_one_warning(monkeypatch) -> None:
    """No C++ compiler (or no Triton on a GPU): one warning, then the uncompiled kernels, same heatmaps."""
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(kernels, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken_compile)
    model = small_densenet().double()
    x = torch.rand(2, 1, 32, 32, dtype=torch.float64)
    targets = torch.tensor([[1], [2]])
    heat, grads = _heat_and_grads(model, x, targets, False, False)
    with pytest.warns(RuntimeWarning, match="C\\+\\+ compiler") as record:
        heat_c, grads_c = _heat_and_grads(model, x, targets, True, False)
    assert len([w for w in record if "lrp.compile" in str(w.message)]) == 1
    torch.testing.assert_close(heat_c, heat, rtol=1e-9, atol=1e-12 * heat.abs().max().item())
    for name, g in grads.items():
        torch.testing.assert_close(grads_c[name], g, rtol=1e-9, atol=1e-12 * g.abs().max().item(), msg=name)
