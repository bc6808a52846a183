"""The ISNet method: cross-entropy mixed with the background-relevance heatmap loss (docs/design.md, "ISNet").

One forward pass gives logits and differentiable LRP heatmaps of the classes chosen by the variant; the
heatmap loss pushes relevance out of the background. When the foreground band C1/C2 is not configured, a
short plain warm-up on a copy of the model measures it first (the reference's recipe: 5 epochs, train-mode
heatmaps of the last warm-up epoch, whole-image totals); the copy is then discarded and ISNet trains from
the initial weights unless ``init_from_warmup`` is set.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import warnings
from typing import TYPE_CHECKING, Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from isnet.lrp import lrp_heatmaps, run_lrp_config, supports_model
from isnet.config.registry import MethodParams
from isnet.methods.base import LossTerms, Method, StepOutput, register
from isnet.methods.isnet_loss import (
    PUBLISHED_P,
    ISNetLossConfig,
    ISNetLossFields,
    check_P,
    explain_targets,
    image_relevance_totals,
    isnet_heatmap_loss,
    isnet_loss_terms,
    lung_relevance_totals,
    tune_foreground_band,
)

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext

logger = logging.getLogger(__name__)

#: training CE above this fraction of ln K after a third of the epochs, while L_bg falls, is a collapse
COLLAPSE_CE_FRACTION = 0.9


def collapse_message(epoch: int, ce: float, n_classes: int, l_bg_first: float, l_bg_now: float) -> str:
    """The one warning of the collapse detector: what was seen, the likely cause and what to change."""
    return (f"isnet: possible collapse at epoch {epoch}: training cross-entropy {ce:.3f} is still above "
            f"{COLLAPSE_CE_FRACTION}·ln {n_classes} = {COLLAPSE_CE_FRACTION * math.log(n_classes):.3f} while the "
            f"background loss fell ({l_bg_first:.3f} -> {l_bg_now:.3f}). Likely cause: the heatmap loss silences "
            f"the network before it has learned lung features (all relevance, and with it the logits, shrinks). "
            f"Try the gradient balance (method.isnet.balance=0.5; it weakens the defence against strong "
            f"shortcuts), a P schedule that starts low "
            f"(method.isnet.P={{1: 0.0, 3: 0.7}}), a smaller P, or "
            f"method.isnet.init_from_warmup=true with method.isnet.warmup_epochs=null (fine-tune a trained model; "
            f"docs/notes/methods-log.md, 'ISNet from the initial weights').")


def _schedule_values(value: Any, name: str) -> list:
    """The values of a constant or an {epoch: value} schedule, whose keys are checked first."""
    if not isinstance(value, dict):
        return [value]
    if not value:
        raise ValueError(f"a {name} schedule needs at least one {{epoch: value}} entry")
    if min(value) != 1:
        raise ValueError(f"a {name} schedule must start at epoch 1 (epochs count from 1), got keys {sorted(value)}")
    return list(value.values())


def scheduled(value: Any, epoch: int) -> Any:
    """The value in force during ``epoch`` (counted from 1) of a constant or an {epoch: value} schedule, where
    each value holds until the next key."""
    if not isinstance(value, dict):
        return value
    return value[max(k for k in value if k <= max(epoch, 1))]


def _set_peak_lr(trainer: "TrainContext", lr: float) -> None:
    """Restart the run's optimiser and schedule at peak rate ``lr`` (before the first epoch)."""
    for group in trainer.optimizer.param_groups:
        group["lr"] = group["initial_lr"] = lr
    trainer.scheduler.base_lrs = [lr] * len(trainer.optimizer.param_groups)


def _same_optimizer(opt: torch.optim.Optimizer, params) -> torch.optim.Optimizer:
    """A fresh optimiser of ``opt``'s class and settings over ``params`` (the warm-up trains like the run)."""
    accepted = inspect.signature(type(opt)).parameters
    return type(opt)(params, **{k: v for k, v in opt.defaults.items() if k in accepted})


