"""Lung segmenter: post-processing and the quality flag, then train → predict on phantoms through the CLI."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from monai.transforms import Compose
from PIL import Image

from isnet.data import io
from isnet.data.manifest import load_manifest
from isnet.data.phantom import generate_dataset
from isnet.data.transforms import base_transforms
from isnet.segment import SegmenterConfig, clean_mask, dice_iou, load_segmenter_config, mask_quality, predict_mask
from isnet.segment.train import data_config
from isnet.errors import ConfigError

from conftest import CLASSES, run_isnet


def _two_lungs(h: int = 64, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[10:54, 8:28] = 1
    m[10:54, 36:56] = 1
    return m


def test_clean_mask_keeps_two_largest_and_fills_holes():
    m = _two_lungs()
    noisy = m.copy()
    noisy[20:24, 14:18] = 0          # a hole (dense lesion)
    noisy[0:3, 0:3] = 1              # speckles outside the chest
    noisy[60:62, 60:63] = 1
    out = clean_mask(noisy)
    assert np.array_equal(out, m)
    assert clean_mask(noisy, fill_holes=False)[21, 15] == 0
    assert clean_mask(noisy, keep_components=3).sum() == m.sum() + 9


def test_quality_flag_for_implausible_masks():
    assert mask_quality(_two_lungs()) == "ok"                     # area 0.43
    assert mask_quality(np.zeros((64, 64))) == "implausible: empty mask"
    small = np.zeros((64, 64), np.uint8)
    small[5:10, 5:10] = 1
    small[5:10, 40:45] = 1
    assert mask_quality(small).startswith("implausible: lung area 0.012 of the image < 0.10")
    assert mask_quality(np.ones((64, 64))).startswith("implausible: lung area 1.000 of the image > 0.60")
    one = _two_lungs()
    one[10:54, 28:36] = 1                                           # the lungs merged into one region
    assert mask_quality(one) == "implausible: one lung region (two expected)"
    assert mask_quality(_two_lungs(), area_range=(0.5, 0.6)).startswith("implausible")
    assert dice_iou(_two_lungs(), _two_lungs()) == (1.0, 1.0)
    d, i = dice_iou(_two_lungs(), one)
    assert i == pytest.approx(_two_lungs().sum() / one.sum()) and d == pytest.approx(2 * i / (1 + i))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="postprocess.area_range"):
        load_segmenter_config(["postprocess.area_range=[0.7,0.2]"])
    with pytest.raises(ConfigError, match="encodr"):
        load_segmenter_config(["encodr=resnet18"])
    assert load_segmenter_config(["optim.epochs=3"]).optim.epochs == 3 and SegmenterConfig().encoder == "mobilenet_v2"
    with pytest.raises(ConfigError, match=r"'data\.split_fractions'.*train and val > 0"):
        load_segmenter_config(["data.split_fractions=[1.0,0.0,0.0]"])


def test_old_flat_config_is_read_into_the_blocks():
    """Checkpoints and runs stored before the data/optim/tracking blocks hold those keys at the top level."""
    flat = {"encoder": "mobilenet_v2", "decoder_channels": [64, 32, 16, 16, 8], "image_size": 64, "batch_size": 8,
            "epochs": 3, "lr": 0.01, "weight_decay": 0.0, "dice_weight": 1.0, "bce_weight": 0.5,
            "early_stopping_patience": 2, "split_fractions": [0.7, 0.3, 0.0], "split_seed": 4,
            "lower_percentile": 1.0, "upper_percentile": 99.0, "augment": {"enabled": False},
            "postprocess": {"threshold": 0.4}, "seed": 1, "device": "cpu", "threads": 1, "checkpoint_dir": "c",
            "experiment": "old-seg", "run_name": "r1", "tracking_uri": None}
    cfg = SegmenterConfig.model_validate(flat)
    assert (cfg.data.image_size, cfg.data.batch_size, cfg.data.split_fractions, cfg.data.split_seed) == \
        (64, 8, (0.7, 0.3, 0.0), 4)
    assert (cfg.data.lower_percentile, cfg.data.upper_percentile, cfg.data.augment.enabled) == (1.0, 99.0, False)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.epochs, cfg.optim.early_stopping_patience) == \
        (0.01, 0.0, 3, 2)
    assert (cfg.tracking.experiment, cfg.tracking.run_name, cfg.tracking.tracking_uri) == ("old-seg", "r1", None)
    assert (cfg.bce_weight, cfg.postprocess.threshold, cfg.seed, cfg.checkpoint_dir) == (0.5, 0.4, 1, "c")
    assert SegmenterConfig.model_validate(cfg.model_dump(mode="json")) == cfg  # the new form reads back as it is
    # a flat key and its block key at once is refused, not silently resolved
    with pytest.raises(ValueError, match="lr is given twice"):
        SegmenterConfig.model_validate({"lr": 0.1, "optim": {"lr": 0.2}})
    # an old flat --set key is applied to its block and reported under the block's name
    assert load_segmenter_config(["epochs=3", "image_size=64"]).optim.epochs == 3
    with pytest.raises(ConfigError, match=r"--set optim\.epochs=0: 'optim\.epochs'"):
        load_segmenter_config(["epochs=0"])
    # defaults unchanged by the move
    d = SegmenterConfig()
    assert (d.data.image_size, d.data.batch_size, d.data.split_fractions, d.optim.lr, d.optim.epochs,
            d.optim.early_stopping_patience, d.tracking.experiment) == (128, 16, (0.8, 0.2, 0.0), 3e-3, 30, 0,
                                                                      "isnet-segmenter")


class _ImageAsLogits(torch.nn.Module):
    """A stand-in segmenter whose logits follow the input image: where it says "lung" is where the image is
    bright, so a mask mapped back to the wrong place shows."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 12


