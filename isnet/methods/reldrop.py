"""RelDrop: relevance-driven input dropout (Gururaj et al.; defaults follow the authors' reference code).

An eval-mode LRP pass of the true class gives a relevance map R per image (``engine: isnet`` is our engine,
``engine: zennit`` the same rules as a zennit composite on an eval copy of the model,
:mod:`isnet.lrp.zennit_ref`). Default rules, as in the reference: LRP-ε with ε = 0.001 in the body and the
flat rule at the first layer. Occluded pixels get the fill value (by default the training split's mean).

* pixel variant (each image occluded with probability ``prob``): R̂ = min-max normalised R, U uniform noise;
  a pixel is dropped when α·U + (1−α)·R̂ ≥ 1 − β (α = 1: random occlusion of a fraction β; α = 0: the pixels
  with R̂ ≥ 1 − β, the most relevant ones);
* block variant (the whole batch occluded with probability ``prob``, one draw per batch): in every image one
  box whose area is drawn in ``area`` (a fraction of the image) and aspect ratio log-uniformly in ``aspect``,
  redrawn until it fits inside the image (at most 100 tries, else no box), centred on a position drawn
  uniformly among the ``top_k`` most relevant ones;
* patch variant: as block, but the centre is drawn among the ``patch_count`` most relevant positions and the
  box area is divided by ``patch_count``: one small patch per image on one of the many relevant spots.

The extra LRP pass (one forward and one relevance backward, no graph kept) is the cost of the method; with a
batch-level draw it is skipped for the batches that are not occluded.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
from pydantic import Field, model_validator

from isnet.data.dataset import build_dataset, build_loader
from isnet.lrp import LRPConfig, lrp_heatmaps
from isnet.lrp.zennit_ref import check_equivalent, zennit_heatmaps
from isnet.config.registry import MethodParams
from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext

logger = logging.getLogger(__name__)

#: tries to draw a box that fits inside the image before giving up on that image
BOX_TRIES = 100


def normalise(rel: torch.Tensor) -> torch.Tensor:
    """Per-image min-max normalisation of [B, 1, H, W] relevance to [0, 1] (a constant map becomes 0)."""
    flat = rel.flatten(1)
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(1e-12)).reshape(rel.shape)


def pixel_drop(rel: torch.Tensor, alpha: float, beta: float, gen: torch.Generator) -> torch.Tensor:
    """Boolean [B, 1, H, W]: α·U + (1−α)·R̂ ≥ 1 − β."""
    u = torch.rand(rel.shape, generator=gen).to(rel.device)
    return alpha * u + (1 - alpha) * normalise(rel) >= 1 - beta


def box_sizes(b: int, h: int, w: int, area: tuple[float, float], aspect: tuple[float, float],
              gen: torch.Generator, divisor: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Box heights and widths [B] (long): area ~ U(area)·H·W / divisor, aspect ratio h/w log-uniform in
    ``aspect``; a draw that does not fit strictly inside the image (0 < h < H, 0 < w < W) is redrawn, up to
    ``BOX_TRIES`` times; an image whose draws all fail gets a 0 × 0 box (nothing dropped)."""
    u = torch.rand(2, b, BOX_TRIES, generator=gen, dtype=torch.float64)
    target = (area[0] + u[0] * (area[1] - area[0])) * (h * w) / divisor
    log_lo, log_hi = math.log(aspect[0]), math.log(aspect[1])
    ratio = torch.exp(log_lo + u[1] * (log_hi - log_lo))
    bh = torch.round(torch.sqrt(target * ratio)).long()
    bw = torch.round(torch.sqrt(target / ratio)).long()
    fits = (bh > 0) & (bh < h) & (bw > 0) & (bw < w)
    first = torch.where(fits.any(1), fits.long().argmax(1), torch.full((b,), -1))
    idx = first.clamp_min(0)[:, None]
    ok = first >= 0
    return torch.where(ok, bh.gather(1, idx)[:, 0], 0), torch.where(ok, bw.gather(1, idx)[:, 0], 0)


def box_drop(rel: torch.Tensor, k: int, area: tuple[float, float], aspect: tuple[float, float],
             gen: torch.Generator, divisor: int = 1, random_centre: float = 0.0) -> torch.Tensor:
    """Boolean [B, 1, H, W]: one box per image (sizes from :func:`box_sizes`) centred on a position drawn
    uniformly among the image's ``k`` most relevant ones; with probability ``random_centre`` the centre is
    any pixel instead. The box spans rows [cy − ⌊h/2⌋, cy − ⌊h/2⌋ + h) (and likewise columns), cut at the
    border."""
    b, _, h, w = rel.shape
    k = min(k, h * w)
    bh, bw = box_sizes(b, h, w, area, aspect, gen, divisor)
    top = rel.detach().flatten(1).topk(k, dim=1).indices.cpu()
    pick = torch.randint(k, (b,), generator=gen)
    centre = top.gather(1, pick[:, None])[:, 0]
    if random_centre > 0:
        anywhere = torch.randint(h * w, (b,), generator=gen)
        centre = torch.where(torch.rand(b, generator=gen) < random_centre, anywhere, centre)
    cy, cx = centre // w, centre % w
    y0, x0 = cy - bh // 2, cx - bw // 2  # the centre is the box's middle pixel (of the lower half if even)
    rows = torch.arange(h)[None, :]
    cols = torch.arange(w)[None, :]
    in_rows = (rows >= y0[:, None]) & (rows < (y0 + bh)[:, None])  # [B, H]; cut at 0 and H by arange
    in_cols = (cols >= x0[:, None]) & (cols < (x0 + bw)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None].to(rel.device)


