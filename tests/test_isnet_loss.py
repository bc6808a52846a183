"""Tests for the ISNet heatmap loss, GWRP, explained-class selection and C1/C2 tuning."""

from __future__ import annotations

import math

import pytest
import torch

from isnet.methods.gwrp import gwrp
from isnet.methods.isnet_loss import (
    ISNetLossConfig,
    isnet_heatmap_loss,
    isnet_total_loss,
    image_relevance_totals,
    lung_relevance_totals,
    tune_foreground_band,
)
from isnet.methods.isnet_targets import explain_targets

H = W = 16


def _lung_mask(batch: int = 1) -> torch.Tensor:
    """Two rectangular 'lungs' in the middle of a 16x16 image, [B, 1, H, W]."""
    m = torch.zeros(batch, 1, H, W)
    m[:, :, 3:13, 2:7] = 1.0
    m[:, :, 3:13, 9:14] = 1.0
    return m


def _lung_only_heatmap(batch: int = 1, classes: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(batch, classes, H, W, generator=g)
    return r * _lung_mask(batch)


def _cfg(**kw) -> ISNetLossConfig:
    base = dict(C1=1.0, C2=100.0)
    base.update(kw)
    return ISNetLossConfig(**base)


# ---------------------------------------------------------------- GWRP


def test_gwrp_hand_computed():
    values = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 4.0]])
    # sorted: [3, 2, 1] and [4, 0, 0]; weights 1, 0.5, 0.25 over 1.75
    expected = torch.tensor([(3 + 1.0 + 0.25) / 1.75, 4 / 1.75])
    torch.testing.assert_close(gwrp(values, 0.5), expected)


def test_gwrp_decay_one_is_mean_and_zero_is_max():
    g = torch.Generator().manual_seed(1)
    values = torch.rand(4, 37, generator=g)
    torch.testing.assert_close(gwrp(values, 1.0), values.mean(dim=1))
    torch.testing.assert_close(gwrp(values, 0.0), values.max(dim=1).values)


def test_gwrp_long_input_no_underflow_problem():
    values = torch.zeros(2, 224 * 224)
    values[0, 12345] = 5.0  # a single hot spot somewhere
    out = gwrp(values, 0.9)
    assert torch.isfinite(out).all()
    # Rank-0 weight is 1 / sum(0.9**i) = 0.1 for a long vector.
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0]))


def test_gwrp_gradient_goes_to_ranked_positions():
    values = torch.tensor([[1.0, 3.0, 2.0]], requires_grad=True)
    gwrp(values, 0.5).sum().backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.25, 1.0, 0.5]]) / 1.75)


def test_gwrp_rejects_bad_input():
    with pytest.raises(ValueError, match="decay"):
        gwrp(torch.rand(2, 3), 1.5)
    with pytest.raises(ValueError, match=r"\[N, M\]"):
        gwrp(torch.rand(3), 0.9)


# ---------------------------------------------------------------- background term