@pytest.mark.parametrize("shape", [(64, 64), (100, 50), (50, 100), (333, 517), (31, 47), (129, 128)])
def test_predicted_mask_is_mapped_back_to_the_image(tmp_path: Path, shape: tuple[int, int]):
    """The network-input mask goes back through the pipeline's inverse resize and pad to the image's own size
    and place: the same probabilities as cropping the padding and resizing bilinearly by hand, and a mask on
    the bright ellipse of the image."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    ellipse = ((yy - h / 2) ** 2 / (h / 3) ** 2 + (xx - w / 2) ** 2 / (w / 3) ** 2) < 1
    noise = np.random.default_rng(0).integers(0, 40, shape)
    path = tmp_path / "x.png"
    Image.fromarray((ellipse * 200 + noise).astype(np.uint8)).save(path)
    cfg = SegmenterConfig.model_validate({"data": {"image_size": 64}, "postprocess": {"keep_components": 1}})
    model = _ImageAsLogits()
    prob, mask = predict_mask(model, cfg, path)
    assert prob.shape == mask.shape == shape
    # by hand: where Resized(size_mode="longest") + SpatialPadd put the image in the network input
    size = cfg.data.image_size
    rh, rw = (int(round(s * size / max(shape))) for s in shape)
    top, left = (size - rh) // 2, (size - rw) // 2
    pipeline = Compose(base_transforms(data_config(cfg)))
    x = torch.as_tensor(np.asarray(pipeline({"image": str(path), "mask": ""})["image"]))
    logits = model(x[None])[:, :, top:top + rh, left:left + rw]
    by_hand = torch.sigmoid(F.interpolate(logits, size=shape, mode="bilinear", align_corners=False))[0, 0].numpy()
    np.testing.assert_allclose(prob, by_hand, atol=1e-5)
    assert dice_iou(mask, ellipse)[0] >= 0.95


@pytest.mark.slow  # over 25 s on 2 cores; the default suite must stay under 15 minutes
def test_train_then_predict_on_phantoms(tmp_path: Path):
    """Dice >= 0.9 at 64 px after a short CPU run; predict fills empty cells at the image's own size,
    flags implausible masks instead of using them, and no DICOM patient name reaches the run's files."""
    from isnet.data.phantom.generate import FAKE_NAMES

    train_set = tmp_path / "train_set"
    generate_dataset(train_set, sites=3, per_class=8, seed=1, size=64)
    work = tmp_path / "work"
    work.mkdir()
    r = run_isnet(["segmenter", "train", "--manifest", str(train_set / "manifest.csv"), "--image-size", "64",
                   "--epochs", "10", "--batch-size", "8", "--threads", "1",
                   "--set", "decoder_channels=[64,32,16,16,8]"], cwd=work, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    m = re.search(r"finished segmenter run (\w+): best epoch \d+, val Dice ([\d.]+), IoU ([\d.]+)", r.stdout)
    assert m, r.stdout
    run_id, dice = m.group(1), float(m.group(2))
    print(f"segmenter val Dice at 64 px: {dice:.4f}, IoU {float(m.group(3)):.4f}")
    assert dice >= 0.9
    assert (work / "checkpoints" / run_id / "best.pt").is_file()

    # unseen phantoms (PNG and DICOM sites), mask cells emptied except one
    new_set = tmp_path / "new_set"
    generate_dataset(new_set, sites=4, per_class=1, seed=7, size=80)
    df = pd.read_csv(new_set / "manifest.csv", dtype=str, keep_default_na=False)
    truth = {r.image: io.read_mask(new_set / r.mask) for r in df.itertuples()}
    df["mask"] = [df["mask"].iloc[0]] + [""] * (len(df) - 1)
    df.to_csv(new_set / "my.csv", index=False)
    out = tmp_path / "elsewhere" / "my_with_masks.csv"
    r = run_isnet(["segmenter", "predict", "--run", run_id, "--manifest", str(new_set / "my.csv"), "--out", str(out)],
                  cwd=work)
    assert r.returncode == 0, r.stderr[-3000:]
    res = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert len(res) == len(df) and {"mask_source", "mask_quality", "mask_flagged"} <= set(res.columns)
    assert res["mask_source"].iloc[0] == "manifest" and res["mask_quality"].iloc[0] == ""
    filled = res.iloc[1:]
    assert (filled["mask_source"] == f"segmenter:{run_id}").sum() + (filled["mask_flagged"] != "").sum() == len(filled)
    dices = []
    for row, img in zip(filled.itertuples(), df["image"].iloc[1:]):
        path = row.mask if row.mask else row.mask_flagged
        pred = io.read_mask(out.parent / path)
        assert pred.shape == truth[img].shape == io.image_shape(out.parent / row.image)
        dices.append(dice_iou(pred, truth[img])[0])
    print(f"Dice of filled masks at the images' own size (80 px): mean {np.mean(dices):.4f}, min {np.min(dices):.4f}")
    assert np.mean(dices) >= 0.9
    assert (filled["mask_quality"] == "ok").mean() >= 0.8
    # the new manifest (in another folder) is usable as it is
    loaded = load_manifest(out, CLASSES)
    assert len(loaded.frame) == len(df)

    # a range no lung fits: every prediction is flagged, recorded, and kept out of the mask column
    out2 = tmp_path / "flagged.csv"
    r = run_isnet(["segmenter", "predict", "--run", run_id, "--manifest", str(new_set / "my.csv"), "--out", str(out2),
                   "--area-range", "0.9", "1.0"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"{len(df) - 1} flagged implausible" in r.stdout
    res2 = pd.read_csv(out2, dtype=str, keep_default_na=False)
    assert (res2["mask"].iloc[1:] == "").all() and (res2["mask_flagged"].iloc[1:] != "").all()
    assert res2["mask_quality"].iloc[1:].str.contains("implausible: lung area").all()
    # refusing to overwrite, and an unknown run
    r = run_isnet(["segmenter", "predict", "--run", run_id, "--manifest", str(new_set / "my.csv"), "--out", str(out2)],
                  cwd=work)
    assert r.returncode == 2 and "already exists" in r.stderr

    # PHI: the DICOM sites' fake patient names never reach the MLflow store or the checkpoints
    for p in list((work / "mlflow").rglob("*")) + list((work / "checkpoints").rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            assert not [n for n in FAKE_NAMES if n.encode() in data], p
