"""The typed run configuration.

Every knob of a run lives here with its default, so that a YAML file only states what differs and the
resolved config (logged to MLflow) says everything. Unknown keys are errors: a typo must never be ignored.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Literal, Optional

from pydantic import (BaseModel, ConfigDict, Field, PrivateAttr, computed_field, create_model, field_validator,
                      model_validator)

from isnet.config.registry import MethodParams, check_combination, method_names, method_specs

BACKBONES = ("small_cnn", "resnet18", "resnet50", "densenet121", "vgg16_bn")
#: torchxrayvision's pixel range: images are mapped to [-XRV_MAX, XRV_MAX]
XRV_MAX = 1024.0
#: the range of the network input under each ``data.intensity`` convention
INTENSITY_RANGES = {"unit": (0.0, 1.0), "xrv": (-XRV_MAX, XRV_MAX)}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class AugmentConfig(_Strict):
    enabled: bool = True
    prob: float = Field(0.5, ge=0, le=1)
    rotate_deg: float = Field(5.0, ge=0, le=45)
    scale: float = Field(0.05, ge=0, le=0.5)
    translate: float = Field(0.03, ge=0, le=0.3)
    gamma: tuple[float, float] = (0.8, 1.25)


class InputMaskConfig(MethodParams):
    """Multiply every image by its dilated lung mask (the segment-then-classify baseline, ``masked_input``).

    Part of the data pipeline so that training, validation, the test evaluation, ``isnet explain`` and
    anything else that builds a dataset from a run's stored config see the same masked images.
    """

    dilation_px: int = Field(5, ge=0, le=256, description="dilation of the lung mask, in pixels of the network input")
    source: Literal["manifest"] = Field(
        "manifest", description="where the mask comes from: the manifest's mask column (fill missing masks with "
                    "`isnet segmenter predict` first)")

    def resolve(self, cfg: "TrainConfig", enabled: bool) -> None:
        """The masked-input method is a property of the data: derived into ``data.input_mask`` so that every
        pipeline built from this config (val, test, explain) masks the images the way training did."""
        cfg.data.set_input_mask(self if enabled else None)


class DataCore(_Strict):
    """The data settings of every network trained here, classifier (:class:`DataConfig`) and lung segmenter
    (``isnet.segment.config``): input size, batching, the split of rows left without one, intensity scaling
    and augmentation. Each holds them once; the segmenter's block only changes some defaults."""

    image_size: int = Field(128, ge=16, le=2048)
    batch_size: int = Field(32, ge=1)
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    lower_percentile: float = Field(0.5, ge=0, lt=50)
    upper_percentile: float = Field(99.5, gt=50, le=100)
    augment: AugmentConfig = AugmentConfig()

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6 or v[0] <= 0:
            raise ValueError("must be three non-negative fractions (train, val, test) summing to 1")
        return v