def test_background_term_zero_when_relevance_inside_lungs():
    out = isnet_heatmap_loss(_lung_only_heatmap(2, 3), _lung_mask(2), _cfg())
    assert out["L_bg"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["bg_share"].item() == pytest.approx(0.0, abs=1e-7)


def test_background_term_grows_with_hot_spots():
    base = _lung_only_heatmap()
    mask = _lung_mask()
    losses = []
    for strength in (0.0, 1.0, 5.0, 25.0):
        r = base.clone()
        r[0, 0, 0, 0] = strength
        losses.append(isnet_heatmap_loss(r, mask, _cfg())["L_bg"].item())
    assert losses[0] == pytest.approx(0.0, abs=1e-7)
    assert all(b > a for a, b in zip(losses, losses[1:])), losses


def test_concentrated_hot_spot_beats_diffuse_background():
    mask = _lung_mask()
    bg_pixels = int((1 - mask).sum().item())
    lung = mask.clone()  # |R| = 1 in the lungs
    total_bg = 20.0
    spot = lung.clone()
    spot[0, 0, 0, 0] = total_bg
    diffuse = lung + (1 - mask) * (total_bg / bg_pixels)
    assert spot.abs().sum().item() == pytest.approx(diffuse.abs().sum().item(), rel=1e-6)
    l_spot = isnet_heatmap_loss(spot, mask, _cfg())["L_bg"]
    l_diffuse = isnet_heatmap_loss(diffuse, mask, _cfg())["L_bg"]
    assert l_spot.item() > 2 * l_diffuse.item()
    # With decay 1 (plain mean) the two are indistinguishable: GWRP is what separates them.
    l_spot_mean = isnet_heatmap_loss(spot, mask, _cfg(d=1.0))["L_bg"]
    l_diffuse_mean = isnet_heatmap_loss(diffuse, mask, _cfg(d=1.0))["L_bg"]
    torch.testing.assert_close(l_spot_mean, l_diffuse_mean)


def test_background_term_hand_computed():
    mask = _lung_mask()
    r = mask.clone() * 2.0  # lung mean |R| = 2
    r[0, 0, 0, 0] = -6.0  # normalised background value 3, the only nonzero
    cfg = _cfg(d=0.0, E=1.0)  # max pooling
    expected = math.log((3.0 + 1.0) / 1.0)
    assert isnet_heatmap_loss(r, mask, cfg)["L_bg"].item() == pytest.approx(expected, rel=1e-5)


def test_background_term_scale_invariant():
    g = torch.Generator().manual_seed(3)
    r = torch.randn(2, 3, H, W, generator=g)
    mask = _lung_mask(2)
    cfg = _cfg(eps_norm=1e-12)
    l1 = isnet_heatmap_loss(r, mask, cfg)["L_bg"]
    l2 = isnet_heatmap_loss(r * 37.5, mask, cfg)["L_bg"]
    l3 = isnet_heatmap_loss(r * 1e-3, mask, cfg)["L_bg"]
    assert l1.item() > 0.1
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=0)
    torch.testing.assert_close(l3, l1, rtol=1e-5, atol=0)


def test_mask_resized_and_3d_accepted():
    r = _lung_only_heatmap(2, 2)
    small = _lung_mask(2)
    big = torch.nn.functional.interpolate(small, scale_factor=2, mode="nearest")
    ref = isnet_heatmap_loss(r, small, _cfg())
    for m in (big, small[:, 0], big[:, 0]):
        out = isnet_heatmap_loss(r, m, _cfg())
        torch.testing.assert_close(out["L_hm"], ref["L_hm"])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="heatmaps"):
        isnet_heatmap_loss(torch.rand(2, H, W), _lung_mask(2), _cfg())
    with pytest.raises(ValueError, match="batch"):
        isnet_heatmap_loss(torch.rand(2, 1, H, W), _lung_mask(3), _cfg())
    with pytest.raises(ValueError, match="single channel"):
        isnet_heatmap_loss(torch.rand(2, 1, H, W), torch.ones(2, 2, H, W), _cfg())


# ---------------------------------------------------------------- foreground term


@pytest.mark.parametrize("lung_value,inside", [(0.01, False), (1.0, True), (3.0, True), (100.0, False)])
def test_foreground_band(lung_value, inside):
    mask = _lung_mask()
    area = mask.sum().item()  # 100 lung pixels
    cfg = _cfg(C1=50.0, C2=500.0, A=0.0)
    r = mask * lung_value
    out = isnet_heatmap_loss(r, mask, cfg)
    total = lung_value * area
    torch.testing.assert_close(out["fg_total"], torch.tensor(total))
    if inside:
        assert out["L_fg"].item() == 0.0
    else:
        # both sides scaled by C1, as the reference
        expected = ((50.0 - total) / 50.0) ** 2 if total < 50 else ((total - 500.0) / 50.0) ** 2
        assert out["L_fg"].item() == pytest.approx(expected, rel=1e-5)
        assert out["L_fg"].item() > 0
        torch.testing.assert_close(out["L_hm"], 3.0 * out["L_fg"])


