"""The MONAI pipeline keeps the lung mask aligned with the image and normalises intensities."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from isnet.config.schema import DataConfig
from isnet.data.transforms import build_transforms


def test_augmentation_moves_image_and_mask_together(tmp_path: Path):
    img = np.zeros((90, 60), np.uint16)
    img[20:70, 10:30] = 60000                     # 16-bit image, bright block = the "lung"
    mask = (img > 0).astype(np.uint8) * 255
    Image.fromarray(img).save(tmp_path / "i.png")
    Image.fromarray(mask).save(tmp_path / "m.png")
    cfg = DataConfig(image_size=48, augment={"prob": 1.0, "rotate_deg": 20, "scale": 0.2, "translate": 0.1,
                                             "gamma": (1.0, 1.0)})
    t = build_transforms(cfg, train=True)
    t.set_random_state(seed=3)
    outs = [t({"image": str(tmp_path / "i.png"), "mask": str(tmp_path / "m.png"), "label": 0}) for _ in range(5)]
    for d in outs:
        x, m = d["image"], d["mask"]
        assert x.shape == m.shape == (1, 48, 48) and x.dtype == torch.float32
        assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
        inside = x[m > 0.5]
        assert inside.numel() > 50 and float(inside.mean()) > 0.8          # mask covers the bright block
        assert float(x[m < 0.5].mean()) < 0.15
    assert not torch.equal(outs[0]["mask"], outs[1]["mask"])              # augmentation really ran


def test_eval_pipeline_pads_to_square_and_flags_missing_masks(tmp_path: Path):
    Image.fromarray((np.arange(100 * 50).reshape(100, 50) % 251).astype(np.uint8)).save(tmp_path / "i.png")
    d = build_transforms(DataConfig(image_size=32), train=False)({"image": str(tmp_path / "i.png"), "mask": "",
                                                                  "label": 1})
    assert d["image"].shape == (1, 32, 32) and d["has_mask"] == 0 and float(d["mask"].sum()) == 0
    assert float(d["image"][0, :, :8].abs().sum()) == 0.0                  # padding at the sides
