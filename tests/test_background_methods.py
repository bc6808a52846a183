"""bg_swap, bg_consistency and group_dro do what they claim (docs/methods.md), through their public interfaces."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from isnet.config import load_config
from isnet.data.background import BackgroundSwapd
from isnet.data.bias import InjectBiasd, parse_bias
from isnet.data.dataset import eval_loader
from isnet.data.manifest import load_manifest
from isnet.data.phantom import generate_dataset
from isnet.methods import BgConsistencyMethod, BgSwapMethod, GroupDROMethod, StepOutput, consistency_divergence

from conftest import run_isnet

CLASSES = ["normal", "covid", "tb"]


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("bg") / "ph", sites=2, per_class=20, seed=3, size=64)


def _cfg(*overrides: str):
    return load_config(None, ["model.backbone=small_cnn", "model.width=4", "data.image_size=64", *overrides])


def _biased_batches(phantoms: Path):
    """The training images with the stress test's triangle on every covid image (strength 1), in batches."""
    cfg = _cfg()
    manifest = load_manifest(phantoms, CLASSES)
    records = manifest.records("train") + manifest.records("val") + manifest.records("test")
    bias = InjectBiasd([parse_bias("shape:triangle")], target=CLASSES.index("covid"), mode="train", strength=1.0)
    return list(eval_loader(records, cfg.data, batch_size=16, extra=[bias]))


def _presence_by_class(batches, method=None, epochs: int = 1) -> dict[bool, float]:
    """Share of images whose background carries the bias, for covid images and for the others, over
    ``epochs`` passes in shuffled batches of 16 (as a training loader draws them)."""
    trainer = SimpleNamespace(model=torch.nn.Linear(1, 1))  # a model in training mode
    keys = ("image", "mask", "label", "bias_region", "bias_present")
    data = {k: torch.cat([b[k] for b in batches]) for k in keys}
    gen = torch.Generator().manual_seed(0)
    hits = {True: [], False: []}
    for _ in range(epochs):
        for idx in torch.randperm(len(data["label"]), generator=gen).split(16):
            out = {k: v[idx] for k, v in data.items()}
            out = method.before_forward(out, trainer) if method is not None else out
            covid = out["label"] == CLASSES.index("covid")
            for is_covid in (True, False):
                hits[is_covid] += out["bias_present"][covid == is_covid].tolist()
    return {k: sum(v) / len(v) for k, v in hits.items()}


def test_bg_swap_at_p1_makes_the_bias_independent_of_the_class(phantoms):
    batches = _biased_batches(phantoms)
    before = _presence_by_class(batches)
    assert before == {True: 1.0, False: 0.0}  # the biased set: the token gives the class away
    method = BgSwapMethod(_cfg("methods=[bg_swap]", "method.bg_swap.prob=1.0"))
    after = _presence_by_class(batches, method, epochs=40)
    overall = 1 / 3  # a third of the images are covid and carry the token before the swap
    assert after[True] == pytest.approx(after[False], abs=0.04)
    assert after[True] == pytest.approx(overall, abs=0.06) and after[False] == pytest.approx(overall, abs=0.06)


def test_bg_swap_keeps_the_lungs_and_moves_the_background(phantoms):
    batch = _biased_batches(phantoms)[0]
    swap = BackgroundSwapd(prob=1.0, dilation_px=0)
    swap.set_random_state(seed=1)
    out = swap(dict(batch))
    lungs = batch["mask"] > 0.5
    assert torch.equal(out["image"][lungs], batch["image"][lungs])
    src = out["background_from"]  # the first batch draws its donors from itself
    assert bool((src >= 0).all()) and len(set(src.tolist())) > 1
    assert torch.equal(out["image"][~lungs], batch["image"][src][~lungs])
    second = swap(dict(batch))  # later batches draw from the batch before
    assert torch.equal(second["image"][~lungs], batch["image"][second["background_from"]][~lungs])
    half = BackgroundSwapd(prob=0.0)(dict(batch))  # p = 0: nothing changes
    assert torch.equal(half["image"], batch["image"])


def test_consistency_is_zero_when_the_swap_changes_nothing(phantoms):
    torch.manual_seed(0)
    from isnet.models import build_classifier

    cfg = _cfg("methods=[bg_consistency]")
    model = build_classifier("small_cnn", num_classes=3, width=4)
    batch = _biased_batches(phantoms)[0]
    x = batch["image"]
    swapped = x.clone()
    swapped[1:] = x[1:].flip(-1)  # the others change; image 0 is left as it is
    kl = consistency_divergence(model, x, swapped)
    assert float(kl[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(kl[1:].max()) > 1e-4
    # through the method's loss hook: a batch in which every image has the same background (black outside one
    # shared lung mask), so that whichever donor is drawn the swap changes nothing, scores 0
    shared = batch["mask"][:1].expand_as(batch["mask"])
    flat = {"image": x * shared, "mask": shared, "label": batch["label"]}
    method = BgConsistencyMethod(cfg)
    terms = method.loss(torch.tensor(1.0), StepOutput(logits=model(flat["image"])), flat,
                        SimpleNamespace(model=model))
    assert float(terms.terms["bg_consistency"]) == pytest.approx(0.0, abs=1e-6)
    terms = method.loss(torch.tensor(1.0), StepOutput(logits=model(x)), dict(batch), SimpleNamespace(model=model))
    assert float(terms.terms["bg_consistency"]) > 1e-5


def test_group_dro_weights_rise_for_the_worst_group():
    cfg = _cfg("methods=[group_dro]", "method.group_dro.groups=[site, label]")
    method = GroupDROMethod(cfg)
    method.on_fit_start(SimpleNamespace(manifest=None))
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    sites = ["a", "a", "a", "a", "b", "b", "b", "b"]
    logits = torch.zeros(8, 3)
    logits[torch.arange(8), labels] = 4.0  # every image right, confidently ...
    logits[6:, :] = torch.tensor([4.0, 0.0, 0.0])  # ... except site b's class-1 images: the worst group
    batch = {"label": labels, "site": sites}
    for _ in range(5):
        terms = method.loss(torch.tensor(0.0), StepOutput(logits=logits), batch, None)
    q = method.weights()
    assert set(q) == {("a", 0), ("a", 1), ("b", 0), ("b", 1)}
    assert q[("b", 1)] > 0.25 and q[("b", 1)] == max(q.values())
    assert all(q[g] < 0.25 for g in q if g != ("b", 1))
    assert terms.ce_weight == 0.0 and float(terms.terms["group_dro"]) > 0


def test_group_dro_on_a_manifest_column_and_a_missing_one(phantoms, tmp_path):
    common = ["--manifest", str(phantoms), "--set", "methods=[group_dro]", "--set",
              "model.backbone=small_cnn", "--set", "model.width=4", "--set", "data.image_size=64", "--set",
              "optim.epochs=1", "--set", "tracking.log_model=false", "--set", "train.heatmap_every=0", "--set",
              "train.val_bg_share=false"]
    ok = run_isnet(["train", *common, "--set", "method.group_dro.groups=[sex]"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = run_isnet(["train", *common, "--set", "method.group_dro.groups=[scanner]"], cwd=tmp_path)
    assert bad.returncode != 0
    assert "scanner" in bad.stderr and "manifest.csv" in bad.stderr and "Traceback" not in bad.stderr