def test_foreground_band_required_unless_b_zero():
    r, mask = _lung_only_heatmap(), _lung_mask()
    with pytest.raises(ValueError, match="C1/C2"):
        isnet_heatmap_loss(r, mask, ISNetLossConfig())
    with pytest.raises(ValueError, match="C1/C2"):
        isnet_heatmap_loss(r, mask, ISNetLossConfig(C1=1.0))
    out = isnet_heatmap_loss(r, mask, ISNetLossConfig(B=0.0))
    assert out["L_fg"].item() == 0.0
    torch.testing.assert_close(out["L_hm"], out["L_bg"])


def test_config_validation():
    with pytest.raises(ValueError, match="variant"):
        ISNetLossConfig(variant="fast")
    with pytest.raises(ValueError, match="C1 <= C2"):
        ISNetLossConfig(C1=5.0, C2=1.0)
    with pytest.raises(ValueError, match="P"):
        ISNetLossConfig(P=1.5)
    cfg = ISNetLossConfig()
    assert (cfg.P, cfg.d, cfg.E, cfg.A, cfg.B, cfg.C1, cfg.C2) == (0.7, 0.9, 1.0, 1.0, 3.0, None, None)
    assert (cfg.variant, cfg.eps_norm, cfg.mask_threshold) == ("original", 1e-6, 0.5)


# ---------------------------------------------------------------- gradients


