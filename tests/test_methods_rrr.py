"""RRR: λ·‖(1−m)·∂Σlog p/∂x‖² is zero when the input gradient lives only inside the mask."""

import pytest
import torch

from isnet.config import load_config
from isnet.errors import ConfigError
from isnet.methods import rrr_penalty


def _linear_model(weight_support: torch.Tensor) -> torch.nn.Module:
    torch.manual_seed(0)
    lin = torch.nn.Linear(weight_support.numel(), 3)
    with torch.no_grad():
        lin.weight *= weight_support.flatten()
    return torch.nn.Sequential(torch.nn.Flatten(), lin)


def test_penalty_zero_when_gradient_inside_mask_positive_outside():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    inside = _linear_model(mask)
    pen = rrr_penalty(inside(x), x, mask.expand(4, -1, -1, -1))
    assert float(pen) == 0.0
    everywhere = _linear_model(torch.ones(1, 1, 8, 8))
    pen = rrr_penalty(everywhere(x), x, mask.expand(4, -1, -1, -1))
    assert float(pen) > 0
    pen.backward()  # differentiable w.r.t. the weights (double backward)
    assert everywhere[1].weight.grad.abs().sum() > 0


def test_penalty_matches_hand_formula():
    mask = torch.zeros(2, 1, 4, 4)
    mask[..., :2, :] = 1
    model = _linear_model(torch.ones(1, 1, 4, 4))
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    logp = torch.log_softmax(model(x), 1).sum()
    (g,) = torch.autograd.grad(logp, x)
    want = (((1 - mask) * g) ** 2).sum((1, 2, 3)).mean()
    assert float(rrr_penalty(model(x), x, mask)) == pytest.approx(float(want), rel=1e-5)


def test_method_combinations_validated():
    cfg = load_config(None, ["methods=[isnet,sgdrop,rrr]", "method.rrr.lam=3"])
    assert cfg.method.rrr.lam == 3
    with pytest.raises(ConfigError, match="standard"):
        load_config(None, ["methods=[standard,rrr]"])
    with pytest.raises(ConfigError, match="twice"):
        load_config(None, ["methods=[sgdrop,sgdrop]"])
