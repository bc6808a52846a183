"""Bias injectors: never on the (dilated) lungs, deterministic, and the test sets differ only in the bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from isnet.data.bias import (
    BIAS_KINDS,
    SHAPES,
    BiasPlacementError,
    BiasSpec,
    InjectBiasd,
    bias_present,
    forbidden_zone,
    inject,
    parse_bias,
)
from isnet.errors import UserError

ALL_SPECS = ([BiasSpec(kind="shape", shape=s) for s in SHAPES]
             + [BiasSpec(kind="text", text="PORTABLE"), BiasSpec(kind="patch"), BiasSpec(kind="border"),
                BiasSpec(kind="noise")])


def random_lungs(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two elliptical 'lungs' of random size and position."""
    yy, xx = np.mgrid[0:size, 0:size]
    m = np.zeros((size, size), np.float32)
    for side in (0.3, 0.7):
        cy = size * rng.uniform(0.4, 0.6)
        cx = size * (side + rng.uniform(-0.05, 0.05))
        ry, rx = size * rng.uniform(0.2, 0.33), size * rng.uniform(0.08, 0.14)
        m[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    return m


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.label)
def test_bias_never_touches_the_dilated_lungs(spec):
    rng = np.random.default_rng(0)
    for i in range(40):
        size = int(rng.choice([64, 96, 128]))
        mask = random_lungs(rng, size)
        img = rng.random((size, size)).astype(np.float32) * 0.5
        out, where = inject(img, mask, [spec], seed=i, row=i)
        zone = forbidden_zone(mask, int(round(spec.margin * size)))
        assert where.any()
        assert not (where & zone).any()
        changed = out != img
        assert not (changed & ~where).any(), "pixels outside the bias footprint changed"
        assert not changed[mask > 0.5].any()


def test_several_biases_do_not_overlap_and_stay_off_the_lungs():
    rng = np.random.default_rng(1)
    specs = [BiasSpec(kind="text", text="PORTABLE"), BiasSpec(kind="shape", shape="circle"),
             BiasSpec(kind="noise", size=(0.08, 0.1))]
    for i in range(30):
        mask = random_lungs(rng, 96)
        img = np.full((96, 96), 0.3, np.float32)
        _, where = inject(img, mask, specs, seed=3, row=i)
        assert not (where & forbidden_zone(mask, 3)).any()
        # each stamped bias is visible: the total footprint is at least as large as the biggest one alone
        singles = [inject(img, mask, [s], seed=3, row=i)[1].sum() for s in specs]
        assert where.sum() >= max(singles)


def test_injection_is_deterministic_per_row_and_seed():
    rng = np.random.default_rng(2)
    mask = random_lungs(rng, 64)
    img = rng.random((64, 64)).astype(np.float32)
    spec = [BiasSpec(kind="shape", shape="triangle")]
    a = inject(img, mask, spec, seed=5, row=17)[0]
    assert np.array_equal(a, inject(img, mask, spec, seed=5, row=17)[0])
    others = [inject(img, mask, spec, seed=s, row=r)[0] for s, r in [(6, 17), (5, 18), (7, 3)]]
    assert any(not np.array_equal(a, o) for o in others)


def test_no_room_names_the_image():
    mask = np.ones((32, 32), np.float32)
    mask[:2] = 0
    with pytest.raises(BiasPlacementError, match="chest_017.png"):
        inject(np.zeros((32, 32), np.float32), mask, [BiasSpec(kind="shape")], 0, 3, name="chest_017.png (row 3)")
    with pytest.raises(BiasPlacementError, match="empty"):
        inject(np.zeros((32, 32), np.float32), np.zeros((32, 32)), [BiasSpec()], 0, 3)


def test_border_frame_clips_around_lungs_at_the_edge_and_full_refuses():
    """Lungs reaching the left edge: the default frame is drawn on the other three sides and on the left edge's
    background, never in the dilated lungs; ``frame: full`` refuses the image; lungs all round leave no frame."""
    mask = np.zeros((48, 48), np.float32)
    mask[10:38, 0:20] = 1  # a lung touching the left edge
    img = np.full((48, 48), 0.2, np.float32)
    out, where = inject(img, mask, [BiasSpec(kind="border")], seed=0, row=0)
    zone = forbidden_zone(mask, int(round(0.03 * 48)))
    assert not (where & zone).any() and not (out != img)[~where].any()
    assert where[:, -1].all() and where[0].all() and where[-1].all()  # right, top and bottom edges complete
    assert where[:5, 0].all() and not where[12:36, 0].any()           # left edge: only its background part
    with pytest.raises(BiasPlacementError, match="reaches the image edge; frame: clip"):
        inject(img, mask, [BiasSpec(kind="border", frame="full")], seed=0, row=0, name="edge.png")
    free = np.zeros((48, 48), np.float32)
    free[12:36, 12:36] = 1
    full = inject(img, free, [BiasSpec(kind="border", frame="full")], seed=0, row=0)[1]
    assert full[0].all() and full[:, 0].all() and full[-1].all() and full[:, -1].all()
    for lungs in (np.ones((48, 48), np.float32), np.pad(np.ones((46, 46), np.float32), 1)):  # corners free
        with pytest.raises(BiasPlacementError, match="keeps at least half"):
            inject(img, lungs, [BiasSpec(kind="border")], seed=0, row=0)
    with pytest.raises(ValueError, match="frame"):
        BiasSpec(kind="border", frame="half")


