"""torchxrayvision's conventions as an option: [-1024, 1024] intensities (``data.intensity: xrv``) and the
largest centred square crop (``data.crop: center``), through training, LRP, checkpoints and explain.

References are written here with numpy from torchxrayvision's documented formulas (the package is not a
dependency): ``normalize(img, maxval) = (2 * (img / maxval) - 1) * 1024`` and XRayCenterCrop's
``img[:, h//2 - s//2 : ... + s, w//2 - s//2 : ... + s]`` with ``s = min(h, w)``."""

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image
from torch import nn

from isnet.config import load_config
from isnet.config.schema import DataConfig, InputMaskConfig
from isnet.data import io
from isnet.data.dataset import build_dataset
from isnet.data.phantom import generate_dataset
from isnet.data.transforms import build_transforms
from isnet.errors import ConfigError
from isnet.lrp import LRPConfig, lrp_heatmaps, run_lrp_config
from isnet.tracking import store_uri


def xrv_normalize_np(img: np.ndarray, maxval: float) -> np.ndarray:
    return (2 * (img.astype(np.float64) / maxval) - 1.0) * 1024.0


def xrv_center_crop_np(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[-2:]
    s = min(h, w)
    y0, x0 = h // 2 - s // 2, w // 2 - s // 2
    return img[..., y0:y0 + s, x0:x0 + s]


def percentile_scale_np(img: np.ndarray, lower: float, upper: float) -> np.ndarray:
    lo, hi = np.percentile(img, lower), np.percentile(img, upper)
    return np.clip((img.astype(np.float64) - lo) / (hi - lo), 0.0, 1.0)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("xrv") / "phantom", sites=2, per_class=4, seed=5, size=64)


def _records(manifest: Path) -> list[dict]:
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    return [{"image": str(manifest.parent / r.image), "mask": str(manifest.parent / r.mask), "label": 0,
             "row": i + 2} for i, r in enumerate(df.itertuples(index=False))]


def test_xrv_intensities_follow_the_xrv_formula_on_phantoms(phantoms: Path):
    """Our [0, 1] percentile-scaled image is the input of normalize with maxval = 1."""
    recs = _records(phantoms)
    cfg = DataConfig(image_size=64, intensity="xrv", cache="none", augment={"enabled": False})
    unit = build_dataset(recs, DataConfig(image_size=64, cache="none"), train=False)
    xrv = build_dataset(recs, cfg, train=False)
    assert len(recs) == 24
    for k, rec in enumerate(recs):
        x, u = xrv[k]["image"], unit[k]["image"]
        assert x.shape == (1, 64, 64) and x.dtype == torch.float32
        assert float(x.min()) == -1024.0 and float(x.max()) == 1024.0       # percentile clip hits both ends
        want = xrv_normalize_np(percentile_scale_np(io.read_image(rec["image"]), 0.5, 99.5), maxval=1.0)
        np.testing.assert_allclose(x[0].numpy(), want, rtol=0, atol=2e-3)
        np.testing.assert_allclose(x.numpy(), xrv_normalize_np(u.numpy(), 1.0), rtol=0, atol=2e-3)
        torch.testing.assert_close(xrv[k]["mask"], unit[k]["mask"])        # masks are not rescaled


def _non_square(phantoms: Path, out: Path) -> tuple[np.ndarray, np.ndarray, Path]:
    """A phantom cut to 64 x 45 (odd surplus) with its mask, and an 8-bit copy spanning exactly 0..255."""
    df = pd.read_csv(phantoms, dtype=str, keep_default_na=False)
    img = io.read_image(phantoms.parent / df.image[0])[:, 7:52]
    mask = io.read_mask(phantoms.parent / df["mask"][0])[:, 7:52]
    img = np.round((img - img.min()) / (img.max() - img.min()) * 255).astype(np.uint8)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(out / "i.png")
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(out / "m.png")
    return img, (mask > 0).astype(np.float32), out


