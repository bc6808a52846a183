"""SGDrop: the mask zeroes exactly the features above q_rho, only in training, also inside the LRP forward."""

import pytest
import torch

from isnet.config import load_config
from isnet.lrp import lrp_heatmaps, run_lrp_config
from isnet.methods import LossTerms, SGDropMethod
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


def test_defaults_are_the_papers_formula_without_rescaling():
    p = load_config(None, ["methods=[sgdrop]"]).method.sgdrop
    assert (p.attribution, p.rescale, p.rho, p.ema) == ("grad_x_act", False, 0.9, False)


def test_compute_mask_follows_relu_of_grad_x_activation_and_rho():
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 3, width=4).train()
    m = _method("method.sgdrop.rho=0.75")
    m.attach(model)
    x, y = torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 1])
    attr = m.attribution(model, x, y)
    # reference: the feature map at the pooling input, and ReLU(d(true logit)/d(feature) ⊙ feature) by hand
    feats = model[:15](x).detach().requires_grad_(True)
    score = model[15:](feats).gather(1, y[:, None]).sum()
    (g,) = torch.autograd.grad(score, feats)
    assert (g * feats < -1e-4).any(), "the test needs negative grad × activation to check the ReLU"
    assert torch.allclose(attr, torch.relu(g * feats), atol=1e-6)
    mask = m.compute_mask(model, x, y)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}  # no rescaling by default
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


# -- attribution: lrp -----------------------------------------------------------------------------------


class _Trainer:  # the parts of the trainer SGDrop uses
    def __init__(self, model, cfg):
        self.model, self.cfg, self.lrp_config = model, cfg, run_lrp_config(cfg)


def _stab(v: torch.Tensor, eps: float) -> torch.Tensor:
    return v + eps * torch.where(v >= 0, 1.0, -1.0).to(v)


def _lrp_at_pool_input(feats: torch.Tensor, fc: torch.nn.Linear, y: torch.Tensor, eps: float) -> torch.Tensor:
    """LRP-ε of the true-class logit, by hand, at the input of global average pooling → linear layer."""
    p = feats.mean((2, 3))
    z = torch.nn.functional.linear(p, fc.weight, fc.bias).gather(1, y[:, None])
    r_pool = p * fc.weight[y] * z / _stab(z, eps)
    return feats / feats[0, 0].numel() * (r_pool / _stab(p, eps))[:, :, None, None]


def _features_and_head(model, x):
    """(feature map at the pooling input as the train-mode forward computes it, final linear layer)."""
    if isinstance(model, torch.nn.Sequential):  # small_cnn: conv blocks, AdaptiveAvgPool2d, Flatten, Linear
        return model[:-3](x), model[-1]
    m = model
    t = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer4(m.layer3(m.layer2(m.layer1(t)))), m.fc


@pytest.mark.parametrize("backbone", ["small_cnn", "resnet18"])
def test_lrp_attribution_zeroes_exactly_the_features_above_the_relevance_quantile(backbone):
    import copy

    from isnet.methods import build_methods

    cfg = load_config(None, ["methods=[sgdrop]", f"model.backbone={backbone}", "model.width=4",
                             "data.image_size=64", "method.sgdrop.attribution=lrp", "method.sgdrop.rho=0.8",
                             "lrp.epsilon=0.5"])  # a large ε: LRP ranks features unlike grad × act
    torch.manual_seed(0)
    model = build_classifier(backbone, 3, width=4).double().train()
    plain = copy.deepcopy(model)
    (m,) = build_methods(cfg.methods, cfg)
    trainer = _Trainer(model, cfg)
    m.on_fit_start(trainer)
    x, y = torch.rand(4, 1, 64, 64, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    seen = []  # the feature maps the pooling receives (after SGDrop's mask)
    pool = model[-3] if backbone == "small_cnn" else model.avgpool
    pool.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach()))

    m.before_forward({"image": x, "label": y}, trainer)
    logits = model(x)  # the training forward
    m.loss(torch.zeros(()), None, None, trainer)  # raises if the mask was not applied

    with torch.no_grad():
        feats, fc = _features_and_head(plain, x)  # also moves plain's BN statistics once
        ref = _lrp_at_pool_input(feats, fc, y, eps=0.5).clamp_min(0)  # the positive part
    flat = ref.flatten(1)
    q = flat.kthvalue(int(torch.ceil(torch.tensor(0.8 * flat.shape[1]))), dim=1).values
    above = (flat > q[:, None]).reshape(ref.shape)
    keep = (~above).to(ref)  # rescale is off by default
    assert len(seen) == 2  # the attribution pass, then the training forward
    torch.testing.assert_close(seen[-1], feats * keep, rtol=1e-12, atol=1e-12)  # zeroed exactly above q
    assert 0 < float(above.float().mean()) <= 0.2 + 1e-9
    # the extra pass did not count the batch in the BN statistics: one forward's worth, like the plain model's
    for a, b in zip(model.buffers(), plain.buffers()):
        torch.testing.assert_close(a, b)
    assert torch.isfinite(logits).all()
    gxa = build_methods(["sgdrop"], load_config(None, ["methods=[sgdrop]"]))[0]
    gxa.attach(plain)
    assert not torch.equal(gxa.compute_mask(plain, x, y) == 0, above), "LRP must rank features unlike grad x act"