class DataConfig(DataCore):
    classes: list[str] = ["normal", "covid", "tb"]
    num_workers: int = Field(0, ge=0)
    cache: Literal["memory", "disk", "none"] = Field(
        "memory", description="where the deterministic part of the pipeline (load, percentile scaling, crop, "
                              "resize/pad) is kept after the first decode. 'memory': MONAI CacheDataset, filled "
                              "before training (data.cache_rate / data.cache_max_gb cache a part); 'disk': MONAI "
                              "PersistentDataset under data.cache_dir/<key of the settings>, filled during the "
                              "first epoch and reused by later runs; 'none': decode every image every epoch")
    cache_dir: str = Field(
        "cache", description="data.cache=disk: the folder of the disk caches (relative to the working directory); "
                             "each combination of the settings that change the cached images gets its own "
                             "subfolder, logged as the run's data.cache_folder param")
    cache_dtype: Literal["auto", "uint8", "uint16", "float16", "float32"] = Field(
        "auto", description="dtype of the cached [0, 1] image (memory and disk caches), converted back to float32 "
                            "right after the cache, before augmentation. uint8/uint16: 256/65536 levels (error at "
                            "most half a level: 1/510, 1/131070); float16: relative error 2^-11; float32: as "
                            "computed. 'auto': uint8 for 8-bit sources, uint16 for 9-16-bit sources, float16 when "
                            "the file does not say. Masks are cached as uint8 (exact) unless float32")
    cache_rate: float = Field(1.0, gt=0, le=1, description="data.cache=memory: fraction of each split's images "
                                                           "kept in memory (MONAI CacheDataset's cache_rate); the "
                                                           "others are decoded every epoch")
    cache_max_gb: Optional[float] = Field(
        None, gt=0, description="data.cache=memory: at most this many GiB of cached images per process (training "
                                "and validation together), turned into a cache rate from the measured size of one "
                                "cached image; the smaller of this and data.cache_rate applies")
    intensity: Literal["unit", "xrv"] = Field(
        "unit", description="pixel convention of the network input. 'unit': [0, 1] after percentile scaling; "
                            "'xrv': torchxrayvision's [-1024, 1024], (2*x - 1)*1024 of that [0, 1] image "
                            "(xrv.datasets.normalize with maxval 1), applied as the last step of the pipeline")
    crop: Literal["none", "center"] = Field(
        "none", description="'center': crop the largest centred square before resizing (torchxrayvision's "
                            "XRayCenterCrop), the lung mask identically; 'none': resize the longest side, pad")
    #: derived, not an input: see :attr:`input_mask`
    _input_mask: Optional[InputMaskConfig] = PrivateAttr(None)

    @computed_field(description="derived from method.masked_input when that method is listed; not an input")
    @property
    def input_mask(self) -> Optional[InputMaskConfig]:
        """The lung mask every pipeline of this data multiplies images by (masked-input runs), else None.

        Derived state, so not part of the schema a config is written in: the run config sets it from
        ``method.masked_input`` when ``masked_input`` is listed (:meth:`set_input_mask`). It is still in the
        dumped config (checkpoints, MLflow, the export sidecar), so a stored config shows it, and a stored
        config's value is read back by re-deriving it (:meth:`TrainConfig._derived_data_input_mask`)."""
        return self._input_mask

    def set_input_mask(self, mask: Optional[InputMaskConfig]) -> None:
        """Make every pipeline built from this data mask its images (``mask``) or not (None); the run config's
        method resolution calls it, and code that builds a pipeline without a run config may."""
        self._input_mask = mask

    @property
    def value_range(self) -> tuple[float, float]:
        """(low, high) of the pixels the network sees: the z^B bounds of LRP and the display range."""
        return INTENSITY_RANGES[self.intensity]

    @field_validator("classes")
    @classmethod
    def _two_distinct_classes(cls, v: list[str]) -> list[str]:
        if len(v) < 2 or len(set(v)) != len(v):
            raise ValueError("needs at least two distinct class names")
        return v

    @model_validator(mode="after")
    def _cache_options_fit(self) -> "DataConfig":
        if self.cache != "memory" and (self.cache_rate != 1.0 or self.cache_max_gb is not None):
            raise ValueError(f"data.cache_rate and data.cache_max_gb apply to data.cache=memory, not "
                             f"data.cache={self.cache}")
        return self


#: torchxrayvision's weight families that fit our backbones (its DenseNet121 and ResNet50 have a 1-channel stem)
XRV_BACKBONES = ("densenet121", "resnet50")
#: what torchxrayvision's weights were trained on: its [-1024, 1024] input and a centre crop
XRV_PREPROCESSING = {"intensity": "xrv", "crop": "center"}


class ModelConfig(_Strict):
    backbone: Literal["small_cnn", "resnet18", "resnet50", "densenet121", "vgg16_bn"] = "resnet18"
    width: int = Field(32, ge=4, description="base channel count of small_cnn")
    init: str = Field(
        "none", description="initial weights: 'none' (random, nothing downloaded); 'imagenet' (torchvision's "
                            "ImageNet weights of the backbone, read from torch's hub cache or model.init_path, never "
                            "downloaded); 'xrv:<weights name>' (torchxrayvision's chest X-ray weights, e.g. "
                            "xrv:densenet121-res224-all, read from its cache ~/.torchxrayvision/models_data or "
                            "model.init_path; needs the xrv extra; sets data.intensity=xrv and data.crop=center); a "
                            "state-dict file path; or 'run:<mlflow run id>' (fine-tune an earlier run's best "
                            "checkpoint). A 3-channel first convolution is summed over its input channels for our "
                            "1-channel input; the classifier head is rebuilt for data.classes")
    init_path: Optional[str] = Field(None, description="the weight file for model.init=imagenet or xrv:<name>, "
                                                       "when it is not in torch's (torchxrayvision's) cache")

    _init_text = field_validator("init", mode="before")(lambda v: str(v).strip() if v is not None else "none")

    @model_validator(mode="after")
    def _init_fits(self) -> "ModelConfig":
        if not self.init:
            raise ValueError("model.init is empty; use 'none', 'imagenet', a file path or 'run:<run id>'")
        if self.init == "imagenet" and self.backbone == "small_cnn":
            raise ValueError("model.init=imagenet: small_cnn has no ImageNet weights; choose resnet18, resnet50, "
                             "densenet121 or vgg16_bn")
        if self.init.startswith("run:") and len(self.init) == 4:
            raise ValueError("model.init='run:' needs a run id after the colon")
        if self.init.startswith("xrv:"):
            name = self.init[4:].strip()
            arch = next((a for a in XRV_BACKBONES if name.startswith(a + "-")), None)
            if arch is None:
                raise ValueError(f"model.init={self.init}: torchxrayvision weight names start with "
                                 f"{' or '.join(a + '-' for a in XRV_BACKBONES)} (e.g. xrv:densenet121-res224-all)")
            if self.backbone != arch:
                raise ValueError(f"model.init={self.init} holds {arch} weights; set model.backbone={arch} "
                                 f"(this config: {self.backbone})")
        if self.init_path is not None and self.init != "imagenet" and not self.init.startswith("xrv:"):
            raise ValueError("model.init_path is the weight file of model.init=imagenet or xrv:<name>; give a "
                             "state-dict path directly as model.init")
        return self