def occlude(x: torch.Tensor, drop: torch.Tensor, fill: str, gen: torch.Generator,
            value: torch.Tensor | float | None = None) -> torch.Tensor:
    """Replace the dropped pixels of x [B, C, H, W] by ``value`` (``dataset_mean``: a number or one per
    channel), zero, the image's own mean, or uniform noise."""
    if fill == "dataset_mean":
        if value is None:
            raise ValueError("RelDrop fill=dataset_mean needs the data set's mean (measured in on_fit_start)")
        v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
        fill_value = v.reshape(1, -1, 1, 1) if v.ndim else v
    elif fill == "zero":
        fill_value = torch.zeros((), dtype=x.dtype, device=x.device)
    elif fill == "image_mean":
        fill_value = x.mean((1, 2, 3), keepdim=True)
    elif fill == "noise":
        fill_value = torch.rand(x.shape, generator=gen).to(device=x.device, dtype=x.dtype)
    else:
        raise ValueError(f"unknown RelDrop fill {fill!r}")
    return torch.where(drop.expand_as(x), fill_value, x)


def dataset_mean(trainer: "TrainContext") -> list[float]:
    """Per-channel mean of the training split's images as the network receives them (the run's intensity
    convention and extra transforms, without random augmentation), from the same images on every rank. They
    are decoded without the data cache (float32): a uint8/uint16 cache moves each pixel by at most half a
    level, and the mean by less. A trainer without a manifest (the benchmark's one-step harness) gives the
    batches of its ``train_loader``."""
    if getattr(trainer, "manifest", None) is None:
        batches = trainer.train_loader
    else:
        data = trainer.cfg.data.model_copy(update={"cache": "none"})
        ds = build_dataset(trainer.manifest.records("train"), data, train=False,
                           extra=getattr(trainer, "extra_transforms", {}).get("train", ()))
        batches = build_loader(ds, data, shuffle=False)
    total, count = None, 0
    for batch in batches:
        x = batch["image"].double()
        s = x.sum((0, 2, 3))
        total = s if total is None else total + s
        count += x.shape[0] * x.shape[2] * x.shape[3]
    if total is None:
        raise ValueError("RelDrop fill=dataset_mean: the training split is empty")
    return (total / count).tolist()


class RelDropParams(MethodParams):
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
        "flat", description="LRP rule at the first layer of the relevance pass; null: lrp.first_rule")
    body_rule: Optional[Literal["epsilon", "zplus", "alpha2beta1", "epsilon_zplus"]] = Field(
        "epsilon", description="LRP rule of the other layers of the relevance pass; null: lrp.body_rule")
    fill: Literal["dataset_mean", "image_mean", "zero", "noise"] = Field(
        "dataset_mean", description="value of occluded pixels: the training split's mean (measured at the start "
                                    "of training unless fill_value is set), the image's own mean, 0, or U[0, 1]")
    fill_value: Optional[float] = Field(None, description="fill: dataset_mean: this value (in the network's input "
                                                          "convention) instead of measuring the mean")
    engine: Literal["isnet", "zennit"] = Field(
        "isnet", description="LRP engine of the relevance pass: ours, or zennit with an equivalent composite (a "
                             "cross-check; slower, and no DenseNet)")

    @model_validator(mode="after")
    def _ranges(self) -> "RelDropParams":
        lo, hi = self.area
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"area must be 0 < low <= high <= 1, got {self.area}")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ValueError(f"aspect must be 0 < low <= high, got {self.aspect}")
        if self.fill_value is not None and self.fill != "dataset_mean":
            raise ValueError(f"fill_value is the value of fill=dataset_mean; it has no meaning with fill={self.fill!r}")
        return self

    def check(self, cfg: "TrainConfig") -> None:
        # 'zero' and 'noise' are values of the [0, 1] convention (black, U[0, 1]); under another convention
        # they would occlude with mid-grey
        if cfg.data.intensity != "unit" and self.fill in ("zero", "noise"):
            raise ValueError(
                f"method.reldrop.fill={self.fill!r} fills occluded pixels with values of the [0, 1] intensity "
                f"convention and cannot be used with data.intensity={cfg.data.intensity!r} (range "
                f"{cfg.data.value_range}); set method.reldrop.fill=dataset_mean (or image_mean) or data.intensity=unit")
        # zennit has no canonizer for the BatchNorms after DenseNet's concatenations: no equivalent composite
        if self.engine == "zennit" and cfg.model.backbone.startswith("densenet"):
            raise ValueError(f"method.reldrop.engine=zennit cannot explain {cfg.model.backbone} with our rules "
                             f"(zennit has no DenseNet canonizer); use method.reldrop.engine=isnet")


