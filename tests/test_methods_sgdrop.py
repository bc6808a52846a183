"""SGDrop: the mask zeroes exactly the features above q_rho, only in training, also inside the LRP forward."""

import pytest
import torch

from isnet.config import load_config
from isnet.lrp import lrp_heatmaps
from isnet.methods import SGDropMethod
from isnet.methods.sgdrop import default_layer, quantile_mask
from isnet.models import build_classifier


def _method(*overrides: str) -> SGDropMethod:
    return SGDropMethod(load_config(None, ["methods=[sgdrop]", *overrides]))


def test_quantile_mask_drops_exactly_the_features_above_the_threshold():
    attr = torch.randn(3, 4, 5, 5)
    q = torch.quantile(attr.flatten(1), 0.8, dim=1)
    mask = quantile_mask(attr, q, rescale=False)
    above = attr > q[:, None, None, None]
    assert torch.equal(mask == 0, above)
    scaled = quantile_mask(attr, q, rescale=True)
    kept = (~above).flatten(1).sum(1).float()
    assert torch.allclose(scaled.flatten(1).max(1).values, 100 / kept)  # 100 features per sample


def test_compute_mask_follows_grad_x_activation_and_rho():
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 3, width=4).train()
    m = _method("method.sgdrop.rho=0.75")
    m.attach(model)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 1])
    attr = m.attribution(model, x, y)
    # reference: the feature map at the pooling input, and d(true logit)/d(feature) by hand
    feats = model[:15](x).detach().requires_grad_(True)
    score = model[15:](feats).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(score, feats)
    assert torch.allclose(attr, g * feats, atol=1e-6)
    mask = m.compute_mask(model, x, y)
    flat = attr.flatten(1)
    k = int(torch.ceil(torch.tensor(0.75 * flat.shape[1])))
    q = flat.kthvalue(k, dim=1).values
    assert torch.equal((mask == 0).flatten(1), flat > q[:, None])
    assert m._dropped == pytest.approx(float((flat > q[:, None]).float().mean()))
    assert 0 < m._dropped <= 0.25  # ties at q (e.g. dead ReLU features, attribution 0) are kept


def test_inactive_in_eval_mode_and_bn_statistics_untouched():
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 3, width=4).train()
    m = _method()
    m.attach(model)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 1])
    before = [b.clone() for b in model.buffers()]
    m._mask = m.compute_mask(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers())), "the attribution pass moved BN stats"
    model.eval()
    with torch.no_grad():
        masked_eval = model(x)
        m.detach()
        plain_eval = model(x)
    assert torch.equal(masked_eval, plain_eval)
    m.attach(model)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(model(x), plain_eval)
    assert m._applied == 1


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18", "densenet121"])  # vgg16_bn: same avgpool hook as ResNet
def test_mask_applies_inside_the_lrp_forward(backbone):
    """ISNet + SGDrop: lrp_heatmaps calls the model's modules, so the hook masks its forward too."""
    torch.manual_seed(0)
    model = build_classifier(backbone, 3, width=4).train()
    for mod in model.modules():  # VGG's classifier dropout would make two forwards differ
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    m = _method()
    m.attach(model)
    x, y = torch.rand(2, 1, 32, 32), torch.tensor([0, 2])
    m._mask = m.compute_mask(model, x, y)
    logits, heat = lrp_heatmaps(model, x, y[:, None])
    assert m._applied == 1
    with torch.no_grad():
        assert torch.allclose(logits, model(x), atol=1e-5)
        m._mask = None
        assert not torch.allclose(logits, model(x), atol=1e-5)
    assert torch.isfinite(heat).all()


def test_default_layers_and_bad_layer_name():
    assert default_layer(build_classifier("resnet18", 3)) == ("avgpool", "input")
    assert default_layer(build_classifier("densenet121", 3)) == ("features.norm5", "output")
    m = _method("method.sgdrop.layer=nope")
    with pytest.raises(ValueError, match="nope"):
        m.attach(build_classifier("small_cnn", 3, width=4))


def test_ema_threshold_moves_with_momentum_and_round_trips():
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 3, width=4).train()
    m = _method("method.sgdrop.ema=true", "method.sgdrop.ema_momentum=0.5")
    m.attach(model)
    y = torch.tensor([0, 1, 2, 1])
    x1, x2 = torch.rand(4, 1, 32, 32), torch.rand(4, 1, 32, 32)
    m.compute_mask(model, x1, y)
    t1 = m.threshold
    m.compute_mask(model, x2, y)
    attr = m.attribution(model, x2, y).flatten(1)
    q2 = float(attr.kthvalue(int(0.9 * attr.shape[1]) + (0.9 * attr.shape[1] % 1 > 0), dim=1).values.mean())
    assert m.threshold == pytest.approx(0.5 * t1 + 0.5 * q2, rel=1e-5)
    other = _method("method.sgdrop.ema=true")
    other.load_state_dict(m.state_dict())
    assert other.threshold == m.threshold
