"""Masked input: image × dilated lung mask in every pipeline built from the run's config."""

import pytest
import torch
import yaml
from pydantic import ValidationError

from isnet.config import load_config
from isnet.config.schema import DataConfig, InputMaskConfig, TrainConfig
from isnet.errors import ConfigError
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


def test_input_mask_is_derived_not_an_input(tmp_path):
    """data.input_mask is derived from method.masked_input: not in the schema a config is written in, still in
    every dumped config, and a stored config (holding it) loads back to the same run config."""
    cfg = load_config(None, ["methods=[masked_input]", "method.masked_input.dilation_px=3"])
    stored = cfg.model_dump(mode="json")
    assert stored["data"]["input_mask"] == {"dilation_px": 3, "source": "manifest"}
    assert TrainConfig.model_validate(stored) == cfg
    assert TrainConfig.model_validate(stored).data.input_mask == InputMaskConfig(dilation_px=3)
    assert "input_mask" not in DataConfig.model_json_schema()["properties"]
    with pytest.raises(ValidationError, match="input_mask"):
        DataConfig(input_mask={"dilation_px": 1})
    # a stored value is re-derived, as the method resolution always did: another method set gives no mask
    other = {**stored, "methods": ["standard"]}
    assert TrainConfig.model_validate(other).data.input_mask is None
    # a config file or --set that writes it is refused unless it agrees with the methods (a dumped config)
    with pytest.raises(ConfigError, match=r"--set data\.input_mask\.dilation_px=1: data\.input_mask is derived"):
        load_config(None, ["methods=[masked_input]", "data.input_mask.dilation_px=1"])
    with pytest.raises(ConfigError, match="data.input_mask is derived"):
        load_config(None, ["data.input_mask.dilation_px=5"])
    dumped = tmp_path / "run_config.yaml"
    dumped.write_text(yaml.safe_dump(stored))
    assert load_config(dumped) == cfg
    # copies of the data settings keep it (evaluation pipelines are built from copies)
    assert cfg.data.model_copy(update={"cache": "none"}).input_mask == InputMaskConfig(dilation_px=3)


def test_transform_masks_image_and_requires_a_mask(toy_manifest):
    folder = toy_manifest.parent
    rec = {"image": str(folder / "img000.png"), "mask": str(folder / "mask000.png"), "label": 0, "row": 2}
    plain = build_transforms(DataConfig(image_size=40), train=False)(rec)
    cfg = DataConfig(image_size=40)
    cfg.set_input_mask(InputMaskConfig(dilation_px=1))
    masked = build_transforms(cfg, train=False)(rec)
    keep = dilate_mask(plain["mask"], 1)
    assert torch.equal(masked["image"], plain["image"] * keep)
    assert (masked["image"][keep == 0] == 0).all() and (masked["image"][keep == 1] != 0).any()
    with pytest.raises(RuntimeError) as exc:  # MONAI wraps it; the cause names the row
        build_transforms(cfg, train=False)({**rec, "mask": ""})
    assert "row 2 has no lung mask" in str(exc.value.__cause__)
