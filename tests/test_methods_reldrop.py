"""RelDrop: α = 1 is random occlusion, α = 0 hits the most relevant pixels; LRP pass in eval mode."""

import dataclasses

import pytest
import torch

from isnet.config import load_config
from isnet.methods import RelDropMethod
from isnet.methods.reldrop import block_drop, normalise, occlude, pixel_drop
from isnet.lrp import lrp_heatmaps
from isnet.models import build_classifier

from conftest import randomize_bn


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_alpha_one_is_random_occlusion_of_fraction_beta():
    rel = torch.zeros(8, 1, 64, 64)
    rel[:, :, 20:30, 20:30] = 5.0  # a strongly relevant square
    drop = pixel_drop(rel, alpha=1.0, beta=0.3, gen=_gen())
    assert abs(float(drop.float().mean()) - 0.3) < 0.02
    inside = float(drop[:, :, 20:30, 20:30].float().mean())
    assert abs(inside - 0.3) < 0.06, "random occlusion must not prefer the relevant pixels"
    u = torch.rand(rel.shape, generator=_gen())
    assert torch.equal(drop, u >= 0.7)


def test_alpha_zero_drops_exactly_the_most_relevant_pixels():
    rel = torch.randn(4, 1, 32, 32)
    drop = pixel_drop(rel, alpha=0.0, beta=0.1, gen=_gen())
    r = normalise(rel)
    assert torch.equal(drop, r >= 0.9)
    for i in range(4):
        assert r[i][drop[i]].min() >= r[i][~drop[i]].max()  # every dropped pixel outranks every kept one
    assert pixel_drop(rel, alpha=0.0, beta=1.0, gen=_gen()).all()


def test_block_centred_on_a_top_k_pixel_with_alpha_zero():
    p = load_config(None, ["method.reldrop.variant=block", "method.reldrop.alpha=0", "method.reldrop.top_k=1",
                           "method.reldrop.area=[0.01,0.01]", "method.reldrop.aspect=[1,1]"]).method.reldrop
    rel = torch.rand(6, 1, 40, 40) * 0.1
    peaks = [(5, 7), (30, 33), (20, 20), (1, 38), (38, 1), (12, 25)]
    for i, (y, x) in enumerate(peaks):
        rel[i, 0, y, x] = 1.0
    drop = block_drop(rel, p, _gen())
    for i, (y, x) in enumerate(peaks):
        assert drop[i, 0, y, x]
        assert 9 <= int(drop[i].sum()) <= 16  # a 4×4 box (area 0.01·1600), clipped at the border


def test_fill_values():
    x = torch.rand(2, 1, 8, 8)
    drop = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    drop[:, :, :4] = True
    assert (occlude(x, drop, "zero", _gen())[drop] == 0).all()
    mean = occlude(x, drop, "mean", _gen())
    assert torch.allclose(mean[0][drop[0]], x[0].mean().expand(32))
    noisy = occlude(x, drop, "noise", _gen())
    assert torch.equal(noisy[~drop], x[~drop]) and not torch.equal(noisy[drop], x[drop])


def test_before_forward_uses_eval_lrp_and_restores_train_mode():
    class T:  # the parts of the trainer the method uses
        pass

    cfg = load_config(None, ["methods=[reldrop]", "method.reldrop.prob=1"])
    t = T()
    t.model = build_classifier("small_cnn", 3, width=4).train()
    from isnet.lrp import LRPConfig
    t.lrp_config = LRPConfig()
    buffers = [b.clone() for b in t.model.buffers()]
    m = RelDropMethod(cfg)
    x = torch.rand(4, 1, 32, 32) + 0.1
    out = m.before_forward({"image": x, "label": torch.tensor([0, 1, 2, 0])}, t)
    assert t.model.training and all(mod.training for mod in t.model.modules())
    assert all(torch.equal(a, b) for a, b in zip(buffers, t.model.buffers())), "eval-mode pass leaves BN stats"
    dropped = out["image"] == 0
    assert 0 < m._fraction == pytest.approx(float(dropped.float().mean()))
    m2 = RelDropMethod(load_config(None, ["methods=[reldrop]", "method.reldrop.prob=0"]))
    assert m2.before_forward({"image": x, "label": torch.tensor([0, 1, 2, 0])}, t)["image"] is x


# -- engine: zennit -------------------------------------------------------------------------------------


class _Trainer:  # the parts of the trainer RelDrop uses
    def __init__(self, model, cfg):
        self.model, self.lrp_config = model, cfg.method.isnet.lrp_config()