def _sample(label: int, row: int, size: int = 64) -> dict:
    rng = np.random.default_rng(row)
    return {"image": torch.as_tensor(rng.random((1, size, size)), dtype=torch.float32),
            "mask": random_lungs(rng, size)[None], "label": label, "row": row}


def test_clean_aligned_flipped_differ_only_in_the_bias():
    specs = [BiasSpec(kind="shape", shape="square"), BiasSpec(kind="text", text="AP")]
    target = 1
    samples = [_sample(label=r % 3, row=r) for r in range(30)]
    sets = {mode: [InjectBiasd(specs, target, mode=mode, seed=4)(s) for s in samples]
            for mode in ("clean", "aligned", "flipped")}
    for i, s in enumerate(samples):
        clean, aligned, flipped = (sets[m][i] for m in ("clean", "aligned", "flipped"))
        assert torch.equal(clean["image"], s["image"]) and clean["bias_present"] == 0
        is_target = s["label"] == target
        assert aligned["bias_present"] == int(is_target) and flipped["bias_present"] == int(not is_target)
        for d in (aligned, flipped):
            diff = (d["image"] != clean["image"]).numpy()
            assert not (diff & ~d["bias_region"]).any(), "a pixel outside the bias region differs"
            assert d["bias_region"].any() == bool(d["bias_present"])
            assert not (d["bias_region"][0] & (s["mask"][0] > 0.5)).any()
        # the same image carries the same bias in the aligned and the flipped set
        biased = aligned if is_target else flipped
        assert torch.equal(biased["image"], InjectBiasd(specs, target, mode="all", seed=4)(s)["image"])


def test_train_mode_presence_follows_strength():
    rows = range(4000)
    rate = np.mean([bias_present("train", 1, 1, 0.8, 0, r) for r in rows])
    assert abs(rate - 0.8) < 0.03
    assert not any(bias_present("train", 0, 1, 1.0, 0, r) for r in rows)
    assert all(bias_present("train", 1, 1, 1.0, 0, r) for r in rows)
    # nested across strengths: an image biased at 0.5 is biased at 0.8 too (same seed)
    assert all(bias_present("train", 1, 1, 0.8, 0, r) for r in rows if bias_present("train", 1, 1, 0.5, 0, r))


@pytest.mark.parametrize("text,kind", [("shape:triangle", "shape"), ('text:"PORTABLE"', "text"), ("patch", "patch"),
                                       ("border", "border"), ("noise", "noise"), ("shape:circle", "shape")])
def test_parse_bias(text, kind):
    spec = parse_bias(text)
    assert spec.kind == kind and kind in BIAS_KINDS
    if kind == "text":
        assert spec.text == "PORTABLE"


@pytest.mark.parametrize("text,msg", [("star", "unknown bias kind"), ("shape:hexagon", "unknown shape"),
                                      ("text:", "needs the token"), ("patch:big", "takes no argument")])
def test_parse_bias_errors(text, msg):
    with pytest.raises(UserError, match=msg):
        parse_bias(text)


@pytest.mark.parametrize("background,expect_dark", [(0.9, True), (0.1, False)])
def test_contrast_polarity_stands_out_from_the_background(background, expect_dark):
    mask = random_lungs(np.random.default_rng(5), 64)
    img = np.full((64, 64), background, np.float32)
    out, where = inject(img, mask, [BiasSpec(kind="shape", shape="square", intensity=(0.95, 1.0))], 0, 1)
    assert abs(float(out[where].mean()) - background) > 0.7
    assert (out[where].mean() < 0.5) == expect_dark
    bright, where = inject(img, mask, [BiasSpec(kind="shape", intensity=(0.95, 1.0), polarity="bright")], 0, 1)
    assert bright[where].min() >= 0.95


