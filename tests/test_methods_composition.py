"""Composing methods: every loss hook sees the true cross-entropy, and the trainer combines their parts once,
(Π ce_weight)·CE + Σ terms, so a set of methods gives the same objective (and gradients) in every order."""

import pytest
import torch

from isnet.config import load_config
from isnet.data.manifest import load_manifest
from isnet.methods import LossTerms, build_methods, combine_losses
from isnet.methods.isnet_loss import ISNetLossConfig, isnet_heatmap_loss, isnet_total_loss
from isnet.models import build_classifier
from isnet.tracking import Tracker
from isnet.train.trainer import Trainer


def test_combine_losses_is_the_product_of_weights_times_ce_plus_the_sum_of_terms():
    ce = torch.tensor(1.5, requires_grad=True)
    a, b = torch.tensor(0.2), torch.tensor(0.7)
    parts = {"isnet": LossTerms(ce_weight=0.3, terms={"isnet": a}, metrics={"L_hm": 1.0}),
             "rrr": LossTerms(terms={"rrr": b}),
             "other": LossTerms(ce_weight=0.5)}
    total, metrics = combine_losses(ce, parts)
    assert float(total) == pytest.approx(0.3 * 0.5 * 1.5 + 0.2 + 0.7)
    assert metrics == pytest.approx({"ce_weight": 0.15, "loss_isnet": 0.2, "loss_rrr": 0.7})
    total.backward()
    assert float(ce.grad) == pytest.approx(0.15)
    assert combine_losses(ce, {})[0] is ce  # no method: plain cross-entropy
    reordered = dict(reversed(list(parts.items())))
    assert torch.equal(combine_losses(ce, reordered)[0], total)


def test_combine_losses_refuses_duplicate_terms_and_old_style_hooks():
    ce = torch.tensor(1.0)
    with pytest.raises(ValueError, match="unique"):
        combine_losses(ce, {"a": LossTerms(terms={"x": ce}), "b": LossTerms(terms={"x": ce})})
    with pytest.raises(TypeError, match="LossTerms"):
        combine_losses(ce, {"a": (ce, {})})


def test_isnet_hook_gives_the_isnet_objective():
    """ISNet alone: (1 − P)·CE + P·L_hm, the published objective."""
    from isnet.methods import ISNetMethod
    from isnet.methods.base import StepOutput

    cfg = load_config(None, ["methods=[isnet]", "method.isnet.C1=0.5", "method.isnet.C2=5"])
    m = ISNetMethod(cfg)
    torch.manual_seed(0)
    heat = torch.randn(4, 3, 16, 16)
    mask = torch.zeros(4, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    ce = torch.tensor(0.9)
    part = m.loss(ce, StepOutput(logits=torch.zeros(4, 3), extras={"heatmaps": heat}), {"mask": mask}, None)
    lc = ISNetLossConfig(P=0.7, C1=0.5, C2=5.0)
    want = isnet_total_loss(ce, isnet_heatmap_loss(heat, mask, lc), lc)
    assert part.ce_weight == pytest.approx(0.3)
    torch.testing.assert_close(combine_losses(ce, {"isnet": part})[0], want)
    assert {"L_bg", "L_fg", "L_hm", "bg_share"} <= set(part.metrics)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from conftest import make_toy_set

    return make_toy_set(tmp_path_factory.mktemp("toy"), n_per_class=4, size=32)


def _gradients(methods: list[str], manifest) -> tuple[dict[str, float], list[torch.Tensor]]:
    cfg = load_config(None, [
        f"methods=[{','.join(methods)}]", "model.backbone=small_cnn", "model.width=4", "data.image_size=32",
        "data.batch_size=6", "data.augment.enabled=false", "train.threads=1", "train.device=cpu",
        "method.isnet.C1=0.5", "method.isnet.C2=5", "method.rrr.lam=100"])
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 3, width=4).double()
    ms = build_methods(cfg.methods, cfg)
    trainer = Trainer(cfg, load_manifest(manifest, cfg.data.classes, require_masks=True), model, ms,
                      Tracker(enabled=False), torch.device("cpu"), "unused")
    for m in ms:
        m.on_fit_start(trainer)
    trainer.model.train()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 32, 32, generator=g, dtype=torch.float64)
    mask = torch.zeros(6, 1, 32, 32, dtype=torch.float64)
    mask[..., 6:26, 6:26] = 1
    metrics = trainer.train_step({"image": x, "mask": mask, "label": torch.tensor([0, 1, 2, 0, 1, 2])})
    return metrics, [p.grad.clone() for p in trainer.model.parameters()]


@pytest.mark.parametrize("methods", [["rrr", "isnet"], ["sgdrop", "isnet"], ["rrr", "sgdrop"]])
def test_the_same_methods_in_two_orders_give_identical_gradients(methods, manifest):
    m1, g1 = _gradients(methods, manifest)
    m2, g2 = _gradients(methods[::-1], manifest)
    assert m1["loss"] == m2["loss"]
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)
    if "isnet" in methods:  # the other method's term is not scaled by ISNet's (1 − P)
        assert m1["ce_weight"] == pytest.approx(0.3)
        assert m1["loss"] == pytest.approx(0.3 * m1["ce"] + sum(v for k, v in m1.items()
                                                                 if k.startswith("loss_")), rel=1e-6)