class OptimCore(_Strict):
    """The optimiser settings every network trained here has (classifier and lung segmenter): learning rate,
    weight decay, how long, when to stop early."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    epochs: int = Field(10, ge=1)
    early_stopping_patience: int = Field(5, ge=0, description="epochs without val-loss improvement; 0 = off")


class OptimConfig(OptimCore):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip_norm: Optional[float] = Field(None, gt=0)


class LRPRules(_Strict):
    """The LRP rules of every heatmap of a run: ISNet's training heatmaps, SGDrop's LRP attribution, the
    validation background share, ``isnet explain``, predict and the reports. The z^B bounds are the input
    range of ``data.intensity``. The defaults are ISNet's published rules."""

    epsilon: float = Field(0.01, gt=0, description="LRP-epsilon stabiliser of every layer")
    body_rule: Literal["epsilon", "zplus", "alpha2beta1", "epsilon_zplus"] = Field(
        "epsilon", description="rule of the layers after the first (epsilon_zplus: epsilon for dense layers, "
                               "z+ for convolutions)")
    first_rule: Literal["zb", "epsilon", "flat"] = Field("zb", description="rule of the first layer")
    compile: bool = Field(False, description="fuse the elementwise arithmetic of the epsilon relevance steps with "
                                             "torch.compile: same heatmaps, faster steps on large inputs (DenseNet121 "
                                             "at 224 px), tens of seconds of compilation on the first step; CPU "
                                             "needs a C++ compiler")


class MethodBlocks(BaseModel):
    """``method.<name>``: one parameter block per registered method, each validated by the parameter model
    its method registered (``isnet.config.registry``). Blocks left out take their defaults, so the logged
    config shows every method's values."""

    model_config = ConfigDict(extra="allow")

    def __getattr__(self, name: str):  # a block of a method that is not registered
        try:
            return super().__getattr__(name)
        except AttributeError:
            raise AttributeError(f"no method block {name!r}; registered methods: "
                                 f"{', '.join(method_names())}") from None


@lru_cache(maxsize=None)
def _blocks_model(fields: tuple[tuple[str, type[BaseModel]], ...]) -> type[BaseModel]:
    return create_model("method", __config__=ConfigDict(extra="forbid"),
                        **{name: (params, Field(default_factory=params)) for name, params in fields})


def validate_method_blocks(value: Any) -> MethodBlocks:
    """The ``method`` section validated against the registry: unknown blocks and keys are errors."""
    if isinstance(value, MethodBlocks):
        value = value.model_dump()
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"must be a mapping of method names to their parameters, got {type(value).__name__}")
    specs = method_specs()
    unknown = [k for k in value if k not in specs or k == "standard"]
    if unknown:
        raise ValueError(f"no method named {unknown[0]!r} takes parameters; registered methods: "
                         f"{', '.join(n for n in specs if n != 'standard')}")
    model = _blocks_model(tuple((n, s.params) for n, s in specs.items() if n != "standard"))
    validated = model.model_validate(value)
    return MethodBlocks.model_construct(**{n: getattr(validated, n) for n in type(validated).model_fields})


#: keys of ``method.isnet`` that moved to the top-level ``lrp`` section (read from configs stored before)
_MOVED_TO_LRP = ("epsilon", "body_rule", "first_rule")


class RunConfig(_Strict):
    seed: int = 0
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = "auto"
    checkpoint_dir: str = "checkpoints"
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; default: torch's choice")
    val_bg_share: bool = Field(True, description="measure the background relevance share on validation each epoch")
    heatmap_every: int = Field(1, ge=0, description="log a validation heatmap grid every N epochs; 0 = never")
    sync_bn: bool = Field(False, description="distributed runs: convert BatchNorm to SyncBatchNorm "
                                             "(batch statistics over all ranks)")