def test_lrp_attribution_is_inactive_in_eval_mode():
    from isnet.methods import build_methods

    cfg = load_config(None, ["methods=[sgdrop]", "method.sgdrop.attribution=lrp"])
    torch.manual_seed(0)
    model = build_classifier("resnet18", 3).train()
    (m,) = build_methods(cfg.methods, cfg)
    trainer = _Trainer(model, cfg)
    m.on_fit_start(trainer)
    x, y = torch.rand(2, 1, 64, 64), torch.tensor([0, 2])
    m.before_forward({"image": x, "label": y}, trainer)  # a mask is pending from a training step
    model.eval()
    with torch.no_grad():
        masked = model(x)
        m.before_forward({"image": x, "label": y}, trainer)  # eval: no attribution pass, no mask
        again = model(x)
        m.on_fit_end(trainer)  # hook removed
        plain = model(x)
    assert torch.equal(masked, plain) and torch.equal(again, plain)
    assert m.loss(torch.zeros(()), None, None, trainer) == LossTerms()


def test_lrp_attribution_on_densenet_takes_the_relevance_at_norm5_output():
    """DenseNet's default layer is an output the LRP rules wrap (norm5): the relevance is that of the tensor the
    final ReLU receives, checked here by hand through ReLU → global average pooling → classifier."""
    import torch.nn.functional as F
    from torchvision.models import DenseNet

    cfg = load_config(None, ["methods=[sgdrop]", "method.sgdrop.attribution=lrp"])
    torch.manual_seed(0)
    model = DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, num_classes=3)
    model.features.conv0 = torch.nn.Conv2d(1, 8, 7, 2, 3, bias=False)
    model = model.double().train()
    m = SGDropMethod(cfg)
    m.attach(model)
    x, y = torch.rand(3, 1, 64, 64, dtype=torch.float64), torch.tensor([2, 0, 1])
    attr = m.attribution(model, x, y)
    with torch.no_grad():
        feats = F.relu(model.features(x))
    want = _lrp_at_pool_input(feats, model.classifier, y, eps=0.01)
    assert (want < 0).any()
    torch.testing.assert_close(attr, want.clamp_min(0), rtol=1e-10, atol=1e-12)


def test_lrp_attribution_refuses_a_layer_without_relevance():
    cfg = load_config(None, ["methods=[sgdrop]", "method.sgdrop.attribution=lrp", 'method.sgdrop.layer="9"',
                             "method.sgdrop.at=input"])  # small_cnn's 3rd BatchNorm: LRP folds it into its conv
    model = build_classifier("small_cnn", 3, width=4).train()
    m = SGDropMethod(cfg)
    m.attach(model)
    with pytest.raises(ValueError, match="route relevance around"):
        m.compute_mask(model, torch.rand(2, 1, 64, 64), torch.tensor([0, 1]))