def _third_of_the_run(cfg: "TrainConfig") -> int:
    """A kept warm-up a third as long as the ISNet phase: a quarter of all epochs."""
    return max(1, round(cfg.optim.epochs / 3))


#: Named recipes: the values a recipe gives the keys that a config leaves unset (a value may be a function of
#: the run config, filled in when the config is resolved). ``published`` is the authors' reference (the schema
#: defaults); the others are ours, measured against it in docs/methods.md ("Recipes").
RECIPES: dict[str, dict[str, Any]] = {
    "published": {},
    "warm_start": {"warmup_epochs": _third_of_the_run, "init_from_warmup": True, "variant": "selective", "P": 0.5},
}


class ISNetParams(MethodParams, ISNetLossFields):
    """ISNet loss hyper-parameters; every default is the authors' reference value (docs/methods.md has the table
    of reference vs ours), our deviations are named options or recipes. The heatmap loss's own keys (variant, d,
    E, A, B, C1, C2, fg_upper_scale, fg_upper_loss, conservation) and their checks are inherited from
    :class:`ISNetLossFields`, the one definition the loss's settings (:meth:`loss_config`) share."""

    recipe: Literal[tuple(RECIPES)] = Field(  # type: ignore[valid-type]
        "published", description="a named set of defaults for the keys below that the config leaves unset: "
                                 "published = the authors' reference; warm_start (ours) = a plain warm-up a third "
                                 "as long as the ISNet phase, kept (init_from_warmup), then the selective variant "
                                 "at P 0.5")
    P: Union[float, dict[int, float]] = Field(
        PUBLISHED_P, description="weight of the heatmap loss, L = (1-P)·CE + P·L_hm: a number, or a schedule "
                                 "{epoch: P} (epochs counted from 1; each value holds until the next key), "
                                 "e.g. {1: 0.0, 2: 0.35, 3: 0.7}")
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
    finetune_lr: Optional[float] = Field(
        None, gt=0, description="ours, with init_from_warmup: the peak learning rate of the ISNet phase (the "
                                "warm-up keeps optim.lr); null: optim.lr for both")
    stochastic_top_prob: float = Field(5 / 11, ge=0, le=1, description="stochastic variant: probability of "
                                                                       "explaining the top class (reference 5/11)")
    selective_eps: float = Field(0.01, gt=0, description="selective variant: eps_s in log(p+eps_s) - log(1-p+eps_s)")
    detach: Literal["none", "biases"] = Field(
        "none", description="what the relevance graph treats as constants: none (LRP-Flex, Faster ISNet: exact "
                            "gradient) or biases (original ISNet's LRP block: biases and BatchNorm batch "
                            "statistics detached)")
    grad_clip_norm: Optional[float] = Field(1.0, gt=0)
    balance: Union[None, float, dict[int, Optional[float]]] = Field(
        None, description="ours, off in the reference: cap the weight gradient of the heatmap loss at "
                          "balance x the cross-entropy's on every step (direction kept; logged as "
                          "train_grad_balance, the factor applied). From the initial weights the heatmap "
                          "term's gradient is many times the CE's and the classifier stays near chance. A number, "
                          "or a schedule {epoch: ratio or null} like P's, e.g. {1: 0.5, 5: null}: balanced while "
                          "the features form, the published loss from epoch 5 on")
    collapse_check: bool = Field(True, description="warn once when training CE stays above 0.9·ln K after a "
                                                   "third of the epochs while L_bg falls")

    @model_validator(mode="before")
    @classmethod
    def _recipe_defaults(cls, data: Any) -> Any:
        """The recipe's values for the keys the config leaves unset (the run-dependent ones: in ``resolve``)."""
        if not isinstance(data, dict) or data.get("recipe") not in RECIPES:
            return data
        given = {k: v for k, v in RECIPES[data["recipe"]].items() if not callable(v)}
        return {**given, **data}

    @field_validator("P")
    @classmethod
    def _p_range(cls, v):
        try:
            for p in _schedule_values(v, "P"):
                check_P(p)
        except ValueError as exc:
            if isinstance(v, dict):
                raise ValueError(f"{exc} (schedule {v})") from None
            raise
        return v

    @field_validator("balance")
    @classmethod
    def _balance_range(cls, v):
        if any(r is not None and not r > 0 for r in _schedule_values(v, "balance")):
            raise ValueError(f"balance ratios must be > 0 (null: no balance), got {v}")
        return v

    def P_at(self, epoch: int) -> float:
        """P in force during ``epoch`` (counted from 1)."""
        return float(scheduled(self.P, epoch))

    def balance_at(self, epoch: int) -> float | None:
        """The gradient-balance ratio in force during ``epoch`` (None: no balance)."""
        return scheduled(self.balance, epoch)

    def final_epoch_key(self) -> int:
        """The first epoch from which both schedules (P, balance) hold their final values: the model is the
        configured ISNet only from then on."""
        return max([1] + [max(s) for s in (self.P, self.balance) if isinstance(s, dict)])

    def loss_config(self, P: float, C1: float | None, C2: float | None) -> ISNetLossConfig:
        """The heatmap loss's settings for this block: its loss keys with the P in force and the band in use
        (tuned, or the configured one); the one place a run's loss settings are derived."""
        return ISNetLossConfig(**{**self.model_dump(include=set(ISNetLossFields.model_fields)),
                                  "P": P, "C1": C1, "C2": C2})

    @model_validator(mode="after")
    def _balance_needs_ce(self) -> "ISNetParams":
        keys = {1} | {k for s in (self.P, self.balance) if isinstance(s, dict) for k in s}
        if any(self.balance_at(k) is not None and self.P_at(k) >= 1 for k in keys):
            raise ValueError("balance needs P < 1 in every epoch it is on: at P = 1 there is no cross-entropy "
                             "gradient to cap the heatmap loss's against, and every update would be zero")
        return self

    def resolve(self, cfg: "TrainConfig", enabled: bool) -> None:
        """The recipe's run-dependent values for unset keys, and ``warmup_epochs: null`` as the run's epoch count,
        so that the logged config holds the numbers used."""
        for key, value in RECIPES[self.recipe].items():
            if callable(value) and key not in self.model_fields_set:
                setattr(self, key, value(cfg))
        if self.warmup_epochs is None:
            self.warmup_epochs = cfg.optim.epochs