def test_token_effect_is_the_paired_change_of_the_target_margin():
    """Margins are logit differences: log p_target − max over the others of log p, on the images that carry the
    token."""
    from isnet.evaluate.stress.scoring import token_effect

    def probs(logits):
        z = np.asarray(logits, float)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    clean = probs([[0.0, 2.0, 1.0], [0.0, 0.5, 3.0], [5.0, 0.0, 0.0]])
    token = probs([[1.5, 2.0, 1.0], [2.0, 0.5, 3.0], [0.0, 0.0, 9.0]])
    carries = np.array([True, True, False])  # the third image has no token: its change does not count
    out = token_effect(clean, token, carries, target=0)
    # margins clean -2, -3; with the token -0.5, -1: shifts 1.5 and 2; gaps 2 and 3
    assert out["token_shift"] == pytest.approx(1.75) and out["target_gap"] == pytest.approx(2.5)
    assert np.isnan(token_effect(clean, token, np.zeros(3, bool), 0)["token_shift"])
    with pytest.raises(ValueError, match="paired"):
        token_effect(clean, token[:2], carries, 0)


def test_heatmap_account_is_the_paired_change_of_the_logit_and_of_the_heatmap_total():
    from isnet.evaluate.stress.scoring import heatmap_account

    clean = {"logit": np.array([-1.0, -2.0, 0.5]), "total": np.array([1.0, 0.5, 0.2])}
    token = {"logit": np.array([1.0, 1.0, 9.0]), "total": np.array([0.5, 1.5, 9.0])}
    out = heatmap_account(clean, token, np.array([True, True, False]))  # the third image carries no token
    assert out["logit_shift"] == pytest.approx(2.5) and out["heatmap_shift"] == pytest.approx(0.25)
    assert np.isnan(heatmap_account(clean, token, np.zeros(3, bool))["logit_shift"])
    with pytest.raises(ValueError, match="paired"):
        heatmap_account(clean, {"logit": token["logit"][:2], "total": token["total"][:2]}, np.ones(3, bool))


def test_target_totals_follow_the_logit_only_where_no_bias_absorbs_relevance():
    """With ε → 0 and no biases the LRP heatmap of a ReLU network sums to its logit (conservation), so the heatmap
    shows all of a token's effect; a bias that a token switches on moves the logit without moving the heatmap."""
    import torch
    from torch import nn
    from isnet.evaluate.stress.scoring import heatmap_account
    from isnet.lrp import LRPConfig
    from isnet.measure.relevance import explained_batches

    def target_totals(net, batches, target, device, lrp):  # the class explained beside the predicted one
        loader = [{"image": b, "mask": torch.ones_like(b), "has_mask": torch.ones(len(b))} for b in batches]
        out = list(explained_batches(net, loader, device, lrp, also=target))
        return {"logit": np.concatenate([o["also_logit"].numpy() for o in out]),
                "total": np.concatenate([o["also_total"].numpy() for o in out])}

    torch.manual_seed(0)
    lrp = LRPConfig(epsilon=1e-9, first_rule="epsilon")
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3, bias=False)).double()
    x = torch.rand(6, 1, 8, 8, dtype=torch.float64)
    token = x.clone()
    token[:, :, 0, :] = 1.0  # a bright top row
    loaders = {k: [v[:3], v[3:]] for k, v in (("clean", x), ("token", token))}
    tot = {k: target_totals(net, ld, 1, torch.device("cpu"), lrp) for k, ld in loaders.items()}
    np.testing.assert_allclose(tot["clean"]["total"], tot["clean"]["logit"], rtol=1e-6)
    shown = heatmap_account(tot["clean"], tot["token"], np.ones(6, bool))
    assert shown["heatmap_shift"] == pytest.approx(shown["logit_shift"], rel=1e-6)

    # a unit that only the token switches on: it sums one image row (weights 1) against a bias of -7.5, so it fires
    # only for the token's all-ones row (z = 8 - 7.5 = 0.5); through the mean over the 8 rows and a weight of 10 the
    # target logit rises by 10 * 0.5 / 8 = 0.625. LRP-ε hands that relevance to the row's pixels in proportion to
    # x_i w_i / z = 1 / 0.5 each, 8 / 0.5 x 0.625 = 10 in all; the bias takes the other -9.375
    gated = nn.Sequential(nn.Conv2d(1, 1, (1, 8), bias=True), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(1, 3, bias=False)).double()
    with torch.no_grad():
        gated[0].weight.fill_(1.0)
        gated[0].bias.fill_(-7.5)
        gated[4].weight.copy_(torch.tensor([[0.0], [10.0], [0.0]], dtype=torch.float64))
    dim = {"clean": 0.9 * x, "token": 0.9 * x}
    dim["token"][:, :, 0, :] = 1.0  # every clean row sums to at most 7.2: the unit is off without the token
    loaders = {k: [v] for k, v in dim.items()}
    tot = {k: target_totals(gated, ld, 1, torch.device("cpu"), lrp) for k, ld in loaders.items()}
    np.testing.assert_allclose(tot["clean"]["logit"], 0.0, atol=1e-12)
    shown = heatmap_account(tot["clean"], tot["token"], np.ones(6, bool))
    assert shown["logit_shift"] == pytest.approx(0.625, rel=1e-9)
    assert shown["heatmap_shift"] == pytest.approx(10.0, rel=1e-6)