def _randomized_resnet18() -> torch.nn.Module:
    """resnet18 at 64 px, float64, with non-trivial BN statistics so that folding BN is really exercised."""
    torch.manual_seed(0)
    return randomize_bn(build_classifier("resnet18", 3)).double().train()


@pytest.mark.parametrize("variant", ["pixel", "block"])
def test_zennit_engine_occludes_the_same_top_relevance_pixels_as_ours(variant):
    """alpha = 0: occlusion follows relevance only (pixel: R̂ ≥ 1 − beta; block: a box on the top pixel), so
    both engines must drop the same pixels, and those are the most relevant ones of our heatmap."""
    from isnet.lrp import lrp_heatmaps
    from isnet.methods import build_methods

    model = _randomized_resnet18()
    params = [p.clone() for p in model.state_dict().values()]
    x = torch.rand(4, 1, 64, 64, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    out = {}
    for engine in ("isnet", "zennit"):
        cfg = load_config(None, ["methods=[reldrop]", "model.backbone=resnet18", "data.image_size=64",
                                 f"method.reldrop.engine={engine}", f"method.reldrop.variant={variant}",
                                 "method.reldrop.prob=1", "method.reldrop.alpha=0", "method.reldrop.beta=0.1",
                                 "method.reldrop.top_k=1", "method.reldrop.area=[0.01,0.01]",
                                 "method.reldrop.aspect=[1,1]"])
        (m,) = build_methods(cfg.methods, cfg)
        trainer = _Trainer(model, cfg)
        m.on_fit_start(trainer)
        out[engine] = m.before_forward({"image": x, "label": y}, trainer)["image"]
        assert model.training
    # the zennit pass worked on a copy: weights, BN statistics and mode of the training model are untouched
    assert all(torch.equal(a, b) for a, b in zip(params, model.state_dict().values()))
    dropped = out["zennit"] == 0
    assert torch.equal(dropped, out["isnet"] == 0)
    model.eval()  # RelDrop explains with the run's rules and its own ε
    _, heat = lrp_heatmaps(model, x, y[:, None], config=m.lrp_config(trainer))
    assert m.lrp_config(trainer).epsilon == 0.001
    r = normalise(heat)
    assert 0 < float(dropped.float().mean()) < 0.2
    if variant == "pixel":
        assert torch.equal(dropped, r >= 0.9)
    else:  # the box holds each image's most relevant pixel
        top = r.flatten(1).argmax(1)
        assert all(dropped[i].flatten()[top[i]] for i in range(len(y)))


def test_zennit_engine_heatmaps_equal_ours_and_refuse_densenet():
    from isnet.lrp import LRPConfig, lrp_heatmaps
    from isnet.lrp.zennit_ref import zennit_heatmaps

    model = _randomized_resnet18().eval()
    x = torch.rand(2, 1, 64, 64, dtype=torch.float64)
    y = torch.tensor([2, 0])
    for config in (LRPConfig(), LRPConfig(body_rule="alpha2beta1", first_rule="flat")):
        _, ours = lrp_heatmaps(model, x, y[:, None], config=config)
        ref = zennit_heatmaps(model, x, y, config)
        assert float((ours - ref).abs().max() / ref.abs().max()) < 1e-10
    with pytest.raises(Exception, match="DenseNet"):
        load_config(None, ["methods=[reldrop]", "method.reldrop.engine=zennit", "model.backbone=densenet121"])
    with pytest.raises(ValueError, match="DenseNet"):
        zennit_heatmaps(build_classifier("densenet121", 3), x.float(), y)


def test_relevance_pass_uses_reldrops_own_epsilon_and_the_runs_other_rules():
    """method.reldrop.epsilon (default 0.001, the RelDrop paper's best) replaces only ε of the run's rules."""
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 3, width=4).double().train()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    cfg = load_config(None, ["methods=[reldrop]", "method.reldrop.epsilon=0.5"])
    t = _Trainer(model, cfg)
    t.lrp_config = dataclasses.replace(t.lrp_config, low=-1.0, high=2.0)  # bounds of the run must be kept
    heat = RelDropMethod(cfg).relevance(model, x, y, t)
    model.eval()
    _, own = lrp_heatmaps(model, x, y[:, None], config=dataclasses.replace(t.lrp_config, epsilon=0.5))
    _, run_eps = lrp_heatmaps(model, x, y[:, None], config=t.lrp_config)
    assert torch.allclose(heat, own, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(heat, run_eps, rtol=1e-3)
    assert load_config(None, ["methods=[reldrop]"]).method.reldrop.epsilon == 0.001
