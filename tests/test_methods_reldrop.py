"""RelDrop: α = 1 is random occlusion, α = 0 hits the most relevant pixels; LRP pass in eval mode."""

import dataclasses

import pytest
import torch

from isnet.config import load_config
from isnet.methods import RelDropMethod
from isnet.methods.reldrop import BOX_TRIES, box_sizes, dataset_mean, normalise, occlude, pixel_drop
from isnet.methods.reldrop import box_drop as block_drop
from isnet.lrp import lrp_heatmaps, run_lrp_config
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


def _peaked(b: int = 6, size: int = 40, seed: int = 0) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Relevance with one clear peak per image (and small noise elsewhere)."""
    rel = torch.rand(b, 1, size, size, generator=_gen(seed)) * 0.1
    peaks = [(5, 7), (30, 33), (20, 20), (1, 38), (38, 1), (12, 25)][:b]
    for i, (y, x) in enumerate(peaks):
        rel[i, 0, y, x] = 1.0
    return rel, peaks


def test_block_box_holds_the_top_pixel_with_k_one():
    rel, peaks = _peaked()
    drop = block_drop(rel, 1, (0.01, 0.01), (1.0, 1.0), _gen())
    for i, (y, x) in enumerate(peaks):
        assert drop[i, 0, y, x]
        assert 4 <= int(drop[i].sum()) <= 16  # a 4×4 box (area 0.01·1600), cut at the border


def test_fill_values():
    x = torch.rand(2, 1, 8, 8)
    drop = torch.zeros(2, 1, 8, 8, dtype=torch.bool)
    drop[:, :, :4] = True
    assert (occlude(x, drop, "zero", _gen())[drop] == 0).all()
    mean = occlude(x, drop, "image_mean", _gen())
    assert torch.allclose(mean[0][drop[0]], x[0].mean().expand(32))
    assert (occlude(x, drop, "dataset_mean", _gen(), [0.25])[drop] == 0.25).all()
    assert torch.equal(occlude(x, drop, "dataset_mean", _gen(), [0.25])[~drop], x[~drop])
    with pytest.raises(ValueError, match="dataset_mean"):
        occlude(x, drop, "dataset_mean", _gen())
    noisy = occlude(x, drop, "noise", _gen())
    assert torch.equal(noisy[~drop], x[~drop]) and not torch.equal(noisy[drop], x[drop])


def test_before_forward_uses_eval_lrp_and_restores_train_mode():
    class T:  # the parts of the trainer the method uses
        pass

    cfg = load_config(None, ["methods=[reldrop]", "method.reldrop.prob=1", "method.reldrop.fill=zero"])
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
        self.model, self.lrp_config = model, run_lrp_config(cfg)


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
                                 "method.reldrop.fill=zero",
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


def test_relevance_pass_uses_reldrops_own_rules_and_the_runs_bounds():
    """method.reldrop.epsilon / first_rule / body_rule (defaults: ε = 0.001, flat, ε, as the reference code)
    replace the run's rules; null first_rule/body_rule take the run's; the z^B bounds are always the run's."""
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 3, width=4).double().train()
    x = torch.rand(3, 1, 32, 32, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    for overrides, want in (
        ([], dict(epsilon=0.001, first_rule="flat", body_rule="epsilon")),
        (["method.reldrop.epsilon=0.5", "method.reldrop.first_rule=null", "method.reldrop.body_rule=null",
          "lrp.first_rule=zb", "lrp.body_rule=zplus"],
         dict(epsilon=0.5, first_rule="zb", body_rule="zplus")),
    ):
        cfg = load_config(None, ["methods=[reldrop]", *overrides])
        t = _Trainer(model, cfg)
        t.lrp_config = dataclasses.replace(t.lrp_config, low=-1.0, high=2.0)  # bounds of the run must be kept
        m = RelDropMethod(cfg)
        assert m.lrp_config(t) == dataclasses.replace(t.lrp_config, **want)
        heat = m.relevance(model, x, y, t)
        model.eval()
        _, own = lrp_heatmaps(model, x, y[:, None], config=dataclasses.replace(t.lrp_config, **want))
        _, run_rules = lrp_heatmaps(model, x, y[:, None], config=t.lrp_config)
        model.train()
        assert torch.allclose(heat, own, rtol=1e-10, atol=1e-12)
        assert not torch.allclose(heat, run_rules, rtol=1e-3)


# -- defaults = the reference code's parameters ------------------------------------------------------------


def test_defaults_are_the_reference_codes():
    p = load_config(None, ["methods=[reldrop]"]).method.reldrop
    assert (p.variant, p.prob, p.alpha, p.beta) == ("pixel", 0.5, 0.3, 0.5)
    assert (p.top_k, p.patch_count, p.area, p.random_centre) == (10, 20, (0.02, 0.4), 0.0)
    assert p.aspect == pytest.approx((0.3, 1 / 0.3))
    assert (p.epsilon, p.first_rule, p.body_rule, p.fill, p.fill_value) == (0.001, "flat", "epsilon",
                                                                             "dataset_mean", None)
    for variant, draw in (("pixel", "image"), ("block", "batch"), ("patch", "batch")):
        m = RelDropMethod(load_config(None, ["methods=[reldrop]", f"method.reldrop.variant={variant}"]))
        assert m.draw == draw
    m = RelDropMethod(load_config(None, ["methods=[reldrop]", "method.reldrop.variant=block",
                                         "method.reldrop.draw=image"]))
    assert m.draw == "image"
    with pytest.raises(Exception, match="fill_value"):
        load_config(None, ["methods=[reldrop]", "method.reldrop.fill=zero", "method.reldrop.fill_value=0.5"])


def test_default_pixel_rule_is_the_formula_with_alpha_0_3():
    m = RelDropMethod(load_config(None, ["methods=[reldrop]"]))
    rel = torch.randn(4, 1, 16, 16)
    drop = m.drop_mask(rel)
    u = torch.rand(rel.shape, generator=torch.Generator().manual_seed(202))  # the method's generator, seed 0
    assert torch.equal(drop, 0.3 * u + 0.7 * normalise(rel) >= 0.5)


def test_box_sizes_follow_the_area_and_aspect_ranges_and_fit_inside():
    bh, bw = box_sizes(4000, 40, 50, (0.02, 0.4), (0.3, 1 / 0.3), _gen())
    assert ((bh > 0) & (bh < 40) & (bw > 0) & (bw < 50)).all()  # redrawn until the box fits
    area = (bh * bw).double() / 2000
    assert 0.015 < float(area.min()) and float(area.max()) < 0.45
    ratio = (bh.double() / bw.double()).log()
    assert float(ratio.min()) < -0.9 and float(ratio.max()) > 0.9  # log-uniform over [0.3, 3.33]
    assert abs(float(ratio.mean())) < 0.1
    # a box that can never fit (taller than the image) is given up after BOX_TRIES draws: no box
    bh, bw = box_sizes(8, 40, 40, (0.9, 0.9), (3.0, 3.0), _gen())
    assert (bh == 0).all() and (bw == 0).all() and BOX_TRIES == 100
    rel, _ = _peaked()
    assert not block_drop(rel, 1, (0.9, 0.9), (3.0, 3.0), _gen()).any()


def test_block_centres_are_drawn_uniformly_among_the_top_k():
    """Each box's centre is one of the image's k most relevant positions, and each of them is used."""
    size, k = 32, 10
    rel = torch.rand(1, 1, size, size, generator=_gen(3)).expand(400, 1, size, size).contiguous()
    top = set(rel[0].flatten().topk(k).indices.tolist())
    drop = block_drop(rel, k, (0.01, 0.01), (1.0, 1.0), _gen())  # 3×3 boxes: the centre is the middle pixel
    centres = []
    for i in range(400):
        ys, xs = torch.nonzero(drop[i, 0], as_tuple=True)
        assert len(ys) == 9
        cy, cx = int(ys.float().mean().round()), int(xs.float().mean().round())
        centres.append(cy * size + cx)
    assert set(centres) == top
    counts = torch.bincount(torch.tensor(centres), minlength=size * size)[list(top)]
    assert int(counts.min()) > 15  # ~40 each out of 400
    anywhere = block_drop(rel, k, (0.01, 0.01), (1.0, 1.0), _gen(), random_centre=1.0)
    assert anywhere.any((1, 2, 3)).all() and not all(bool(anywhere[i].flatten()[list(top)].any())
                                                     for i in range(400))


def test_patch_variant_is_one_small_box_per_image_on_one_of_the_top_patch_count_positions():
    """patch: the box area is U(area)·H·W / patch_count and its centre one of the patch_count most relevant
    positions (the reference code's patch variant)."""
    size = 40
    rel = torch.rand(50, 1, size, size, generator=_gen(1))
    m = RelDropMethod(load_config(None, ["methods=[reldrop]", "method.reldrop.variant=patch",
                                         "method.reldrop.patch_count=4", "method.reldrop.area=[0.16,0.16]",
                                         "method.reldrop.aspect=[1,1]"]))
    drop = m.drop_mask(rel)
    for i in range(50):
        n = int(drop[i].sum())
        assert 16 <= n <= 64  # an 8×8 box (0.16·1600/4 = 64 pixels), cut at the border
        ys, xs = torch.nonzero(drop[i, 0], as_tuple=True)
        top = rel[i].flatten().topk(4).indices
        if n == 64:  # not cut: the centre is known exactly (rows [cy − 4, cy + 4))
            assert int(ys.min() + 4) * size + int(xs.min() + 4) in top.tolist()


class _Counting(RelDropMethod):
    """Counts the relevance passes."""

    calls = 0

    def relevance(self, model, x, y, trainer):
        _Counting.calls += 1
        return torch.rand(x.shape[0], 1, *x.shape[2:], generator=_gen(_Counting.calls))


@pytest.mark.parametrize("variant", ["block", "patch"])
def test_block_and_patch_draw_once_per_batch_and_skip_the_pass_otherwise(variant):
    class T:
        model = torch.nn.Identity().train()

    cfg = load_config(None, ["methods=[reldrop]", f"method.reldrop.variant={variant}", "method.reldrop.prob=0.5",
                             "method.reldrop.fill_value=-1"])
    m = _Counting(cfg)
    _Counting.calls = 0
    x = torch.rand(8, 1, 32, 32)
    occluded = []
    for _ in range(60):
        out = m.before_forward({"image": x, "label": torch.zeros(8, dtype=torch.long)}, T())["image"]
        per_image = (out == -1).flatten(1).any(1)
        assert per_image.all() or not per_image.any(), "the whole batch or none of it"
        occluded.append(bool(per_image.all()))
    assert 15 < sum(occluded) < 45 and _Counting.calls == sum(occluded)  # no relevance pass when not occluded
    m.params.draw = "image"  # the option: one draw per image
    mixed = 0
    for _ in range(20):
        out = m.before_forward({"image": x, "label": torch.zeros(8, dtype=torch.long)}, T())["image"]
        per_image = (out == -1).flatten(1).any(1)
        mixed += int(bool(per_image.any()) and not bool(per_image.all()))
    assert mixed > 10


def test_pixel_variant_draws_per_image():
    class T:
        model = torch.nn.Identity().train()

    m = _Counting(load_config(None, ["methods=[reldrop]", "method.reldrop.fill_value=-1"]))
    x = torch.rand(16, 1, 16, 16)
    out = m.before_forward({"image": x, "label": torch.zeros(16, dtype=torch.long)}, T())["image"]
    per_image = (out == -1).flatten(1).any(1)
    assert 0 < int(per_image.sum()) < 16


def test_dataset_mean_is_the_training_splits_mean(tmp_path):
    from conftest import make_toy_set

    from isnet.data.dataset import build_dataset, build_loader
    from isnet.data.manifest import load_manifest
    from isnet.methods.base import Method

    cfg = load_config(None, ["methods=[reldrop]", "data.image_size=32", "model.backbone=small_cnn"])
    manifest = load_manifest(make_toy_set(tmp_path / "toy", n_per_class=3, size=32), cfg.data.classes)

    class T:
        pass

    t = T()
    t.cfg, t.manifest, t.model, t.tracker = cfg, manifest, build_classifier("small_cnn", 3, width=4), None
    uncached = cfg.data.model_copy(update={"cache": "none"})  # float32, as documented
    ds = build_dataset(manifest.records("train"), uncached, train=False)
    want = torch.cat([b["image"] for b in build_loader(ds, uncached, shuffle=False)]).double().mean()
    assert dataset_mean(t) == pytest.approx([float(want)], rel=1e-9)
    cached = build_dataset(manifest.records("train"), cfg.data, train=False)  # the training cache (uint8 here)
    seen = torch.cat([b["image"] for b in build_loader(cached, cfg.data, shuffle=False)]).double().mean()
    assert abs(float(seen) - float(want)) <= 0.5 / 255
    m = RelDropMethod(cfg)
    m.on_fit_start(t)
    assert m.fill_value == pytest.approx([float(want)])
    again = RelDropMethod(cfg)  # resumed: the measured value comes from the checkpoint, not a new pass
    again.load_state_dict(m.state_dict())
    t.manifest = None
    again.on_fit_start(t)
    assert again.fill_value == m.fill_value
    assert issubclass(RelDropMethod, Method)
