"""The engine's own versions of concatenation, ReLU and train-mode BatchNorm are exact replacements: same values,
same gradients (first and second order), same running statistics as the torch modules they stand for."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from isnet.lrp.batchnorm import batch_norm
from isnet.lrp.rules import EpsilonAffineScale, EpsilonScale, relevance_pass
from isnet.lrp.structural import concat, relu


def _double(t: torch.Tensor) -> torch.Tensor:
    return t.double().requires_grad_(True)


def test_concat_and_relu_match_torch_in_first_and_second_order():
    torch.manual_seed(0)
    parts = [_double(torch.randn(2, c, 3, 3)) for c in (1, 2, 3)]
    ref = [p.detach().clone().requires_grad_(True) for p in parts]

    def energy(xs, cat, act):
        y = act(cat(xs))
        (g,) = torch.autograd.grad((y ** 3).sum(), xs[1], create_graph=True)  # a gradient, then its gradient
        return (g ** 2).sum() + y.sum()

    ours = energy(parts, concat, relu)
    theirs = energy(ref, lambda xs: torch.cat(xs, 1), torch.relu)
    assert torch.allclose(ours, theirs)
    g_ours = torch.autograd.grad(ours, parts)
    g_ref = torch.autograd.grad(theirs, ref)
    for a, b in zip(g_ours, g_ref):
        assert torch.allclose(a, b, atol=1e-10)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_train_bn_with_stats_updates_running_statistics_as_the_module(momentum):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5).double()
    ours, ref = nn.BatchNorm2d(3, momentum=momentum).double(), nn.BatchNorm2d(3, momentum=momentum).double()
    with torch.no_grad():
        for bn in (ours, ref):
            bn.weight.copy_(torch.tensor([0.5, -1.0, 2.0]))
            bn.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    for _ in range(3):
        y, s, t = batch_norm(ours, x.requires_grad_(True))
        expected = ref(x)
        assert torch.allclose(y, expected) and torch.allclose(y, s[None, :, None, None] * x + t[None, :, None, None])
    assert torch.allclose(ours.running_mean, ref.running_mean) and torch.allclose(ours.running_var, ref.running_var)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3


def test_train_bn_gradient_through_output_and_scale_matches_plain_ops():
    """The loss reaches x through y and through the rule's scale/shift (batch statistics): both exact."""
    torch.manual_seed(1)
    x = _double(torch.randn(4, 3, 2, 2))
    bn = nn.BatchNorm2d(3).double()

    def loss_of(y, s, t):
        return (y.sin()).sum() + (s ** 2).sum() + (t * s).sum()

    y, s, t = batch_norm(bn, x)
    (g_ours,) = torch.autograd.grad(loss_of(y, s, t), x, create_graph=True)
    var, mean = torch.var_mean(x, dim=(0, 2, 3), unbiased=False)
    s_ref = bn.weight * torch.rsqrt(var + bn.eps)
    t_ref = bn.bias - mean * s_ref
    y_ref = s_ref[None, :, None, None] * x + t_ref[None, :, None, None]
    (g_ref,) = torch.autograd.grad(loss_of(y_ref, s_ref, t_ref), x, create_graph=True)
    assert torch.allclose(g_ours, g_ref, atol=1e-10)
    # differentiated once more (RRR's input-gradient penalty does this): the same second derivatives
    gg_ours = torch.autograd.grad((g_ours ** 2).sum(), [x, bn.weight])
    gg_ref = torch.autograd.grad((g_ref ** 2).sum(), [x, bn.weight])
    for a, b in zip(gg_ours, gg_ref):
        assert torch.allclose(a, b, atol=1e-9)


def test_epsilon_affine_scale_gradients_are_exact():
    torch.manual_seed(2)
    g, z = _double(torch.randn(2, 3, 4, 4)), _double(torch.randn(2, 3, 4, 4))
    s, t = _double(torch.randn(1, 3, 1, 1)), _double(torch.randn(1, 3, 1, 1))
    with relevance_pass():
        assert torch.autograd.gradcheck(lambda *a: EpsilonAffineScale.apply(*a, 0.01), (g, z, s, t))


def test_fused_epsilon_and_convolution_equal_the_two_nodes_and_their_gradients_are_exact():
    """EpsilonConvInputGrad (ε at a folded BN, then the convolution's input gradient, without keeping the scaled
    relevance between them) against EpsilonAffineScale followed by ConvInputGrad; and under vmap (the batched
    classes), where it falls back to those two nodes."""
    from isnet.lrp.conv import ConvInputGrad, EpsilonConvInputGrad

    torch.manual_seed(3)
    conf = ((2, 2), (1, 1), (1, 1), 1)
    a_shape = torch.Size((2, 2, 7, 7))
    g, z = _double(torch.randn(2, 3, 4, 4)), _double(torch.randn(2, 3, 4, 4))
    s, t = _double(torch.randn(1, 3, 1, 1)), _double(torch.randn(1, 3, 1, 1))
    w = _double(torch.randn(3, 2, 3, 3))

    def fused(g_, z_, w_, s_=None, t_=None):
        return EpsilonConvInputGrad.apply(g_, z_, s_, t_, w_, 0.01, a_shape, conf)

    def pair(g_, z_, w_, s_=None, t_=None):
        c = EpsilonScale.apply(g_, z_, None, 0.01) if s_ is None else EpsilonAffineScale.apply(g_, z_, s_, t_, 0.01)
        return ConvInputGrad.apply(c, w_, a_shape, conf)

    gg = torch.randn(a_shape, dtype=torch.float64)
    gk = torch.randn((3,) + tuple(g.shape), dtype=torch.float64)
    with relevance_pass():
        for inputs in ((g, z, w, s, t), (g, z, w)):  # a BN folded in, and a convolution alone
            assert torch.autograd.gradcheck(fused, inputs)
            out_f, out_p = fused(*inputs), pair(*inputs)
            torch.testing.assert_close(out_f, out_p)
            for d_f, d_p in zip(torch.autograd.grad(out_f, inputs, gg), torch.autograd.grad(out_p, inputs, gg)):
                torch.testing.assert_close(d_f, d_p)
            batched = torch.func.vmap(lambda g_: fused(g_, *inputs[1:]))(gk)
            torch.testing.assert_close(batched, torch.stack([pair(gk[k], *inputs[1:]) for k in range(3)]))


def test_routed_affine_scale_gradients_are_exact_and_equal_the_kept_output():
    """The first layer's routed step with its BN output recomputed from the BN input (RoutedAffineScale) against the
    step that keeps that output (RoutedScale)."""
    from isnet.lrp.rules import RoutedAffineScale, RoutedScale

    torch.manual_seed(4)
    g, z, den = (_double(torch.randn(2, 3, 4, 4)) for _ in range(3))
    s, t = _double(torch.randn(1, 3, 1, 1)), _double(torch.randn(1, 3, 1, 1))
    with relevance_pass():
        assert torch.autograd.gradcheck(lambda *a: RoutedAffineScale.apply(*a, 0.01), (g, z, s, t, den))
        inputs = (g, z, s, t, den)
        out_a = RoutedAffineScale.apply(*inputs, 0.01)
        out_k = RoutedScale.apply(g, torch.addcmul(t, z, s), den, 0.01)
        torch.testing.assert_close(out_a, out_k)
        gg = torch.randn_like(out_a)
        for d_a, d_k in zip(torch.autograd.grad(out_a, inputs, gg), torch.autograd.grad(out_k, inputs, gg)):
            torch.testing.assert_close(d_a, d_k)
