"""ISNet heatmap loss: background relevance minimisation (docs/design.md, section 4).

Works on heatmap tensors only (the LRP engine lives in ``isnet.lrp``), so it can
be tested and reused without a model.  Shapes: heatmaps ``[B, K, H, W]`` (one
map per explained class, already summed over colour channels), masks
``[B, 1, H, W]`` or ``[B, H, W]`` with 1 = lung.

Foreground term: with ``F`` the raw total ``|R|`` inside the lungs, the
penalty is ``((C1 - F) / C1)**2`` below the band and ``((F - C2) / C1)**2``
above it: both sides are scaled by C1, as in the authors' reference code
(``fg_upper_scale="C1"``, the default).  ``fg_upper_scale="C2"`` divides the
upper side by C2 instead (relative error on both sides); that makes
overshooting the band up to (C2/C1)^2 = 625x cheaper and is kept only as a
named option.  ``fg_upper_loss="hybrid"`` is the upper side of the Faster ISNet
paper (the default of the reference's training modules; its run scripts pass
the plain square): the square up to F = C1 + C2, where it reaches 1, then
``1 + (F - C1 - C2)`` in raw relevance units, so an image far above the band
pulls with a constant gradient instead of one that grows with the overshoot.

Band: the reference tunes C1/C2 from the *whole-image* total ``|R|`` (lungs and
background) per training image, averaged over the explained classes, from the
train-mode heatmaps of the last warm-up epoch (``image_relevance_totals``), with
the sample standard deviation (``tune_foreground_band``).  A band measured on
lung-only totals leaves no room for the relevance that ISNet moves from the
background into the lungs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, Optional

import torch
import torch.nn.functional as F_nn
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from .base import LossTerms, compose_objective
from .gwrp import gwrp
from .isnet_targets import VARIANTS, explain_targets

__all__ = [
    "ISNetLossFields",
    "ISNetLossConfig",
    "check_P",
    "explain_targets",
    "isnet_heatmap_loss",
    "isnet_loss_terms",
    "isnet_total_loss",
    "image_relevance_totals",
    "lung_relevance_totals",
    "tune_foreground_band",
]

#: the authors' weight of the heatmap loss
PUBLISHED_P = 0.7


def check_P(p: float) -> float:
    """The one rule for a value of P (a constant, or one entry of a schedule): a mixing weight in [0, 1]."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"P must lie in [0, 1], got {p}")
    return p


