from pathlib import Path

import pytest
import yaml

from isnet.config import TrainConfig, apply_overrides, load_config
from isnet.errors import ConfigError

from conftest import REPO


def test_defaults_validate_and_overrides_apply():
    cfg = load_config(None, ["optim.lr=0.01", "data.image_size=64", "methods=[isnet]", "method.isnet.P=0.5"])
    assert cfg.optim.lr == 0.01 and cfg.data.image_size == 64
    assert cfg.methods == ["isnet"] and cfg.method.isnet.P == 0.5
    assert cfg.method.isnet.d == 0.9 and cfg.method.isnet.B == 3.0  # published defaults


@pytest.mark.parametrize("override, key", [
    ("optim.lrr=0.1", "optim.lrr"),
    ("optim.lr=fast", "optim.lr"),
    ("data.image_size=-3", "data.image_size"),
    ("model.backbone=alexnet", "model.backbone"),
    ("surprise=1", "surprise"),
    ("method.isnet.varient=stochastic", "method.isnet.varient"),
])
def test_bad_key_or_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as exc:
        load_config(None, [override])
    assert f"'{key}'" in str(exc.value)


def test_incompatible_methods_rejected():
    with pytest.raises(ConfigError, match="standard"):
        load_config(None, ["methods=[standard,isnet]"])


def test_every_pipeline_file_validates():
    """Each workflow's YAML validates against its own schema (training configs, the stress-test sweep)."""
    from isnet.evaluate.stress.config import load_stress_config

    files = sorted((REPO / "pipelines").glob("*.yaml"))
    assert files, "pipelines/ holds no YAML configs"
    for f in files:
        raw = yaml.safe_load(f.read_text())
        if "biases" in raw:
            load_stress_config(f)
        else:
            load_config(f)


def test_yaml_errors_name_the_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_into_non_section_is_an_error():
    with pytest.raises(ConfigError, match="not a section"):
        apply_overrides({"optim": {"lr": 1}}, ["optim.lr.x=2"])
    assert isinstance(TrainConfig(), TrainConfig)


def test_isnet_warmup_defaults_to_the_reference_and_null_is_resolved_in_the_config():
    """The reference tunes the band on a 5-epoch warm-up; null means as long as the run, and the resolved number
    is what the logged config holds."""
    assert load_config(None, ["optim.epochs=7"]).method.isnet.warmup_epochs == 5
    cfg = load_config(None, ["optim.epochs=7", "method.isnet.warmup_epochs=null"])
    assert cfg.method.isnet.warmup_epochs == 7
    assert cfg.model_dump()["method"]["isnet"]["warmup_epochs"] == 7
    assert load_config(None, ["optim.epochs=7", "method.isnet.warmup_epochs=3"]).method.isnet.warmup_epochs == 3
