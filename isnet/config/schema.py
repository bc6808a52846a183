"""The typed run configuration.

Every knob of a run lives here with its default, so that a YAML file only states what differs and the
resolved config (logged to MLflow) says everything. Unknown keys are errors: a typo must never be ignored.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BACKBONES = ("small_cnn", "resnet18", "resnet50", "densenet121", "vgg16_bn")
#: methods that compute the forward pass themselves; at most one of them can be on
FORWARD_OWNERS = ("isnet",)
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


class InputMaskConfig(_Strict):
    """Multiply every image by its dilated lung mask (the segment-then-classify baseline, ``masked_input``).

    Part of the data pipeline so that training, validation, the test evaluation, ``isnet explain`` and
    anything else that builds a dataset from a run's stored config see the same masked images.
    """

    dilation_px: int = Field(5, ge=0, le=256, description="dilation of the lung mask, in pixels of the network input")
    source: Literal["manifest"] = Field(
        "manifest", description="where the mask comes from: the manifest's mask column (fill missing masks with "
                    "`isnet segmenter predict` first)")


class DataConfig(_Strict):
    classes: list[str] = ["normal", "covid", "tb"]
    image_size: int = Field(128, ge=16, le=2048)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(0, ge=0)
    cache: Literal["memory", "none"] = "memory"
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    lower_percentile: float = Field(0.5, ge=0, lt=50)
    upper_percentile: float = Field(99.5, gt=50, le=100)
    intensity: Literal["unit", "xrv"] = Field(
        "unit", description="pixel convention of the network input. 'unit': [0, 1] after percentile scaling; "
                            "'xrv': torchxrayvision's [-1024, 1024], (2*x - 1)*1024 of that [0, 1] image "
                            "(xrv.datasets.normalize with maxval 1), applied as the last step of the pipeline")
    crop: Literal["none", "center"] = Field(
        "none", description="'center': crop the largest centred square before resizing (torchxrayvision's "
                            "XRayCenterCrop), the lung mask identically; 'none': resize the longest side, pad")
    augment: AugmentConfig = AugmentConfig()
    input_mask: Optional[InputMaskConfig] = Field(
        None, description="set from method.masked_input when that method is on; do not set by hand")

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

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-6 or v[0] <= 0:
            raise ValueError("must be three non-negative fractions (train, val, test) summing to 1")
        return v


class ModelConfig(_Strict):
    backbone: Literal["small_cnn", "resnet18", "resnet50", "densenet121", "vgg16_bn"] = "resnet18"
    width: int = Field(32, ge=4, description="base channel count of small_cnn")
    init: str = Field(
        "none", description="initial weights: 'none' (random, nothing downloaded); 'imagenet' (torchvision's "
                            "ImageNet weights of the backbone, read from torch's hub cache or model.init_path, never "
                            "downloaded); a state-dict file path; or 'run:<mlflow run id>' (fine-tune an earlier "
                            "run's best checkpoint). A 3-channel first convolution is summed over its input channels "
                            "for our 1-channel input; the classifier head is rebuilt for data.classes")
    init_path: Optional[str] = Field(None, description="the ImageNet weight file for model.init=imagenet, when it "
                                                       "is not in torch's hub cache")

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
        if self.init_path is not None and self.init != "imagenet":
            raise ValueError("model.init_path is the ImageNet weight file and needs model.init=imagenet; give a "
                             "state-dict path directly as model.init")
        return self


class OptimConfig(_Strict):
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    scheduler: Literal["cosine", "step", "none"] = "cosine"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    epochs: int = Field(10, ge=1)
    early_stopping_patience: int = Field(5, ge=0, description="epochs without val-loss improvement; 0 = off")
    grad_clip_norm: Optional[float] = Field(None, gt=0)


class ISNetConfig(_Strict):
    """ISNet loss hyper-parameters; every default is the authors' reference value (docs/methods.md has the table
    of reference vs ours), our deviations are named options."""

    variant: Literal["original", "stochastic", "selective", "selective_top"] = Field(
        "original", description="classes explained per image: original = all; stochastic = one (top class with "
                                "probability stochastic_top_prob, else a random other); selective = the lowest-"
                                "logit class's softmax quantity (Faster ISNet); selective_top = the top class's "
                                "log-probability (ours)")
    P: Union[float, dict[int, float]] = Field(
        0.7, description="weight of the heatmap loss, L = (1-P)·CE + P·L_hm: a number, or a schedule {epoch: P} "
                         "(epochs counted from 1; each value holds until the next key), e.g. {1: 0.0, 2: 0.35, 3: 0.7}")
    d: float = Field(0.9, ge=0, le=1, description="GWRP decay of the background term (0: max pooling)")
    E: float = Field(1.0, gt=0)
    A: float = Field(1.0, ge=0)
    B: float = Field(3.0, ge=0)
    C1: Optional[float] = Field(None, gt=0)
    C2: Optional[float] = Field(None, gt=0)
    fg_upper_scale: Literal["C1", "C2"] = Field(
        "C1", description="divisor of the upper side of the foreground penalty ((F - C2)/C1)^2 as the reference; "
                          "C2: our earlier relative error, which makes overshooting up to 625x cheaper")
    warmup_epochs: Optional[int] = Field(
        5, ge=1, description="plain epochs of a model copy trained only to tune C1/C2 when they are not set (the "
                             "reference's example: 5); null: as many as optim.epochs")
    band_statistic: Literal["image", "lung"] = Field(
        "image", description="per-image sample of the band: whole-image total |R| averaged over the explained "
                             "classes (reference), or lung-only total per (image, class) (ours, earlier)")
    band_mode: Literal["train", "eval"] = Field(
        "train", description="heatmaps of the band statistic: train mode during the last warm-up epoch "
                             "(reference), or eval mode after the warm-up")
    init_from_warmup: bool = Field(False, description="start ISNet training from the warm-up weights instead of "
                                                      "the initial ones (the reference discards the warm-up)")
    stochastic_top_prob: float = Field(5 / 11, ge=0, le=1, description="stochastic variant: probability of "
                                                                       "explaining the top class (reference 5/11)")
    selective_eps: float = Field(0.01, gt=0, description="selective variant: eps_s in log(p+eps_s) - log(1-p+eps_s)")
    detach: Literal["none", "biases"] = Field(
        "none", description="what the relevance graph treats as constants: none (LRP-Flex, Faster ISNet: exact "
                            "gradient) or biases (original ISNet's LRP block: biases and BatchNorm batch "
                            "statistics detached)")
    epsilon: float = Field(0.01, gt=0)
    body_rule: Literal["epsilon", "zplus", "alpha2beta1", "epsilon_zplus"] = "epsilon"
    first_rule: Literal["zb", "epsilon", "flat"] = "zb"
    grad_clip_norm: Optional[float] = Field(1.0, gt=0)
    collapse_check: bool = Field(True, description="warn once when training CE stays above 0.9·ln K after a "
                                                   "third of the epochs while L_bg falls")

    @field_validator("P")
    @classmethod
    def _p_range(cls, v):
        values = v.values() if isinstance(v, dict) else [v]
        if isinstance(v, dict):
            if not v:
                raise ValueError("a P schedule needs at least one {epoch: P} entry")
            if min(v) != 1:
                raise ValueError(f"a P schedule must start at epoch 1 (epochs count from 1), got keys {sorted(v)}")
        if any(not 0 <= p <= 1 for p in values):
            raise ValueError(f"P must lie in [0, 1], got {v}")
        return v

    def P_at(self, epoch: int) -> float:
        """P in force during ``epoch`` (counted from 1)."""
        if not isinstance(self.P, dict):
            return float(self.P)
        return float(self.P[max(k for k in self.P if k <= max(epoch, 1))])

    def lrp_config(self, value_range: tuple[float, float] = INTENSITY_RANGES["unit"]):
        """The LRP rules these settings describe, with the z^B bounds ``value_range`` (the input pixel range,
        ``DataConfig.value_range``). Runs use :meth:`TrainConfig.lrp_config`, which passes their data
        convention; every heatmap of a run (training, diagnostics, explain, reports) is made with it."""
        from isnet.lrp import LRPConfig

        low, high = value_range
        return LRPConfig(epsilon=self.epsilon, body_rule=self.body_rule, first_rule=self.first_rule,
                         low=float(low), high=float(high), detach_biases=self.detach == "biases")

    @model_validator(mode="after")
    def _band_ordered(self) -> "ISNetConfig":
        if self.C1 is not None and self.C2 is not None and self.C1 > self.C2:
            raise ValueError(f"C1 ({self.C1}) must not exceed C2 ({self.C2})")
        return self


class SGDropConfig(_Strict):
    """Saliency-guided dropout at a latent feature map: zero the features whose attribution
    ReLU(d psi_c/dz * z) is above the per-sample q_rho quantile (docs/methods.md)."""

    rho: float = Field(0.9, gt=0, lt=1, description="quantile q_rho: features attributed above it are zeroed "
                                                     "(about 1 - rho of them)")
    layer: Optional[str] = Field(None, description="module name (model.named_modules()); default: the last "
                                                   "convolutional block of the backbone")
    at: Literal["input", "output"] = Field("output", description="mask the named module's input or output")
    attribution: Literal["grad_x_act", "lrp"] = Field(
        "grad_x_act", description="attribution of the true class on the feature map: ReLU(gradient x "
                                  "activation), or the positive part of its LRP relevance (our engine, the rules "
                                  "of method.isnet)")
    rescale: bool = Field(False, description="scale kept features by 1/keep-fraction, like dropout (not in the "
                                             "paper)")
    ema: bool = Field(False, description="threshold = exponential moving average of the batch's q_rho across steps")
    ema_momentum: float = Field(0.9, ge=0, lt=1)


class RelDropConfig(_Strict):
    """Relevance-driven input dropout: occlusion guided by an eval-mode LRP pass of the true class. The
    defaults are those of the authors' reference code (docs/methods.md lists each one and our options)."""

    variant: Literal["pixel", "block", "patch"] = Field(
        "pixel", description="pixel: drop pixels by alpha*U + (1-alpha)*R >= 1 - beta; block: one box per image "
                             "on one of the top_k most relevant positions; patch: a box of 1/patch_count of "
                             "that area on one of the patch_count most relevant positions")
    prob: float = Field(0.5, ge=0, le=1, description="probability of occlusion, per image or per batch (draw)")
    draw: Optional[Literal["image", "batch"]] = Field(
        None, description="what prob applies to: each image, or the whole batch at once; null: the reference's "
                          "choice (pixel: image; block and patch: batch)")
    alpha: float = Field(0.3, ge=0, le=1, description="pixel: weight of uniform noise against relevance")
    beta: float = Field(0.5, ge=0, le=1, description="pixel: drop where alpha*U + (1-alpha)*R >= 1 - beta")
    top_k: int = Field(10, ge=1, description="block: the centre is drawn among the k most relevant positions")
    patch_count: int = Field(20, ge=1, description="patch: candidate centres (the most relevant positions) and "
                                                  "divisor of the box area")
    area: tuple[float, float] = Field((0.02, 0.4), description="block/patch: box area range, fraction of the image")
    aspect: tuple[float, float] = Field((0.3, 1 / 0.3), description="block/patch: aspect-ratio range (log-uniform)")
    random_centre: float = Field(0.0, ge=0, le=1, description="block/patch: probability that a box is centred on "
                                                              "a uniformly random pixel instead (0: never)")
    epsilon: float = Field(0.001, gt=0, description="LRP-epsilon of the relevance pass")
    first_rule: Optional[Literal["zb", "epsilon", "flat"]] = Field(
        "flat", description="LRP rule at the first layer of the relevance pass; null: method.isnet.first_rule")
    body_rule: Optional[Literal["epsilon", "zplus", "alpha2beta1", "epsilon_zplus"]] = Field(
        "epsilon", description="LRP rule of the other layers of the relevance pass; null: method.isnet.body_rule")
    fill: Literal["dataset_mean", "image_mean", "zero", "noise"] = Field(
        "dataset_mean", description="value of occluded pixels: the training split's mean (measured at the start "
                                    "of training unless fill_value is set), the image's own mean, 0, or U[0, 1]")
    fill_value: Optional[float] = Field(None, description="fill: dataset_mean: this value (in the network's input "
                                                          "convention) instead of measuring the mean")
    engine: Literal["isnet", "zennit"] = Field(
        "isnet", description="LRP engine of the relevance pass: ours, or zennit with an equivalent composite (a "
                             "cross-check; slower, and no DenseNet)")

    @model_validator(mode="after")
    def _ranges(self) -> "RelDropConfig":
        lo, hi = self.area
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"area must be 0 < low <= high <= 1, got {self.area}")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"aspect must be 0 < low <= high, got {self.aspect}")
        if self.fill_value is not None and self.fill != "dataset_mean":
            raise ValueError(f"fill_value is the value of fill=dataset_mean; it has no meaning with fill={self.fill!r}")
        return self