class ISNetLossFields(BaseModel):
    """The heatmap loss's keys, defined and validated here once: ``method.isnet`` (``ISNetParams``) inherits them
    as config keys and :class:`ISNetLossConfig` as the loss's settings, so the two cannot drift apart."""

    model_config = ConfigDict(extra="forbid")

    variant: Literal[VARIANTS] = Field(  # type: ignore[valid-type]
        "original", description="classes explained per image: original = all; stochastic = one (top class with "
                                "probability stochastic_top_prob, else a random other); selective = the lowest-"
                                "logit class's softmax quantity (Faster ISNet); selective_top = the top class's "
                                "log-probability (ours)")
    d: float = Field(0.9, ge=0, le=1, description="GWRP decay of the background term (0: max pooling)")
    E: float = Field(1.0, gt=0)
    A: float = Field(1.0, ge=0)
    B: float = Field(3.0, ge=0)
    C1: Optional[float] = Field(None, gt=0)
    C2: Optional[float] = Field(None, gt=0)
    fg_upper_scale: Literal["C1", "C2"] = Field(
        "C1", description="divisor of the upper side of the foreground penalty ((F - C2)/C1)^2 as the reference; "
                          "C2: our earlier relative error, which makes overshooting up to 625x cheaper")
    fg_upper_loss: Literal["l2", "hybrid"] = Field(
        "l2", description="upper side of the foreground penalty: l2 = ((F - C2)/C1)^2 throughout (the reference's "
                          "run scripts); hybrid = that square up to F = C1 + C2, then 1 + (F - C1 - C2) (the Faster "
                          "ISNet paper, the default of the reference's training modules)")
    conservation: float = Field(0.0, description="ours, 0 (off) in the reference: weight G of L_cons = "
                                "mean ((logit - sum R) / C1)^2 over the explained maps, added to the heatmap loss. "
                                "Relevance a heatmap does not account for went through biases (BatchNorm shifts) or "
                                "epsilon; a shortcut acting there is invisible to the background term "
                                "(docs/notes/stress-test-log.md, 'Biases, not ε')")

    @field_validator("conservation")
    @classmethod
    def _conservation_range(cls, v: float) -> float:
        if not v >= 0.0:
            raise ValueError(f"conservation must be >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _band_consistent(self) -> Any:
        if self.C1 is not None and self.C2 is not None and self.C1 > self.C2:
            raise ValueError(f"C1 ({self.C1}) must not exceed C2 ({self.C2}): the band needs C1 <= C2")
        if self.fg_upper_loss == "hybrid" and self.fg_upper_scale != "C1":
            raise ValueError("fg_upper_loss: hybrid is defined with the C1 divisor; it needs fg_upper_scale: C1")
        return self


class ISNetLossConfig(ISNetLossFields):
    """Settings of one evaluation of the ISNet loss, with the published defaults: the heatmap-loss keys of
    :class:`ISNetLossFields` (a run derives them from its ``method.isnet`` block with ``ISNetParams.loss_config``),
    the P in force and two numerical constants.

    P: weight of the heatmap loss against cross-entropy, L = (1-P)·CE + P·L_hm (one number: a schedule is
        resolved by the caller).
    C1, C2: band for the total lung relevance; None until tuned (see ``tune_foreground_band``). Required unless
        B == 0.
    eps_norm: added to the mean lung |R| before dividing, so a vanishing lung relevance does not divide by zero.
    mask_threshold: mask values above it count as lung.
    """

    P: float = PUBLISHED_P
    eps_norm: float = Field(1e-6, gt=0)
    mask_threshold: float = 0.5

    @field_validator("P")
    @classmethod
    def _p_range(cls, v: float) -> float:
        return check_P(v)


def _prepare(heatmaps: Tensor, masks: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Check shapes; return |R| [B, K, H, W] (float32 at least) and a 0/1 mask [B, 1, H, W]."""
    if not isinstance(heatmaps, Tensor) or heatmaps.dim() != 4:
        shape = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise ValueError(f"heatmaps must have shape [B, K, H, W], got {shape}")
    if not heatmaps.is_floating_point():
        raise ValueError(f"heatmaps must be floating point, got {heatmaps.dtype}")
    if not isinstance(masks, Tensor) or masks.dim() not in (3, 4):
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(f"masks must have shape [B, 1, H, W] or [B, H, W], got {shape}")
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    if masks.shape[1] != 1:
        raise ValueError(f"masks must have a single channel, got shape {tuple(masks.shape)}")
    if masks.shape[0] != heatmaps.shape[0]:
        raise ValueError(f"masks batch size {masks.shape[0]} != heatmaps batch size {heatmaps.shape[0]}")
    # Sums over ~50k pixels overflow half precision; compute the loss in float32 at least.
    dtype = heatmaps.dtype if heatmaps.dtype in (torch.float32, torch.float64) else torch.float32
    abs_r = heatmaps.to(dtype).abs()
    masks = masks.detach().to(device=heatmaps.device, dtype=dtype)
    if masks.shape[-2:] != heatmaps.shape[-2:]:
        masks = F_nn.interpolate(masks, size=heatmaps.shape[-2:], mode="nearest")
    return abs_r, (masks > threshold).to(dtype)


def lung_relevance_totals(heatmaps: Tensor, masks: Tensor, mask_threshold: float = 0.5) -> Tensor:
    """Raw total |R| inside the lungs per image and class, flattened to [B*K] (image-major).

    The band statistic of ``band_statistic="lung"`` (our earlier choice); the reference uses
    ``image_relevance_totals``.
    """
    abs_r, m = _prepare(heatmaps, masks, mask_threshold)
    return (abs_r * m).sum(dim=(-2, -1)).reshape(-1)


def image_relevance_totals(heatmaps: Tensor) -> Tensor:
    """Whole-image total |R| (lungs and background) per image, averaged over the K explained maps: [B].

    The reference's statistic for tuning C1/C2 (one sample per training image).
    """
    if not isinstance(heatmaps, Tensor) or heatmaps.dim() != 4:
        shape = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise ValueError(f"heatmaps must have shape [B, K, H, W], got {shape}")
    dtype = heatmaps.dtype if heatmaps.dtype in (torch.float32, torch.float64) else torch.float32
    return heatmaps.detach().to(dtype).abs().sum(dim=(-2, -1)).mean(dim=1)


def isnet_heatmap_loss(heatmaps: Tensor, masks: Tensor, cfg: ISNetLossConfig,
                       seeds: Tensor | None = None) -> dict[str, Tensor]:
    """Background (L_bg), foreground (L_fg), conservation (L_cons) and combined (L_hm) heatmap losses.

    Returns batch means ``L_bg``, ``L_fg``, ``L_cons``, ``L_hm`` (differentiable) and the
    detached diagnostics ``bg_share`` (share of |R| in the background) and
    ``fg_total`` (mean raw lung |R|).  ``seeds`` [B, K]: the relevance seeded at the output for each map (needed
    when ``cfg.conservation > 0``).  Raises ValueError when the foreground band
    is not set and ``cfg.B != 0``.
    """
    if cfg.B != 0 and (cfg.C1 is None or cfg.C2 is None):
        raise ValueError(
            "ISNet foreground band C1/C2 is not set: tune it with tune_foreground_band() on the lung "
            "relevance totals of a warm-up classifier (lung_relevance_totals), set cfg.C1 and cfg.C2 "
            "explicitly, or disable the foreground term with cfg.B = 0"
        )
    abs_r, m = _prepare(heatmaps, masks, cfg.mask_threshold)
    batch, n_maps = abs_r.shape[:2]

    lung_total = (abs_r * m).sum(dim=(-2, -1))  # [B, K]
    # Empty masks are rejected by manifest validation; clamp keeps a stray one finite.
    lung_area = m.sum(dim=(-2, -1)).clamp_min(1.0)  # [B, 1]
    lung_mean = lung_total / lung_area
    # Normalising by the lung mean makes L_bg scale-free: only the background/lung ratio counts.
    normed = abs_r / (lung_mean + cfg.eps_norm)[..., None, None]
    background = (normed * (1.0 - m)).reshape(batch * n_maps, -1)
    pooled = gwrp(background, cfg.d).reshape(batch, n_maps)
    # -log(1 - f(v)) with f(v) = v / (v + E) equals log((v + E) / E) = log1p(v / E): stable for any v >= 0.
    l_bg = torch.log1p(pooled / cfg.E).mean(dim=1).mean()

    if cfg.B == 0 and (cfg.C1 is None or cfg.C2 is None):
        l_fg = torch.zeros((), dtype=abs_r.dtype, device=abs_r.device)
    else:
        c1, c2 = float(cfg.C1), float(cfg.C2)  # type: ignore[arg-type]
        below = torch.clamp(c1 - lung_total, min=0.0) / c1
        l_fg = (below.square() + _upper_penalty(lung_total, c1, c2, cfg)).mean()

    l_hm = cfg.A * l_bg + cfg.B * l_fg
    l_cons = torch.zeros((), dtype=abs_r.dtype, device=abs_r.device)
    if cfg.conservation > 0:
        if seeds is None or tuple(seeds.shape) != (batch, n_maps):
            got = None if seeds is None else tuple(seeds.shape)
            raise ValueError(f"ISNet conservation term needs seeds of shape [B, K] = {(batch, n_maps)}, got {got}")
        if cfg.C1 is None:
            raise ValueError("ISNet conservation term is scaled by C1: tune or set the foreground band first")
        missing = seeds.to(abs_r.dtype) - heatmaps.to(abs_r.dtype).sum(dim=(-2, -1))
        l_cons = (missing / float(cfg.C1)).square().mean()
        l_hm = l_hm + cfg.conservation * l_cons

    with torch.no_grad():
        total = abs_r.sum(dim=(-2, -1))
        bg_total = (abs_r * (1.0 - m)).sum(dim=(-2, -1))
        tiny = torch.finfo(abs_r.dtype).tiny
        bg_share = (bg_total / total.clamp_min(tiny)).mean()
        fg_total = lung_total.mean()

    return {
        "L_bg": l_bg,
        "L_fg": l_fg,
        "L_cons": l_cons,
        "L_hm": l_hm,
        "bg_share": bg_share.detach(),
        "fg_total": fg_total.detach(),
    }


def _upper_penalty(lung_total: Tensor, c1: float, c2: float, cfg: ISNetLossConfig) -> Tensor:
    """Penalty for a lung total above the band: ((F - C2)/C1)^2, or under "hybrid" linear beyond C1 + C2."""
    if cfg.fg_upper_loss == "l2":
        return (torch.clamp(lung_total - c2, min=0.0) / (c1 if cfg.fg_upper_scale == "C1" else c2)).square()
    square = (torch.clamp(lung_total - c2, min=0.0, max=c1) / c1).square()
    linear = 1.0 + (lung_total - (c1 + c2))
    return torch.where(lung_total.detach() > c1 + c2, linear, square)


def isnet_loss_terms(terms: Mapping[str, Tensor] | Tensor, cfg: ISNetLossConfig,
                     metrics: Mapping[str, float] | None = None) -> LossTerms:
    """ISNet's part of the objective (1 − P)·CE + P·L_hm, in the form the trainer composes
    (``isnet.methods.base.combine_losses``): the one statement of the formula, used by the training hook and,
    through :func:`isnet_total_loss`, by the bench. ``terms`` is the heatmap-loss dict or L_hm itself."""
    l_hm = terms if isinstance(terms, Tensor) else terms["L_hm"]
    return LossTerms(ce_weight=1.0 - cfg.P, terms={"isnet": cfg.P * l_hm}, metrics=dict(metrics or {}))


def isnet_total_loss(ce: Tensor, terms: Mapping[str, Tensor] | Tensor, cfg: ISNetLossConfig) -> Tensor:
    """Total ISNet objective (1 - P)·CE + P·L_hm, composed exactly as a training step composes ISNet alone."""
    return compose_objective(ce, {"isnet": isnet_loss_terms(terms, cfg)})


def tune_foreground_band(totals: Sequence[float] | Tensor) -> tuple[float, float]:
    """C1, C2 from per-image relevance totals of a plain warm-up classifier.

    With mean μ and sample standard deviation σ (n − 1 in the denominator, as the reference) of the totals:
    C1 = max(μ/5, μ − 3σ), C2 = min(25·C1, μ + 3σ).  Always 0 < C1 <= μ <= C2.
    """
    values = torch.as_tensor(totals, dtype=torch.float64).detach().reshape(-1).cpu()
    if values.numel() < 2:
        raise ValueError(
            f"tune_foreground_band needs at least 2 lung relevance totals to estimate a spread, got {values.numel()}"
        )
    if not bool(torch.isfinite(values).all()):
        raise ValueError("tune_foreground_band got non-finite lung relevance totals (NaN or inf)")
    mu = float(values.mean())
    if mu <= 0.0:
        raise ValueError(
            f"tune_foreground_band: mean lung relevance is {mu} <= 0; the warm-up heatmaps carry no relevance "
            "(check that they are absolute totals inside the lungs and that the classifier has trained)"
        )
    sigma = float(values.std(correction=1))
    c1 = max(mu / 5.0, mu - 3.0 * sigma)
    c2 = min(25.0 * c1, mu + 3.0 * sigma)
    return c1, c2
