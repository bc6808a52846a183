"""Typed configuration of a lung segmenter run (unknown keys are errors, like ``TrainConfig``).

The data, optimiser and tracking settings are blocks (``data``, ``optim``, ``tracking``) built on the classifier
config's own (``DataCore``, ``OptimCore``, ``TrackingCore``), so a setting has one name, type and bound in both.
Configs written before, with those keys at the top level, are still read (:func:`flat_key_block`)."""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from isnet.config.schema import DataCore, OptimCore, TrackingCore


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


class SegmenterData(DataCore):
    """The classifier's data settings (``data``), with the segmenter's own defaults and limits."""

    image_size: int = Field(128, ge=32, le=1024)
    batch_size: int = Field(16, ge=1)
    split_fractions: tuple[float, float, float] = (0.8, 0.2, 0.0)

    @field_validator("split_fractions")
    @classmethod
    def _validation_split(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if v[1] <= 0:  # the best epoch is chosen by validation Dice
            raise ValueError("must be (train, val, test), non-negative, train and val > 0, sum 1")
        return v


class SegmenterOptim(OptimCore):
    """The classifier's core optimiser settings (``optim``): AdamW with a one-cycle learning-rate schedule
    peaking at ``lr``."""

    lr: float = Field(3e-3, gt=0)
    epochs: int = Field(30, ge=1)
    early_stopping_patience: int = Field(0, ge=0, description="epochs without val Dice improvement; 0 = off")


class SegmenterTracking(TrackingCore):
    """Where the run is recorded (``tracking``), in its own experiment by default."""

    experiment: str = "isnet-segmenter"


#: the blocks that hold keys a segmenter config used to have at its top level (configs stored before)
_BLOCKS: dict[str, type[BaseModel]] = {"data": SegmenterData, "optim": SegmenterOptim, "tracking": SegmenterTracking}


def flat_key_block(key: str) -> str | None:
    """The block (``data``, ``optim``, ``tracking``) a top-level key of an old flat segmenter config moved to."""
    return next((block for block, model in _BLOCKS.items() if key in model.model_fields), None)


class SegmenterConfig(_Strict):
    """A lung segmenter run: the network, its loss, the post-processing of predicted masks, and the data,
    optimiser and tracking blocks it shares with a classifier's config (``isnet.config.schema``)."""

    encoder: str = Field("mobilenet_v2", description="segmentation-models-pytorch encoder (no pretrained weights)")
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    data: SegmenterData = SegmenterData()
    optim: SegmenterOptim = SegmenterOptim()
    dice_weight: float = Field(1.0, ge=0, description="loss = dice_weight * Dice + bce_weight * BCE")
    bce_weight: float = Field(1.0, ge=0)
    postprocess: PostprocessConfig = PostprocessConfig()
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = Field(None, ge=1)
    checkpoint_dir: str = "checkpoints"
    tracking: SegmenterTracking = SegmenterTracking()

    @model_validator(mode="before")
    @classmethod
    def _flat_keys_into_blocks(cls, raw: Any) -> Any:
        """Configs stored before the blocks (checkpoints, logged runs) held the data, optimiser and tracking
        settings at the top level (``image_size``, ``lr``, ``experiment``, ...): read them into their blocks.
        A key given both ways is an error rather than a silent choice."""
        if not isinstance(raw, dict):
            return raw
        moved = {k: flat_key_block(k) for k in raw if k not in cls.model_fields}
        moved = {k: block for k, block in moved.items() if block is not None}
        if not moved:
            return raw
        raw = dict(raw)
        for key, block in moved.items():
            section = raw.get(block)
            section = {} if section is None else section
            section = section.model_dump() if isinstance(section, BaseModel) else section
            if not isinstance(section, dict):
                return raw  # not a mapping: its own validation error says so
            section = dict(section)
            if key in section:
                raise ValueError(f"{key} is given twice, at the top level and as {block}.{key}; keep {block}.{key}")
            section[key] = raw.pop(key)
            raw[block] = section
        return raw

    @model_validator(mode="after")
    def _decoder_levels(self) -> "SegmenterConfig":
        if len(self.decoder_channels) not in (3, 4, 5):
            raise ValueError("decoder_channels needs 3 to 5 entries (one per U-Net level)")
        return self


def _into_block(override: str) -> str:
    """``epochs=3`` (an old top-level key) as ``optim.epochs=3``: applied to, and reported as, its block's key."""
    block = flat_key_block(override.split("=", 1)[0].strip()) if "=" in override else None
    return f"{block}.{override.strip()}" if block else override


def load_segmenter_config(overrides: list[str] = (), base: dict | None = None) -> SegmenterConfig:
    """Defaults (or ``base``) with ``key=value`` overrides; every bad key or value named at once."""
    from isnet.config.load import apply_overrides, describe_errors

    overrides = [_into_block(o) for o in overrides]
    raw = apply_overrides(dict(base or {}), overrides)
    try:
        return SegmenterConfig.model_validate(raw)
    except ValidationError as exc:
        raise describe_errors(exc, "segmenter config", "(defaults)", overrides) from None