class RRRConfig(_Strict):
    """Right for the right reasons: lam * mean over images of ||(1 - m) * d(sum_c log p_c)/dx||^2."""

    lam: float = Field(10.0, ge=0, description="weight of the input-gradient penalty (the same at every batch "
                                               "size with gradient: sample); measured on 64 px phantoms in "
                                               "docs/methods.md")
    gradient: Literal["sample", "batch_mean"] = Field(
        "sample", description="sample: each image's own input gradient; batch_mean: the gradient of the batch "
                              "mean of sum_c log p_c, as ISNet's published RRR baseline (1/B of it, so the "
                              "penalty scales as 1/B^2 and lam depends on the batch size)")


class MethodParams(_Strict):
    isnet: ISNetConfig = ISNetConfig()
    sgdrop: SGDropConfig = SGDropConfig()
    reldrop: RelDropConfig = RelDropConfig()
    rrr: RRRConfig = RRRConfig()
    masked_input: InputMaskConfig = InputMaskConfig()


class RunConfig(_Strict):
    seed: int = 0
    deterministic: bool = True
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "on", "off"] = "auto"
    checkpoint_dir: str = "checkpoints"
    threads: Optional[int] = Field(None, ge=1, description="torch CPU threads; default: torch's choice")
    val_bg_share: bool = Field(True, description="measure the background relevance share on validation each epoch")
    heatmap_every: int = Field(1, ge=0, description="log a validation heatmap grid every N epochs; 0 = never")
    sync_bn: bool = Field(False, description="distributed runs: convert BatchNorm to SyncBatchNorm (batch statistics over all ranks)")


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