def _as_text(v):
    """A name typed on the command line is text even when YAML reads it as a number (``--run-name 2024``)."""
    return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def check_run_name(v: Optional[str]) -> Optional[str]:
    from isnet.tracking_names import MAX_RUN_NAME_LENGTH, name_problem

    problem = None if v is None else name_problem(v, "the run name", MAX_RUN_NAME_LENGTH)
    if problem:
        raise ValueError(problem)
    return v


def check_experiment_name(v: str) -> str:
    from isnet.tracking_names import MAX_EXPERIMENT_NAME_LENGTH, name_problem

    problem = name_problem(v, "the experiment name", MAX_EXPERIMENT_NAME_LENGTH)
    if problem:
        raise ValueError(problem)
    return v


class TrackingCore(_Strict):
    """Where a run is recorded (classifier and lung segmenter): MLflow experiment, run name, store."""

    experiment: str = "isnet"
    run_name: Optional[str] = None
    tracking_uri: Optional[str] = Field(None, description="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow/mlflow.db")

    _text = field_validator("experiment", "run_name", mode="before")(_as_text)
    _run_name = field_validator("run_name")(check_run_name)
    _experiment = field_validator("experiment")(check_experiment_name)


class TrackingConfig(TrackingCore):
    log_model: bool = True


class TrainConfig(_Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()
    lrp: LRPRules = LRPRules()
    methods: list[str] = Field(["standard"], description="training methods, by registered name "
                                                         "(isnet.config.registry); combined in one objective")
    method: MethodBlocks = Field(default_factory=dict, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _derived_data_input_mask(cls, raw: Any) -> Any:
        """Stored configs (checkpoints, runs, a dumped config fed back) hold ``data.input_mask``, which is derived
        from ``method.masked_input``: drop it here, the method resolution below sets it again (a config stored
        by a run always agrees; ``load_config`` refuses a hand-written one that does not)."""
        if isinstance(raw, dict) and isinstance(raw.get("data"), dict) and "input_mask" in raw["data"]:
            raw = {**raw, "data": {k: v for k, v in raw["data"].items() if k != "input_mask"}}
        return raw

    @model_validator(mode="before")
    @classmethod
    def _rules_moved_to_lrp(cls, raw: Any) -> Any:
        """Configs stored by earlier versions kept the LRP rules under ``method.isnet``; read them as ``lrp``."""
        if not isinstance(raw, dict):
            return raw
        isnet = (raw.get("method") or {}).get("isnet") if isinstance(raw.get("method"), dict) else None
        if isinstance(isnet, dict) and any(k in isnet for k in _MOVED_TO_LRP):
            isnet = dict(isnet)
            moved = {k: isnet.pop(k) for k in _MOVED_TO_LRP if k in isnet}
            raw = {**raw, "method": {**raw["method"], "isnet": isnet}}
            if "lrp" not in raw:
                raw["lrp"] = moved
        return raw

    @field_validator("methods")
    @classmethod
    def _methods_registered(cls, v: list[str]) -> list[str]:
        return check_combination(v) or ["standard"]

    @field_validator("method", mode="wrap")
    @classmethod
    def _method_blocks(cls, v: Any, handler) -> MethodBlocks:
        return validate_method_blocks(v)

    @model_validator(mode="after")
    def _xrv_weights_get_xrv_input(self) -> "TrainConfig":
        """torchxrayvision's weights only make sense on its input convention: switch the data settings left at
        their defaults, refuse ones set otherwise by hand."""
        if not self.model.init.startswith("xrv:"):
            return self
        for key, want in XRV_PREPROCESSING.items():
            have = getattr(self.data, key)
            if have == want:
                continue
            if key in self.data.model_fields_set:
                raise ValueError(f"model.init={self.model.init}: torchxrayvision's weights expect data.{key}: "
                                 f"{want}, this config sets data.{key}: {have}; remove that setting (it is then "
                                 f"switched to {want}) or start from other weights")
            setattr(self.data, key, want)
        return self

    @model_validator(mode="after")
    def _methods_resolve_and_check(self) -> "TrainConfig":
        """Each method block fills what depends on the rest of the config (e.g. ISNet's warm-up length) and,
        when its method is listed, checks its constraints across sections."""
        for name in method_names():  # 'standard' has no block: getattr gives None
            params = getattr(self.method, name, None)
            if isinstance(params, MethodParams):
                params.resolve(self, name in self.methods)
        for name in self.methods:
            params = getattr(self.method, name, None)
            if isinstance(params, MethodParams):
                params.check(self)
        return self
