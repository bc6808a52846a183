"""Gradient balance (``method.isnet.balance``): the non-cross-entropy part of each step's gradient is capped at
r times the cross-entropy's, direction kept (isnet.train.balance)."""

from __future__ import annotations

import math

import pytest
import torch

from isnet.train.balance import balance_gradients, ce_gradient


def _params(grads):
    ps = [torch.zeros(len(g), requires_grad=True) for g in grads]
    for p, g in zip(ps, grads):
        p.grad = torch.tensor(g, dtype=torch.float32)
    return ps


def test_the_rest_is_capped_at_r_times_the_ce_norm_with_its_direction_kept():
    # whole gradient g = [3, 4] + [0]; CE part [0, 0] + [1]: rest = [3, 4] + [-1], |rest| = sqrt(26), |g_CE| = 1
    ps = _params([[3.0, 4.0], [0.0]])
    g_ce = [torch.tensor([0.0, 0.0]), torch.tensor([1.0])]
    c = balance_gradients(ps, g_ce, ratio=2.0)
    assert c == pytest.approx(2.0 / math.sqrt(26.0))
    assert torch.allclose(ps[0].grad, torch.tensor([3.0, 4.0]) * c)
    assert torch.allclose(ps[1].grad, torch.tensor([1.0 - c]))
    rest = torch.cat([ps[0].grad, ps[1].grad - 1.0])
    assert float(rest.norm()) == pytest.approx(2.0)  # exactly r·|g_CE| after the cap


def test_within_the_cap_nothing_changes_and_bad_input_is_refused():
    ps = _params([[0.5, 0.0]])
    assert balance_gradients(ps, [torch.tensor([1.0, 0.0])], ratio=1.0) == 1.0
    assert torch.equal(ps[0].grad, torch.tensor([0.5, 0.0]))
    assert balance_gradients(_params([[1.0]]), [torch.tensor([1.0])], ratio=1.0) == 1.0  # CE only: no rest
    inf = _params([[float("inf")]])
    assert math.isnan(balance_gradients(inf, [torch.tensor([1.0])], ratio=1.0))  # a step AMP will skip
    assert torch.isinf(inf[0].grad).all()
    with pytest.raises(ValueError, match="ratio must be > 0"):
        balance_gradients(ps, [torch.tensor([1.0, 0.0])], ratio=0.0)


def test_ce_gradient_keeps_the_graph_and_zero_fills_unused_parameters():
    w, unused = torch.tensor([2.0], requires_grad=True), torch.tensor([1.0], requires_grad=True)
    loss = (w * 3.0).square().sum()
    g = ce_gradient(loss, [w, unused])
    assert torch.allclose(g[0], torch.tensor([36.0])) and torch.equal(g[1], torch.zeros(1))
    loss.backward()  # the graph is still there for the step's own backward
    assert torch.allclose(w.grad, torch.tensor([36.0]))


def test_balance_is_validated_against_p():
    from isnet.config import load_config
    from isnet.errors import ConfigError

    cfg = load_config(None, ["methods=[isnet]", "method.isnet.balance=0.5", "method.isnet.P={1: 0.0, 3: 0.7}"])
    assert cfg.method.isnet.balance == 0.5
    for bad, match in ((["method.isnet.P=1.0"], "balance needs P < 1"),
                       (["method.isnet.P={1: 0.5, 4: 1.0}"], "balance needs P < 1"),
                       (["method.isnet.P=0.7", "method.isnet.balance=0"], "balance")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, ["methods=[isnet]", "method.isnet.balance=0.5", *bad])


def test_a_balance_schedule_switches_the_cap_by_epoch():
    from isnet.config import load_config
    from isnet.errors import ConfigError
    from isnet.methods.isnet import ISNetMethod

    cfg = load_config(None, ["methods=[isnet]", "method.isnet.balance={1: 0.5, 3: 1.0, 5: null}", "optim.epochs=8",
                             "method.isnet.P={1: 0.7, 5: 1.0}"])  # P = 1 is allowed once the balance is off
    method = ISNetMethod(cfg)
    seen = []
    for epoch in range(1, 9):
        method.on_epoch_start(epoch, trainer=None)
        seen.append(method.gradient_balance())
    assert seen == [0.5, 0.5, 1.0, 1.0, None, None, None, None]
    assert [method.selectable(e) for e in (4, 5)] == [False, True]  # still balanced in epoch 4
    for bad, match in (("{2: 0.5}", "start at epoch 1"), ("{1: 0.5, 3: 0}", "must be > 0"),
                       ("{1: null, 3: 0.5}", "balance needs P < 1")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, ["methods=[isnet]", f"method.isnet.balance={bad}", "method.isnet.P={1: 0.7, 3: 1.0}"])