@register("reldrop", params=RelDropParams)
class RelDropMethod(Method):
    name = "reldrop"

    def __init__(self, cfg: "TrainConfig"):
        self.params = cfg.method.reldrop
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 202)
        self._fraction = float("nan")
        #: the fill of ``dataset_mean`` (one value per channel): configured, or measured at fit start
        self.fill_value: list[float] | None = (None if self.params.fill_value is None
                                               else [float(self.params.fill_value)])

    @property
    def draw(self) -> str:
        """'image' or 'batch': the unit that ``prob`` applies to (null in the config: the reference's choice,
        per image for the pixel variant and per batch for block and patch)."""
        return self.params.draw or ("image" if self.params.variant == "pixel" else "batch")

    def on_fit_start(self, trainer: "TrainContext") -> None:
        if self.params.engine == "zennit":  # fail before the first step, not inside it
            try:
                check_equivalent(trainer.model, self.lrp_config(trainer))
            except ValueError as e:
                raise ValueError(f"method.reldrop.engine=zennit: {e}") from None
        if self.params.fill == "dataset_mean" and self.fill_value is None:  # not set, nor restored on resume
            self.fill_value = dataset_mean(trainer)
            logger.info(f"reldrop: occluded pixels are filled with the training split's mean "
                        f"{', '.join(f'{v:.4g}' for v in self.fill_value)}")
            if getattr(trainer, "tracker", None) is not None:
                trainer.tracker.log_params({"method.reldrop.fill_value_measured": self.fill_value[0]
                                            if len(self.fill_value) == 1 else str(self.fill_value)})

    def lrp_config(self, trainer: "TrainContext") -> LRPConfig:
        """The run's z^B bounds with RelDrop's own rules: ε = ``epsilon``, ``first_rule`` and ``body_rule``
        (each null: the run's, i.e. ``method.isnet``'s)."""
        p = self.params
        run = trainer.lrp_config
        return dataclasses.replace(run, epsilon=p.epsilon, first_rule=p.first_rule or run.first_rule,
                                   body_rule=p.body_rule or run.body_rule)

    def relevance(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  trainer: "TrainContext") -> torch.Tensor:
        """Eval-mode LRP of the true class, [B, 1, H, W]; the model's train/eval mode is restored."""
        if self.params.engine == "zennit":  # works on an eval-mode copy: the model is not touched
            return zennit_heatmaps(model, x, y, self.lrp_config(trainer))
        was_training = model.training
        model.eval()
        try:
            _, heat = lrp_heatmaps(model, x.detach(), y[:, None], config=self.lrp_config(trainer))
        finally:
            model.train(was_training)
        return heat

    def chosen(self, b: int) -> torch.Tensor:
        """Boolean [B]: which images of the batch are occluded (one draw for all under ``draw: batch``)."""
        if self.draw == "batch":
            return (torch.rand(1, generator=self.generator) < self.params.prob).expand(b)
        return torch.rand(b, generator=self.generator) < self.params.prob

    def drop_mask(self, rel: torch.Tensor) -> torch.Tensor:
        """Boolean [B, 1, H, W] of the pixels to occlude, before the per-image/per-batch choice."""
        p = self.params
        if p.variant == "pixel":
            return pixel_drop(rel, p.alpha, p.beta, self.generator)
        if p.variant == "block":
            return box_drop(rel, p.top_k, p.area, p.aspect, self.generator, random_centre=p.random_centre)
        return box_drop(rel, p.patch_count, p.area, p.aspect, self.generator, divisor=p.patch_count,
                        random_centre=p.random_centre)

    def before_forward(self, batch: dict, trainer: "TrainContext") -> dict:
        if not trainer.model.training or self.params.prob == 0:
            return batch
        x = batch["image"]
        chosen = self.chosen(x.shape[0]).to(x.device)
        if not bool(chosen.any()):  # nothing occluded: no relevance pass
            self._fraction = 0.0
            return batch
        drop = self.drop_mask(self.relevance(trainer.model, x, batch["label"], trainer))
        drop = drop & chosen[:, None, None, None]
        self._fraction = float(drop.float().mean())
        return {**batch, "image": occlude(x, drop, self.params.fill, self.generator, self.fill_value)}

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        return LossTerms(metrics={"reldrop_fraction": self._fraction})

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "fill_value": self.fill_value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])
        if state.get("fill_value") is not None:
            self.fill_value = [float(v) for v in state["fill_value"]]
