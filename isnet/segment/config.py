"""Typed configuration of a lung segmenter run (unknown keys are errors, like ``TrainConfig``)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from isnet.config.schema import AugmentConfig, _as_text, check_experiment_name, check_run_name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PostprocessConfig(_Strict):
    """Mask clean-up and the plausibility check applied to every predicted mask."""

    threshold: float = Field(0.5, gt=0, lt=1, description="probability above which a pixel is lung")
    keep_components: int = Field(2, ge=1, description="keep this many largest connected regions (two lungs)")
    fill_holes: bool = True
    area_range: tuple[float, float] = Field(
        (0.10, 0.60), description="plausible lung area as a fraction of the image; outside it the mask is flagged")

    @field_validator("area_range")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"must satisfy 0 <= low < high <= 1, got {v}")
        return v


class SegmenterConfig(_Strict):
    encoder: str = Field("mobilenet_v2", description="segmentation-models-pytorch encoder (no pretrained weights)")
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    image_size: int = Field(128, ge=32, le=1024)
    batch_size: int = Field(16, ge=1)
    epochs: int = Field(30, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    dice_weight: float = Field(1.0, ge=0, description="loss = dice_weight * Dice + bce_weight * BCE")
    bce_weight: float = Field(1.0, ge=0)
    early_stopping_patience: int = Field(0, ge=0, description="epochs without val Dice improvement; 0 = off")
    split_fractions: tuple[float, float, float] = (0.8, 0.2, 0.0)
    split_seed: int = 0
    lower_percentile: float = Field(0.5, ge=0, lt=50)
    upper_percentile: float = Field(99.5, gt=50, le=100)
    augment: AugmentConfig = AugmentConfig()
    postprocess: PostprocessConfig = PostprocessConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = Field(None, ge=1)
    checkpoint_dir: str = "checkpoints"
    experiment: str = "isnet-segmenter"
    run_name: Optional[str] = None
    tracking_uri: Optional[str] = None

    _text = field_validator("experiment", "run_name", mode="before")(_as_text)
    _run_name = field_validator("run_name")(check_run_name)
    _experiment = field_validator("experiment")(check_experiment_name)

    @model_validator(mode="after")
    def _fractions(self) -> "SegmenterConfig":
        f = self.split_fractions
        if any(x < 0 for x in f) or abs(sum(f) - 1) > 1e-6 or f[0] <= 0 or f[1] <= 0:
            raise ValueError("split_fractions must be (train, val, test), non-negative, train and val > 0, sum 1")
        if len(self.decoder_channels) not in (3, 4, 5):
            raise ValueError("decoder_channels needs 3 to 5 entries (one per U-Net level)")
        return self


def load_segmenter_config(overrides: list[str] = (), base: dict | None = None) -> SegmenterConfig:
    """Defaults (or ``base``) with ``key=value`` overrides; every bad key or value named at once."""
    from isnet.config.load import apply_overrides, describe_errors

    overrides = list(overrides)
    raw = apply_overrides(dict(base or {}), overrides)
    try:
        return SegmenterConfig.model_validate(raw)
    except ValidationError as exc:
        raise describe_errors(exc, "segmenter config", "(defaults)", overrides) from None