def test_gradcheck_heatmap_loss_float64():
    g = torch.Generator().manual_seed(5)
    h = w = 6
    mask = torch.zeros(2, 1, h, w, dtype=torch.float64)
    mask[:, :, 1:5, 1:3] = 1.0
    # Values bounded away from 0 (|.| kink) and distinct (sort ties) so finite differences are valid.
    mag = 0.5 + torch.randperm(2 * 2 * h * w, generator=g).to(torch.float64).reshape(2, 2, h, w) / 40.0
    sign = torch.where(torch.rand(2, 2, h, w, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    r = (mag * sign).requires_grad_(True)
    # Band chosen so that one class is below C1 and one above C2 -> both penalties active.
    totals = lung_relevance_totals(r.detach(), mask)
    cfg = ISNetLossConfig(C1=float(totals.median()) + 0.1, C2=float(totals.median()) + 0.2, d=0.8)
    out = isnet_heatmap_loss(r, mask, cfg)
    assert out["L_fg"].item() > 0 and out["L_bg"].item() > 0
    assert torch.autograd.gradcheck(lambda x: isnet_heatmap_loss(x, mask, cfg)["L_hm"], (r,), eps=1e-6, atol=1e-5)


def test_gradients_finite_and_reach_background():
    r = _lung_only_heatmap(2, 3).clone()
    r[:, :, 0, 0] = 4.0
    r.requires_grad_(True)
    out = isnet_heatmap_loss(r, _lung_mask(2), _cfg())
    out["L_hm"].backward()
    assert torch.isfinite(r.grad).all()
    # Descending the loss shrinks the background hot spot.
    assert (r.grad[:, :, 0, 0] > 0).all()
    assert not out["bg_share"].requires_grad and not out["fg_total"].requires_grad


def test_half_precision_heatmaps_computed_in_float32():
    r = (_lung_only_heatmap(1, 2) * 300.0).half()
    r[0, 0, 0, 0] = 1000.0
    out = isnet_heatmap_loss(r, _lung_mask(), _cfg(C1=1.0, C2=1e6))
    assert out["L_hm"].dtype == torch.float32 and torch.isfinite(out["L_hm"])


# ---------------------------------------------------------------- total loss


def test_total_loss_mixing():
    ce = torch.tensor(2.0)
    terms = {"L_hm": torch.tensor(10.0)}
    assert isnet_total_loss(ce, terms, ISNetLossConfig()).item() == pytest.approx(0.3 * 2 + 0.7 * 10)
    assert isnet_total_loss(ce, terms, ISNetLossConfig(P=0.0)).item() == pytest.approx(2.0)
    assert isnet_total_loss(ce, torch.tensor(10.0), ISNetLossConfig(P=1.0)).item() == pytest.approx(10.0)


def test_foreground_upper_scale_option():
    """fg_upper_scale="C2" (our earlier choice) divides only the upper side by C2; the lower side keeps C1."""
    mask = _lung_mask()
    r = mask * 100.0  # F = 10000
    ref = isnet_heatmap_loss(r, mask, _cfg(C1=50.0, C2=500.0, A=0.0))["L_fg"].item()
    ours = isnet_heatmap_loss(r, mask, _cfg(C1=50.0, C2=500.0, A=0.0, fg_upper_scale="C2"))["L_fg"].item()
    assert ref == pytest.approx((9500.0 / 50.0) ** 2) and ours == pytest.approx((9500.0 / 500.0) ** 2)
    low = mask * 0.1  # F = 10 < C1: the same under both
    assert isnet_heatmap_loss(low, mask, _cfg(C1=50.0, C2=500.0, A=0.0, fg_upper_scale="C2"))["L_fg"].item() == \
        pytest.approx((40.0 / 50.0) ** 2)
    with pytest.raises(ValueError, match="fg_upper_scale"):
        _cfg(fg_upper_scale="C3")


def _lung_total(total: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A heatmap whose lung |R| sums to ``total`` (spread evenly), and its mask."""
    mask = _lung_mask()
    return mask * (total / mask.sum()), mask


@pytest.mark.parametrize("total, l2, hybrid", [
    (1.0, 0.25, 0.25),                  # below C1 = 2: ((C1 - F)/C1)^2 under both
    (11.0, 0.25, 0.25),                 # inside (C2, C1 + C2]: ((F - C2)/C1)^2 under both
    (12.0, 1.0, 1.0),                   # at C1 + C2 both are 1: the two pieces meet
    (20.0, 25.0, 9.0),                  # beyond: l2 ((20 - 10)/2)^2, hybrid 1 + (20 - 12)
])
def test_foreground_hybrid_upper_side_hand_computed(total, l2, hybrid):
    """fg_upper_loss="hybrid" (Faster ISNet): the square up to C1 + C2, then 1 + (F - C1 - C2)."""
    r, mask = _lung_total(total)
    cfg = dict(C1=2.0, C2=10.0, A=0.0)
    assert isnet_heatmap_loss(r, mask, _cfg(**cfg))["L_fg"].item() == pytest.approx(l2, rel=1e-5)
    assert isnet_heatmap_loss(r, mask, _cfg(fg_upper_loss="hybrid", **cfg))["L_fg"].item() == \
        pytest.approx(hybrid, rel=1e-5)


def test_foreground_hybrid_pulls_with_a_constant_gradient_far_above_the_band():
    mask = _lung_mask()
    n = mask.sum().item()
    grads = []
    for total in (20.0, 200.0):
        r = (mask * (total / n)).requires_grad_(True)
        isnet_heatmap_loss(r, mask, _cfg(C1=2.0, C2=10.0, A=0.0, fg_upper_loss="hybrid"))["L_fg"].backward()
        grads.append(r.grad[mask.bool()].mean().item())
    # dL/dF = 1 (each lung pixel's |R| counts once in F) whatever the overshoot; the square's is (F - C2)/2.
    assert grads[0] == pytest.approx(1.0, rel=1e-5) and grads[1] == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match="fg_upper_loss"):
        _cfg(fg_upper_loss="l1")
    with pytest.raises(ValueError, match="C1 divisor"):
        _cfg(fg_upper_loss="hybrid", fg_upper_scale="C2")


# ---------------------------------------------------------------- explained classes


def _logits(batch: int = 5, classes: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed))


def test_explain_targets_original():
    t = explain_targets(_logits(4, 3), "original")
    assert t.dtype == torch.long and t.shape == (4, 3)
    assert (t == torch.arange(3)).all()


def test_explain_targets_stochastic_frequency():
    logits = _logits(4000, 3, seed=2)
    top = logits.argmax(dim=1)
    gen = torch.Generator().manual_seed(123)
    t = explain_targets(logits, "stochastic", gen)
    assert t.dtype == torch.long and t.shape == (4000, 1)
    picked_top = (t[:, 0] == top).float().mean().item()
    assert abs(picked_top - 5 / 11) < 0.03  # the reference's probability of the top class
    others = t[:, 0][t[:, 0] != top]
    offset = (others - top[t[:, 0] != top]) % 3  # 1 or 2: which other class
    assert abs((offset == 1).float().mean().item() - 0.5) < 0.04
    assert ((t >= 0) & (t < 3)).all()
    # Reproducible with the same seed.
    t2 = explain_targets(logits, "stochastic", torch.Generator().manual_seed(123))
    assert torch.equal(t, t2)


def test_explain_targets_stochastic_top_prob_parameter():
    logits = _logits(4000, 3, seed=5)
    t = explain_targets(logits, "stochastic", torch.Generator().manual_seed(1), top_prob=0.8)
    assert abs((t[:, 0] == logits.argmax(1)).float().mean().item() - 0.8) < 0.03
    assert (explain_targets(logits, "stochastic", torch.Generator(), top_prob=1.0)[:, 0] == logits.argmax(1)).all()
    with pytest.raises(ValueError, match="top_prob"):
        explain_targets(logits, "stochastic", top_prob=1.5)


def test_explain_targets_selective_is_the_reference_quantity():
    """Lowest-logit class c; R_j = z_j · ∂η/∂z_j with η = log(p_c + 0.01) − log(1 − p_c + 0.01)."""
    logits = _logits(6, 3, seed=4) * 3
    r = explain_targets(logits, "selective")
    assert r.shape == (6, 1, 3) and r.is_floating_point()
    z = logits.clone().requires_grad_(True)
    p_c = torch.softmax(z, dim=1).gather(1, logits.argmin(dim=1, keepdim=True))
    eta = (torch.log(p_c + 0.01) - torch.log(1 - p_c + 0.01)).sum()
    (grad,) = torch.autograd.grad(eta, z)
    torch.testing.assert_close(r[:, 0], grad * logits)
    # hand-computed for one row: z = (0, 1, 2) -> c = 0
    row = torch.tensor([[0.0, 1.0, 2.0]])
    p = torch.softmax(row, 1)[0]
    k = 1 / (p[0] + 0.01) + 1 / (1 - p[0] + 0.01)
    expected = torch.stack([0 * k * p[0] * (1 - p[0]), 1 * k * p[0] * (0 - p[1]), 2 * k * p[0] * (0 - p[2])])
    torch.testing.assert_close(explain_targets(row, "selective")[0, 0], expected)
    # another stabiliser changes the weights
    assert not torch.allclose(explain_targets(row, "selective", selective_eps=0.5), explain_targets(row, "selective"))


def test_explain_targets_selective_keeps_the_logit_graph():
    """The reference differentiates η through the softmax: the seed must carry the logits' graph."""
    z = _logits(4, 3).requires_grad_(True)
    r = explain_targets(z, "selective")
    assert r.requires_grad
    assert not explain_targets(z, "selective_top").requires_grad


def test_explain_targets_selective_top_relevance():
    logits = _logits(6, 3, seed=4) * 3
    r = explain_targets(logits, "selective_top")
    assert r.shape == (6, 1, 3) and r.is_floating_point()
    p = torch.softmax(logits, dim=1)
    onehot = torch.nn.functional.one_hot(logits.argmax(dim=1), 3).to(logits.dtype)
    torch.testing.assert_close(r[:, 0], logits * (onehot - p))
    torch.testing.assert_close(r.sum(dim=(1, 2)), (logits * (onehot - p)).sum(dim=1))
    # Gradient x input of log p_c at the logits.
    z = logits.clone().requires_grad_(True)
    logp = torch.log_softmax(z, dim=1).gather(1, logits.argmax(dim=1, keepdim=True)).sum()
    (grad,) = torch.autograd.grad(logp, z)
    torch.testing.assert_close(r[:, 0], grad * logits)
    # Shift invariance of the total, like log p_c.
    r_shift = explain_targets(logits + 7.0, "selective_top")
    torch.testing.assert_close(r_shift.sum(dim=(1, 2)), r.sum(dim=(1, 2)), rtol=1e-5, atol=1e-5)


def test_explain_targets_validation():
    with pytest.raises(ValueError, match="unknown ISNet variant"):
        explain_targets(_logits(), "fast")
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        explain_targets(torch.rand(2, 3, 4), "original")
    with pytest.raises(ValueError, match="floating"):
        explain_targets(torch.ones(2, 3, dtype=torch.long), "stochastic")


# ---------------------------------------------------------------- C1/C2 tuning


def test_tune_foreground_band_hand_computed():
    # sample standard deviation (n - 1), as the reference
    # mean 10, σ = sqrt(16/3) = 2.3094 -> C1 = max(2, 10 - 6.9282) = 3.0718, C2 = min(76.80, 16.9282) = 16.9282
    assert tune_foreground_band([8.0, 12.0, 8.0, 12.0]) == pytest.approx((3.0718, 16.9282), rel=1e-4)
    # mean 10, σ = sqrt(128) = 11.314 -> C1 = max(2, -23.9) = 2, C2 = min(50, 43.94) = 43.94
    assert tune_foreground_band(torch.tensor([2.0, 18.0])) == pytest.approx((2.0, 43.9411), rel=1e-4)
    # no spread: mean 1, σ 0 -> C1 = C2 = 1
    assert tune_foreground_band([1.0, 1.0, 1.0]) == pytest.approx((1.0, 1.0))
    # 25·C1 cap: values 0,0,0,100 -> mean 25, σ = 50 -> C1 = max(5, -125) = 5, C2 = min(125, 175) = 125
    assert tune_foreground_band([0.0, 0.0, 0.0, 100.0]) == pytest.approx((5.0, 125.0))


def test_tune_foreground_band_guards():
    with pytest.raises(ValueError, match="at least 2"):
        tune_foreground_band([3.0])
    with pytest.raises(ValueError, match="<= 0"):
        tune_foreground_band([0.0, 0.0])
    with pytest.raises(ValueError, match="non-finite"):
        tune_foreground_band([1.0, float("nan")])


def test_lung_relevance_totals():
    mask = _lung_mask(2)
    r = torch.zeros(2, 2, H, W)
    r[0, 0] = -1.0  # 100 lung pixels
    r[0, 1, 3, 2] = 5.0
    r[1, 1, 0, 0] = 9.0  # background: excluded
    totals = lung_relevance_totals(r, mask)
    torch.testing.assert_close(totals, torch.tensor([100.0, 5.0, 0.0, 0.0]))


def test_image_relevance_totals():
    """The reference's band sample: whole-image Σ|R| (lungs and background), averaged over the explained maps."""
    r = torch.zeros(2, 2, H, W)
    r[0, 0] = -1.0          # every pixel: H·W
    r[0, 1, 3, 2] = 5.0
    r[1, 1, 0, 0] = 9.0     # background counts too
    expected = torch.tensor([(H * W + 5.0) / 2, 9.0 / 2])
    torch.testing.assert_close(image_relevance_totals(r), expected)
    with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
        image_relevance_totals(torch.zeros(2, H, W))


def test_p_schedule():
    from isnet.methods.isnet import ISNetParams as ISNetConfig

    assert ISNetConfig().P_at(1) == 0.7 and ISNetConfig(P=0.4).P_at(9) == 0.4
    ramp = ISNetConfig(P={1: 0.0, 2: 0.35, 4: 0.7})
    assert [ramp.P_at(e) for e in (1, 2, 3, 4, 10)] == [0.0, 0.35, 0.35, 0.7, 0.7]
    with pytest.raises(ValueError, match="start at epoch 1"):
        ISNetConfig(P={2: 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ISNetConfig(P={1: 0.2, 3: 1.5})


def test_explain_targets_single_class():
    logits = _logits(3, 1)
    assert (explain_targets(logits, "stochastic", torch.Generator().manual_seed(0)) == 0).all()
    r = explain_targets(logits, "selective")
    torch.testing.assert_close(r, torch.zeros(3, 1, 1))  # p = 1 for the only class


def test_foreground_upper_loss_reaches_the_training_loss_from_the_config():
    from isnet.config import load_config
    from isnet.errors import ConfigError
    from isnet.methods.isnet import ISNetMethod

    cfg = load_config(None, ["methods=[isnet]", "method.isnet.fg_upper_loss=hybrid"])
    assert ISNetMethod(cfg).loss_config().fg_upper_loss == "hybrid"
    assert ISNetMethod(load_config(None, ["methods=[isnet]"])).loss_config().fg_upper_loss == "l2"
    with pytest.raises(ConfigError, match="C1 divisor"):
        load_config(None, ["methods=[isnet]", "method.isnet.fg_upper_loss=hybrid", "method.isnet.fg_upper_scale=C2"])


def test_conservation_term_hand_computed():
    """L_cons = mean over maps of ((seed − Σ R) / C1)², Σ R signed; G·L_cons joins L_hm; off (0) by default."""
    heat = torch.zeros(2, 2, H, W)
    heat[0, 0, 0, 0], heat[0, 0, 1, 1] = 3.0, -1.0   # Σ R = 2
    heat[0, 1, 2, 2] = 4.0                            # Σ R = 4
    heat[1, 0, 3, 3] = 1.0                            # Σ R = 1; map (1, 1) sums to 0
    seeds = torch.tensor([[6.0, 4.0], [1.0, -2.0]])   # missing 4, 0, 0, -2
    mask = _lung_mask(2)
    off = isnet_heatmap_loss(heat, mask, _cfg(C1=2.0, C2=50.0))
    on = isnet_heatmap_loss(heat, mask, _cfg(C1=2.0, C2=50.0, conservation=0.5), seeds=seeds)
    # ((4/2)² + 0 + 0 + (-2/2)²) / 4 = 5/4
    assert float(on["L_cons"]) == pytest.approx(1.25)
    assert float(off["L_cons"]) == 0.0
    assert float(on["L_hm"]) == pytest.approx(float(off["L_hm"]) + 0.5 * 1.25)
    with pytest.raises(ValueError, match="seeds of shape"):
        isnet_heatmap_loss(heat, mask, _cfg(C1=2.0, C2=50.0, conservation=0.5))
    with pytest.raises(ValueError, match="conservation must be >= 0"):
        _cfg(conservation=-1.0)


def test_conservation_trains_through_the_config(tmp_path, monkeypatch):
    """`method.isnet.conservation` reaches the training loss: the run logs train_L_cons, and a second run without it
    does not."""
    from mlflow.tracking import MlflowClient
    from conftest import make_toy_set
    from isnet.config import load_config
    from isnet.tracking import store_uri
    from isnet.train.run import train

    manifest = make_toy_set(tmp_path / "toy", n_per_class=8, size=32, seed=2)
    monkeypatch.chdir(tmp_path)
    base = ["methods=[isnet]", "model.backbone=small_cnn", "model.width=4", "data.image_size=32", "optim.epochs=1",
            "data.batch_size=8", "data.augment.enabled=false", "train.heatmap_every=0", "train.val_bg_share=false",
            "tracking.log_model=false", "train.threads=1", "method.isnet.warmup_epochs=1"]
    client = MlflowClient(store_uri())
    for g, logged in ((1.0, True), (0.0, False)):
        result = train(load_config(None, base + [f"method.isnet.conservation={g}"]), manifest, progress=False)
        metrics = client.get_run(result.run_id).data.metrics
        assert ("train_L_cons" in metrics) == logged
        if logged:
            assert math.isfinite(metrics["train_L_cons"]) and metrics["train_L_cons"] > 0
