"""Validated run configuration: YAML in ``pipelines/`` → typed schema with defaults."""

from isnet.config.load import apply_overrides, load_config, config_to_dict
from isnet.config.schema import TrainConfig

__all__ = ["TrainConfig", "load_config", "apply_overrides", "config_to_dict"]