def test_center_crop_makes_a_square_and_crops_the_mask_identically(phantoms: Path, tmp_path: Path):
    img, mask, d = _non_square(phantoms, tmp_path)
    assert img.shape == (64, 45) and img.min() == 0 and img.max() == 255
    rec = {"image": str(d / "i.png"), "mask": str(d / "m.png"), "label": 1}
    # image_size = the square's side: resizing is the identity, so the comparison is pixel-exact
    cfg = DataConfig(image_size=45, crop="center", intensity="xrv", lower_percentile=0, upper_percentile=100)
    out = build_transforms(cfg, train=False)(rec)
    assert out["image"].shape == out["mask"].shape == (1, 45, 45)
    # min-max scaling of an 8-bit image spanning 0..255 is xrv's normalize(img, 255)
    want = xrv_center_crop_np(xrv_normalize_np(img, 255.0))
    np.testing.assert_allclose(out["image"][0].numpy(), want, rtol=0, atol=2e-3)
    np.testing.assert_array_equal(out["mask"][0].numpy(), xrv_center_crop_np(mask))
    np.testing.assert_array_equal(xrv_center_crop_np(mask), mask[10:55])   # rows 32 - 22 = 10 .. 54
    assert mask[:10].sum() + mask[55:].sum() > 0, "the crop should cut some lung away (non-trivial check)"

    # odd height, even side (65 x 44): xrv starts at 65//2 - 44//2 = 10, not at ceil(21/2) = 11; and a smaller
    # network input: crop, then area-resize (here an exact 2:1 block mean of the 44-px square)
    img65 = np.concatenate([img[:, :44], img[-1:, :44]])
    mask65 = np.concatenate([mask[:, :44], mask[-1:, :44]])
    Image.fromarray(img65).save(d / "i65.png")
    Image.fromarray(mask65.astype(np.uint8) * 255).save(d / "m65.png")
    small = build_transforms(DataConfig(image_size=22, crop="center", intensity="xrv", lower_percentile=0,
                                        upper_percentile=100), train=False)
    out = small({"image": str(d / "i65.png"), "mask": str(d / "m65.png"), "label": 1})
    sq = xrv_center_crop_np(xrv_normalize_np(img65, 255.0))
    np.testing.assert_array_equal(sq, xrv_normalize_np(img65, 255.0)[10:54])
    blocks = sq.reshape(22, 2, 22, 2).mean((1, 3))
    np.testing.assert_allclose(out["image"][0].numpy(), blocks, rtol=0, atol=2e-3)
    m = out["mask"][0].numpy()
    assert set(np.unique(m)) <= {0.0, 1.0}
    crop_mask = xrv_center_crop_np(mask65)
    # nearest-neighbour resize of the identically cropped mask: every output pixel is one of its 2x2 block
    lo, hi = crop_mask.reshape(22, 2, 22, 2).min((1, 3)), crop_mask.reshape(22, 2, 22, 2).max((1, 3))
    assert ((m >= lo) & (m <= hi)).all() and (lo != hi).any()

    # without the crop the long side is resized and the short side padded with black, -1024 under xrv
    padded = build_transforms(DataConfig(image_size=64, intensity="xrv"), train=False)(rec)
    assert padded["image"].shape == (1, 64, 64)
    assert float(padded["image"][0, :, :9].max()) == -1024.0 and float(padded["mask"][0, :, :9].sum()) == 0


def test_masked_input_fills_with_black_under_xrv(phantoms: Path):
    rec = _records(phantoms)[0]
    cfg = DataConfig(image_size=64, intensity="xrv")
    cfg.set_input_mask(InputMaskConfig(dilation_px=0))
    out = build_transforms(cfg, train=False)(rec)
    outside = out["image"][out["mask"] < 0.5]
    assert outside.numel() > 0 and float(outside.max()) == -1024.0
    assert float(out["image"][out["mask"] > 0.5].max()) > -1024.0


def test_zb_bounds_follow_the_intensity_convention():
    """z^B with bounds [-1024, 1024] on x = (2u - 1)·1024 through a first layer with w/2048 (and the bias
    that makes the forward pass identical) gives the heatmap of z^B with [0, 1] on u; [0, 1] bounds do not."""
    assert run_lrp_config(load_config(None, ["data.intensity=xrv"])) == LRPConfig(low=-1024.0, high=1024.0)
    assert run_lrp_config(load_config(None, [])) == LRPConfig(low=0.0, high=1.0)
    torch.manual_seed(0)
    unit = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)).double()
    xrv = copy.deepcopy(unit)
    with torch.no_grad():
        w, b = unit[0].weight, unit[0].bias
        xrv[0].weight.copy_(w / 2048.0)
        xrv[0].bias.copy_(b + w.sum((1, 2, 3)) / 2.0)
    u = torch.rand(2, 1, 12, 12, dtype=torch.float64)
    x = (2 * u - 1) * 1024
    target = torch.tensor([[0], [2]])
    logits_u, heat_u = lrp_heatmaps(unit, u, target, config=LRPConfig(low=0.0, high=1.0))
    logits_x, heat_x = lrp_heatmaps(xrv, x, target, config=run_lrp_config(load_config(None, ["data.intensity=xrv"])))
    torch.testing.assert_close(logits_x, logits_u)
    torch.testing.assert_close(heat_x, heat_u)
    _, wrong = lrp_heatmaps(xrv, x, target, config=LRPConfig(low=0.0, high=1.0))
    assert not torch.allclose(wrong, heat_u, atol=1e-3)


