"""Masked input: image × dilated lung mask in every pipeline built from the run's config."""

import pytest
import torch

from isnet.config import load_config
from isnet.config.schema import DataConfig, InputMaskConfig
from isnet.data.transforms import build_transforms, dilate_mask


def test_dilate_mask_is_a_disc_of_the_given_radius():
    m = torch.zeros(1, 21, 21)
    m[0, 10, 10] = 1
    d = dilate_mask(m, 3)
    assert int(d.sum()) == 29  # lattice points with x² + y² ≤ 9
    assert d[0, 10, 13] == 1 and d[0, 12, 13] == 0
    assert torch.equal(dilate_mask(m, 0), m)


def test_config_stores_the_mask_in_the_data_section():
    cfg = load_config(None, ["methods=[masked_input]", "method.masked_input.dilation_px=2"])
    assert cfg.data.input_mask == InputMaskConfig(dilation_px=2)
    assert load_config(None, ["methods=[sgdrop]"]).data.input_mask is None


def test_transform_masks_image_and_requires_a_mask(toy_manifest):
    folder = toy_manifest.parent
    rec = {"image": str(folder / "img000.png"), "mask": str(folder / "mask000.png"), "label": 0, "row": 2}
    plain = build_transforms(DataConfig(image_size=40), train=False)(rec)
    cfg = DataConfig(image_size=40, input_mask=InputMaskConfig(dilation_px=1))
    masked = build_transforms(cfg, train=False)(rec)
    keep = dilate_mask(plain["mask"], 1)
    assert torch.equal(masked["image"], plain["image"] * keep)
    assert (masked["image"][keep == 0] == 0).all() and (masked["image"][keep == 1] != 0).any()
    with pytest.raises(RuntimeError) as exc:  # MONAI wraps it; the cause names the row
        build_transforms(cfg, train=False)({**rec, "mask": ""})
    assert "row 2 has no lung mask" in str(exc.value.__cause__)