class TrackingConfig(_Strict):
    experiment: str = "isnet"
    run_name: Optional[str] = None
    tracking_uri: Optional[str] = Field(None, description="default: $MLFLOW_TRACKING_URI or sqlite:///mlflow/mlflow.db")
    log_model: bool = True

    _text = field_validator("experiment", "run_name", mode="before")(_as_text)
    _run_name = field_validator("run_name")(check_run_name)
    _experiment = field_validator("experiment")(check_experiment_name)


class TrainConfig(_Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    train: RunConfig = RunConfig()
    tracking: TrackingConfig = TrackingConfig()
    methods: list[Literal["standard", "isnet", "sgdrop", "reldrop", "rrr", "masked_input"]] = ["standard"]
    method: MethodParams = MethodParams()

    @field_validator("methods")
    @classmethod
    def _methods_compatible(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("lists a method twice")
        if "standard" in v and len(v) > 1:
            raise ValueError("'standard' means plain cross-entropy and cannot be combined with other methods")
        owners = [m for m in v if m in FORWARD_OWNERS]
        if len(owners) > 1:
            raise ValueError(f"methods {owners} each compute their own forward pass and cannot be combined")
        return v or ["standard"]

    def lrp_config(self):
        """The LRP rules of this run: ``method.isnet``'s rules with z^B bounds = the range of
        ``data.intensity`` ([0, 1] or [-1024, 1024])."""
        return self.method.isnet.lrp_config(self.data.value_range)

    @model_validator(mode="after")
    def _intensity_compatible(self) -> "TrainConfig":
        """RelDrop's 'zero' and 'noise' fills are values of the [0, 1] convention (black, U[0, 1]); under
        another convention they would occlude with mid-grey, so the combination is refused."""
        if self.data.intensity != "unit" and "reldrop" in self.methods and \
                self.method.reldrop.fill in ("zero", "noise"):
            raise ValueError(
                f"method.reldrop.fill={self.method.reldrop.fill!r} fills occluded pixels with values of the "
                f"[0, 1] intensity convention and cannot be used with data.intensity={self.data.intensity!r} "
                f"(range {self.data.value_range}); set method.reldrop.fill=dataset_mean (or image_mean) or "
                f"data.intensity=unit")
        return self

    @model_validator(mode="after")
    def _zennit_backbone(self) -> "TrainConfig":
        """zennit has no canonizer for the BatchNorms after DenseNet's concatenations: no equivalent composite."""
        if "reldrop" in self.methods and self.method.reldrop.engine == "zennit" and \
                self.model.backbone.startswith("densenet"):
            raise ValueError(f"method.reldrop.engine=zennit cannot explain {self.model.backbone} with our rules "
                             f"(zennit has no DenseNet canonizer); use method.reldrop.engine=isnet")
        return self

    @model_validator(mode="after")
    def _warmup_follows_training(self) -> "TrainConfig":
        """Resolve ``method.isnet.warmup_epochs: null`` so that the logged config holds the number used."""
        if self.method.isnet.warmup_epochs is None:
            self.method.isnet.warmup_epochs = self.optim.epochs
        return self

    @model_validator(mode="after")
    def _input_mask_follows_method(self) -> "TrainConfig":
        """The masked-input method is a property of the data: stored in ``data.input_mask`` so that every
        pipeline built from this config (val, test, explain) masks the images the way training did."""
        want = self.method.masked_input if "masked_input" in self.methods else None
        if self.data.input_mask != want:
            self.data.input_mask = want
        return self
