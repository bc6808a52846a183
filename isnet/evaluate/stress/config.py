"""Configuration of the bias-injection stress test (``isnet stress-test``, docs/design.md, section 6).

``train`` is an ordinary run configuration (``TrainConfig``) shared by every cell; each cell overrides its
``methods`` and ``train.seed``. Unknown keys are errors, as everywhere else.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Iterable, Optional, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from isnet.config.load import apply_overrides, describe_errors, read_yaml
from isnet.config.schema import TrainConfig
from isnet.data.bias import BiasSpec

_SPEC_TYPES = get_type_hints(BiasSpec)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class _BiasBase(_Strict):
    @model_validator(mode="after")
    def _valid_spec(self) -> "_BiasBase":
        self.spec()  # BiasSpec checks the ranges
        return self

    def spec(self) -> BiasSpec:
        return BiasSpec(**self.model_dump())


#: One synthetic bias in a stress-test config: the fields, types and defaults of ``isnet.data.bias.BiasSpec``
#: (sizes/margin as fractions of the image side, intensities in [0, 1], region = (top, left, bottom, right)),
#: with unknown keys refused and BiasSpec's own range checks.
BiasConfig = create_model("BiasConfig", __base__=_BiasBase, **{
    **{f.name: (_SPEC_TYPES[f.name], f.default) for f in fields(BiasSpec)},
    "margin": (float, Field(BiasSpec.margin, ge=0, lt=0.5,
                            description="lung-mask dilation, fraction of the image side")),
    "polarity": (_SPEC_TYPES["polarity"], Field(BiasSpec.polarity, description="contrast: dark on a bright background, "
                                                                                "bright on a dark one"))})


class StressConfig(_Strict):
    train: TrainConfig = TrainConfig()
    biases: list[BiasConfig] = [BiasConfig()]
    target_class: str = "covid"
    strengths: list[float] = [0.5, 0.8, 0.95, 1.0]
    seeds: list[int] = [0, 1, 2]
    methods: list[str] = ["standard", "isnet"]
    out_dir: str = "stress_test"
    relevance_images: Optional[int] = Field(None, ge=1, description="cap on test images explained per set")
    heatmap_examples: int = Field(8, ge=0)
    report: Optional[str] = Field(None, description="also write the summary table to this Markdown file")

    @field_validator("strengths")
    @classmethod
    def _strengths(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 <= s <= 1 for s in v) or len(set(v)) != len(v):
            raise ValueError("must be distinct probabilities in [0, 1]")
        return sorted(v)

    @field_validator("seeds", "methods", "biases")
    @classmethod
    def _non_empty(cls, v: list) -> list:
        if not v:
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _target_known(self) -> "StressConfig":
        if self.target_class not in self.train.data.classes:
            raise ValueError(f"target_class {self.target_class!r} is not one of train.data.classes "
                             f"{self.train.data.classes}")
        return self


def load_stress_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> StressConfig:
    raw: dict[str, Any] = read_yaml(path) if path is not None else {}
    overrides = list(overrides)
    raw = apply_overrides(raw, overrides)
    source = str(path) if path is not None else "(defaults)"
    try:
        return StressConfig.model_validate(raw)
    except ValidationError as exc:
        raise describe_errors(exc, "stress-test config", source, overrides) from None