def test_invalid_combinations_fail_at_config_validation():
    with pytest.raises(ConfigError) as exc:
        load_config(None, ["data.intensity=xrv", "methods=[reldrop]", "method.reldrop.fill=zero"])
    msg = str(exc.value)
    assert "method.reldrop.fill='zero'" in msg and "data.intensity='xrv'" in msg and "fill=dataset_mean" in msg
    with pytest.raises(ConfigError, match="'noise'"):
        load_config(None, ["data.intensity=xrv", "methods=[isnet,reldrop]", "method.reldrop.fill=noise"])
    for fill in ("dataset_mean", "image_mean"):  # the default fill is a value of the run's own convention
        ok = load_config(None, ["data.intensity=xrv", "methods=[reldrop]", f"method.reldrop.fill={fill}"])
        assert ok.data.value_range == (-1024.0, 1024.0)
    assert load_config(None, ["methods=[reldrop]"]).data.intensity == "unit"      # default unchanged
    for override, key in (("data.intensity=hu", "data.intensity"), ("data.crop=middle", "data.crop")):
        with pytest.raises(ConfigError, match=f"'{key}'"):
            load_config(None, [override])


def test_isnet_trains_under_xrv_and_explain_reuses_the_convention(phantoms, tmp_path, monkeypatch):
    import isnet.measure.relevance as relevance_mod  # the one LRP pass of diagnostics and explain
    import isnet.methods.isnet as isnet_mod
    from isnet.evaluate.explain import explain_run
    from isnet.train.loading import load_run_model
    from isnet.train.run import train

    seen: list[tuple[str, float, float, float, float]] = []

    def spy(where, original):
        def wrapped(model, x, *args, **kw):
            config = kw.get("config", LRPConfig())
            seen.append((where, config.low, config.high, float(x.min()), float(x.max())))
            return original(model, x, *args, **kw)
        return wrapped

    for mod, name in ((isnet_mod, "isnet"), (relevance_mod, "relevance")):
        monkeypatch.setattr(mod, "lrp_heatmaps", spy(name, mod.lrp_heatmaps))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [
        "methods=[isnet]", "model.backbone=small_cnn", "model.width=4", "data.image_size=64",
        "data.intensity=xrv", "data.crop=center", "optim.epochs=1", "method.isnet.warmup_epochs=1",
        "train.heatmap_every=1", "tracking.log_model=false", "train.threads=1", "data.batch_size=8",
    ])
    result = train(cfg, phantoms, progress=False)
    run = MlflowClient(store_uri()).get_run(result.run_id)
    assert run.data.params["data.intensity"] == "xrv" and run.data.params["data.crop"] == "center"
    m = run.data.metrics
    for key in ("train_ce", "train_L_bg", "train_L_fg", "val_bg_share", "test_accuracy"):
        assert key in m and np.isfinite(m[key]), key
    assert {"isnet", "relevance"} <= {s[0] for s in seen}
    for where, low, high, xmin, xmax in seen:
        assert (low, high) == (-1024.0, 1024.0), where
        assert -1024.0 <= xmin < -1.0 and 1.0 < xmax <= 1024.0, (where, xmin, xmax)   # xrv inputs

    _, loaded = load_run_model(result.run_id)               # the checkpoint carries the convention
    assert loaded.data.intensity == "xrv" and loaded.data.crop == "center"
    assert run_lrp_config(loaded).low == -1024.0
    seen.clear()
    table = explain_run(result.run_id, phantoms, tmp_path / "explain", max_images=4)
    assert len(table) == 4 and table["bg_share"].between(0, 1).all()
    assert seen and all(s[0] == "relevance" and (s[1], s[2]) == (-1024.0, 1024.0) and s[3] < -1.0 for s in seen)


def test_rrr_penalty_is_on_the_unit_image_under_xrv():
    """λ keeps its meaning: the penalty of a model on xrv inputs equals that of the same model on [0, 1]."""
    from isnet.methods.rrr import RRRMethod, rrr_penalty

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 64, 3)).double()
    u = torch.rand(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    x = ((2 * u - 1) * 1024).detach().requires_grad_(True)
    mask = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    mask[..., 2:6, 2:6] = 1
    want = rrr_penalty(net(u), u, mask)
    span = RRRMethod(load_config(None, ["data.intensity=xrv", "methods=[rrr]"])).span
    assert span == 2048.0 and RRRMethod(load_config(None, ["methods=[rrr]"])).span == 1.0
    got = rrr_penalty(net((x + 1024) / 2048), x, mask, span)
    torch.testing.assert_close(got, want)
    assert float(want) > 0


def test_heatmap_figures_show_xrv_images_with_their_range():
    from isnet.measure.figures import display_range, heatmap_grid

    img = np.linspace(-1024, 1024, 64, dtype=np.float32).reshape(8, 8)
    heat = np.random.default_rng(0).normal(size=(8, 8))
    fig = heatmap_grid([img], [None], [heat], value_range=(-1024.0, 1024.0))
    assert fig.axes[0].images[0].get_clim() == (-1024.0, 1024.0)
    assert display_range([img]) == (-1024.0, 1024.0) and display_range([(img + 1024) / 2048]) == (0.0, 1.0)
    fig = heatmap_grid([img], [None], [heat])                 # no range given (e.g. the stress test's figures)
    assert fig.axes[0].images[0].get_clim() == (-1024.0, 1024.0)
