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


def test_penalty_does_not_depend_on_the_batch_size_and_batch_mean_scales_as_one_over_b_squared():
    """gradient: sample (default): a batch of the same image repeated has the penalty of the image alone;
    gradient: batch_mean (ISNet's published baseline): the penalty falls as 1/B²."""
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 2:6] = 1
    model = _linear_model(torch.ones(1, 1, 8, 8))
    x1 = torch.rand(1, 1, 8, 8)
    pens = {}
    for b in (1, 4, 16):
        x = x1.expand(b, -1, -1, -1).clone().requires_grad_(True)
        m = mask.expand(b, -1, -1, -1)
        pens[b] = (float(rrr_penalty(model(x), x, m)), float(rrr_penalty(model(x), x, m, gradient="batch_mean")))
    for b in (4, 16):
        assert pens[b][0] == pytest.approx(pens[1][0], rel=1e-5)
        assert pens[b][1] == pytest.approx(pens[1][1] / b**2, rel=1e-5)


def test_default_lambda_and_the_term_reaches_the_combined_loss():
    from isnet.methods import RRRMethod
    from isnet.methods.base import StepOutput

    cfg = load_config(None, ["methods=[rrr]"])
    assert cfg.method.rrr.lam == 10.0 and cfg.method.rrr.gradient == "sample"
    m = RRRMethod(cfg)
    mask = torch.zeros(2, 1, 4, 4)
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    logits = _linear_model(torch.ones(1, 1, 4, 4))(x)
    part = m.loss(torch.tensor(1.0), StepOutput(logits=logits), {"image": x, "mask": mask}, None)
    assert part.ce_weight == 1.0
    assert float(part.terms["rrr"]) == pytest.approx(10.0 * part.metrics["rrr_penalty"], rel=1e-6)