@register("isnet", params=ISNetParams)
class ISNetMethod(Method):
    name = "isnet"
    needs_masks = True
    owns_forward = True

    def __init__(self, cfg: "TrainConfig"):
        c = cfg.method.isnet
        self.params = c
        self.C1, self.C2 = c.C1, c.C2
        self.P = c.P_at(1)
        self.balance = c.balance_at(1)
        # with a P or balance schedule, models from before the final values are reached are not the configured
        # ISNet yet (e.g. a balanced model may still read a strong shortcut): never the best one
        self.select_from = min(c.final_epoch_key(), cfg.optim.epochs)
        self.lrp = run_lrp_config(cfg, detach_biases=c.detach == "biases")  # the run's lrp rules; our detach mode
        self.n_classes = len(cfg.data.classes)
        self._run_epochs = cfg.optim.epochs
        self.generator = torch.Generator().manual_seed(cfg.train.seed + 101)
        self._grad_norms: dict[str, float] = {}
        self._measure_grads = False
        self._first_l_bg: float | None = None
        self._warned = False

    def selectable(self, epoch: int) -> bool:
        return epoch >= self.select_from

    def loss_config(self) -> ISNetLossConfig:
        """The loss's settings now: the block's keys, this epoch's P and the tuned (or configured) band."""
        return self.params.loss_config(self.P, self.C1, self.C2)

    def band_warmup_epochs(self) -> int:
        """Plain epochs the band tuning trains before ISNet's first epoch: 0 when C1/C2 are known (configured or
        restored from a checkpoint), else ``warmup_epochs`` (null: the run's epoch count)."""
        if self.C1 is not None and self.C2 is not None:
            return 0
        return int(self.params.warmup_epochs or self._run_epochs)

    def _targets(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.params
        return explain_targets(logits, c.variant, self.generator, top_prob=c.stochastic_top_prob,
                               selective_eps=c.selective_eps)

    # -- hooks ---------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: "TrainContext") -> None:
        if not supports_model(trainer.model):
            raise ValueError(f"ISNet needs an LRP-supported backbone; {trainer.cfg.model.backbone} is not")
        epochs = self.band_warmup_epochs()
        if epochs:
            self.C1, self.C2, warm = self._tune_band(trainer, epochs)
            if self.params.init_from_warmup:
                trainer.model.load_state_dict(warm.state_dict())
                if self.params.finetune_lr is not None:
                    _set_peak_lr(trainer, self.params.finetune_lr)
                logger.info("isnet: training starts from the warm-up weights")
            logger.info(f"isnet: foreground band tuned from a {epochs}-epoch plain warm-up "
                        f"({self.params.band_statistic} totals, {self.params.band_mode} mode): "
                        f"C1={self.C1:.4g}, C2={self.C2:.4g}")
            trainer.tracker.log_params({"method.isnet.C1_tuned": self.C1, "method.isnet.C2_tuned": self.C2})

    def on_epoch_start(self, epoch: int, trainer: "TrainContext") -> None:
        self.P = self.params.P_at(epoch)
        self.balance = self.params.balance_at(epoch)
        self._measure_grads = True  # gradient norms of the loss terms on the epoch's first step

    def _band_sample(self, heat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.params.band_statistic == "image":
            return image_relevance_totals(heat)
        return lung_relevance_totals(heat.detach(), mask)

    def _tune_band(self, trainer: "TrainContext", epochs: int) -> tuple[float, float, torch.nn.Module]:
        """Train a copy of the model with plain cross-entropy (the run's optimiser and clipping) and measure the
        band statistic; train mode: on the heatmaps of the last warm-up epoch, as the reference does."""
        model = copy.deepcopy(trainer.model)
        opt = _same_optimizer(trainer.optimizer, model.parameters())
        clip = [c for c in (trainer.cfg.optim.grad_clip_norm, self.params.grad_clip_norm) if c]
        in_train = self.params.band_mode == "train"
        totals: list[torch.Tensor] = []
        for epoch in range(1, epochs + 1):
            model.train()
            measure = in_train and epoch == epochs
            for batch in trainer.train_loader:
                x, y = batch["image"].to(trainer.device), batch["label"].to(trainer.device)
                if measure:
                    logits, heat = lrp_heatmaps(model, x, self._targets, config=self.lrp)
                    totals.append(self._band_sample(heat, batch["mask"].to(trainer.device)))
                else:
                    logits = model(x)
                loss = F.cross_entropy(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), min(clip))
                opt.step()
        if not in_train:
            model.eval()
            for batch in trainer.train_loader:
                _, heat = lrp_heatmaps(model, batch["image"].to(trainer.device), self._targets, config=self.lrp)
                totals.append(self._band_sample(heat, batch["mask"].to(trainer.device)))
        c1, c2 = tune_foreground_band(torch.cat(totals))
        return c1, c2, model

    def forward(self, model: torch.nn.Module, batch: dict, trainer: "TrainContext") -> StepOutput:
        chosen: list[torch.Tensor] = []

        def targets(z: torch.Tensor) -> torch.Tensor:  # the variant's draw, kept for the conservation seeds
            chosen.append(self._targets(z))
            return chosen[-1]

        logits, heat = lrp_heatmaps(model, batch["image"], targets, config=self.lrp, create_graph=True)
        extras = {"heatmaps": heat}
        if self.params.conservation > 0:
            t = chosen[-1]
            extras["seeds"] = logits.gather(1, t) if not t.is_floating_point() else t.sum(-1)
        return StepOutput(logits=logits, extras=extras)

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        cfg = self.loss_config()
        terms = isnet_heatmap_loss(out.extras["heatmaps"], batch["mask"], cfg, seeds=out.extras.get("seeds"))
        if self._measure_grads:
            self._measure_grads = False
            self._grad_norms = self._term_grad_norms(trainer.model, ce, terms, cfg)
        logits = out.logits.detach().float()
        fg = float(terms["fg_total"])
        # (1 − P)·CE + P·L_hm, composed with the other methods by combine_losses
        metrics = {"L_bg": float(terms["L_bg"].detach()), "L_fg": float(terms["L_fg"].detach()),
                   "L_hm": float(terms["L_hm"].detach()), "bg_share": float(terms["bg_share"]),
                   **({"L_cons": float(terms["L_cons"].detach())} if cfg.conservation > 0 else {}),
                   "logit_spread": float((logits.max(1).values - logits.min(1).values).mean()),
                   "F_over_C1": fg / float(self.C1), "F_over_C2": fg / float(self.C2),
                   "P": self.P}
        return isnet_loss_terms(terms, cfg, metrics)

    @staticmethod
    def _term_grad_norms(model: torch.nn.Module, ce: torch.Tensor, terms: dict, cfg: ISNetLossConfig
                         ) -> dict[str, float]:
        """Norm of the weight gradient of each term as it enters the total: (1-P)·CE, P·A·L_bg, P·B·L_fg."""
        params = [p for p in model.parameters() if p.requires_grad]
        out = {}
        for name, value in (("ce", (1 - cfg.P) * ce), ("L_bg", cfg.P * cfg.A * terms["L_bg"]),
                            ("L_fg", cfg.P * cfg.B * terms["L_fg"])):
            if not value.requires_grad:
                out[f"grad_norm_{name}"] = 0.0
                continue
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            out[f"grad_norm_{name}"] = float(torch.sqrt(sum((g.detach().float() ** 2).sum()
                                                            for g in grads if g is not None)))
        return out

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: "TrainContext") -> dict[str, float]:
        out = {f"train_{k}": v for k, v in self._grad_norms.items()}
        if self.params.collapse_check:
            self._check_collapse(epoch, metrics, trainer)
        return out

    def _check_collapse(self, epoch: int, metrics: dict[str, float], trainer: "TrainContext") -> None:
        """Warn once: CE still near chance after a third of the epochs while the background loss falls."""
        l_bg, ce = metrics.get("train_L_bg"), metrics.get("train_ce")
        if l_bg is None or ce is None:
            return
        if self._first_l_bg is None:
            self._first_l_bg = l_bg
        if self._warned or epoch < max(1, math.ceil(trainer.cfg.optim.epochs / 3)):
            return
        if ce > COLLAPSE_CE_FRACTION * math.log(self.n_classes) and l_bg < self._first_l_bg:
            self._warned = True
            msg = collapse_message(epoch, ce, self.n_classes, self._first_l_bg, l_bg)
            # a Python warning, nothing printed: the isnet command shows it as one line on stderr (isnet.cli)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            trainer.tracker.set_tags({"isnet.collapse_warning": f"epoch {epoch}"})

    def grad_clip_norm(self) -> float | None:
        return self.params.grad_clip_norm

    def gradient_balance(self) -> float | None:
        return self.balance

    def state_dict(self) -> dict[str, Any]:
        return {"C1": self.C1, "C2": self.C2, "generator": self.generator.get_state(),
                "first_l_bg": self._first_l_bg, "warned": self._warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("C1") is not None:
            self.C1, self.C2 = float(state["C1"]), float(state["C2"])
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self._first_l_bg = state.get("first_l_bg")
        self._warned = bool(state.get("warned", False))
