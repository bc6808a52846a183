"""The interface between the trainer and a training method.

A method (ISNet loss, SGDrop, RelDrop, RRR, masked input) is an object with hooks that the trainer calls
at fixed points of every step; the loop itself never asks which methods are on. Adding a method means
writing one class and registering it, not editing the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import torch
from pydantic import BaseModel

from isnet.config.registry import (MethodSpec, NoParams, check_combination, method_specs, register_method,
                                   unregister_method)

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.lrp import LRPConfig
    from isnet.tracking import Tracker


class TrainContext(Protocol):
    """What a method's hooks see of the run being trained (the trainer provides it): the model, its
    optimiser and learning-rate schedule, the run config, the device, the training and validation loaders, the
    manifest, the tracker and the run's LRP rules. Nothing else of the training loop is part of the method interface."""

    cfg: "TrainConfig"
    model: torch.nn.Module
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: Iterable[dict]
    val_loader: Iterable[dict]
    manifest: Any
    tracker: "Tracker | None"

    @property
    def lrp_config(self) -> "LRPConfig": ...


@dataclass
class StepOutput:
    """What one forward pass produced: logits, and whatever a method computed alongside (heatmaps...)."""

    logits: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossTerms:
    """What one method's ``loss`` hook contributes to the step's objective.

    ``ce_weight`` multiplies the cross-entropy (ISNet: 1 − P); ``terms`` are added to the objective as they are
    (already weighted by the method, e.g. λ·penalty), under names unique across methods; ``metrics`` are
    per-step numbers the method logs (averaged per epoch as ``train_<name>``).
    """

    ce_weight: float = 1.0
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


#: the composition rule of :func:`combine_losses`, logged with every run (tag ``loss.composition``)
LOSS_RULE = "total = (prod over methods of ce_weight) * CE + (sum over methods of their terms)"


def _compose(ce: torch.Tensor, parts: Mapping[str, LossTerms]) -> tuple[torch.Tensor, float, dict[str, torch.Tensor]]:
    """The total of :func:`combine_losses`, with the product of the weights and the terms it added."""
    weight = 1.0
    terms: dict[str, torch.Tensor] = {}
    for name in sorted(parts):
        part = parts[name]
        if not isinstance(part, LossTerms):
            raise TypeError(f"method {name!r}: the loss hook must return LossTerms, got {type(part).__name__}")
        weight *= float(part.ce_weight)
        for key, value in part.terms.items():
            if key in terms:
                raise ValueError(f"loss term {key!r} is returned by two methods; term names must be unique")
            terms[key] = value
    total = ce * weight if weight != 1.0 else ce
    for key in sorted(terms):
        total = total + terms[key]
    return total, weight, terms


def compose_objective(ce: torch.Tensor, parts: Mapping[str, LossTerms]) -> torch.Tensor:
    """The total of :func:`combine_losses` without its metrics (no device sync): for callers outside the
    trainer, such as the bench, that need the training objective itself."""
    return _compose(ce, parts)[0]


def combine_losses(ce: torch.Tensor, parts: Mapping[str, LossTerms]) -> tuple[torch.Tensor, dict[str, float]]:
    """The step's objective from the true cross-entropy and each method's :class:`LossTerms`:

        total = (Π_m ce_weight_m) · CE + Σ_m Σ_k terms_m[k]

    Every hook sees the same true cross-entropy and nothing of the other methods' contributions, so the
    objective of a set of methods does not depend on the order they are listed in. The weights are multiplied
    and the terms added in the sorted order of their names, so even the floating-point result is the same for
    every order. ``parts`` maps a method's name to what its hook returned. Returns the total and the metrics
    ``ce_weight`` (the product) and ``loss_<term>`` (each term's value)."""
    total, weight, terms = _compose(ce, parts)
    metrics = {"ce_weight": weight}
    metrics.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
    return total, metrics


class Method:
    """Base class: every hook is a no-op, so a method overrides only the points it cares about."""

    name: str = "base"
    #: the method needs lung masks for every training image
    needs_masks: bool = False
    #: the method computes the forward pass itself (at most one enabled method may)
    owns_forward: bool = False

    def on_fit_start(self, trainer: "TrainContext") -> None:
        """Called once before the first epoch (after a resume too)."""

    def on_epoch_start(self, epoch: int, trainer: "TrainContext") -> None:
        """Called before each training epoch."""

    def before_forward(self, batch: dict, trainer: "TrainContext") -> dict:
        """May change the batch (e.g. occlude pixels); must return it."""
        return batch

    def forward(self, model: torch.nn.Module, batch: dict, trainer: "TrainContext") -> StepOutput:
        raise NotImplementedError

    def loss(self, ce: torch.Tensor, out: StepOutput, batch: dict, trainer: "TrainContext") -> LossTerms:
        """This method's part of the objective, from the step's true cross-entropy ``ce`` (never another
        method's total): a weight on the cross-entropy, added terms, and per-step metrics. The trainer
        combines the parts of all methods with :func:`combine_losses`."""
        return LossTerms()

    def grad_clip_norm(self) -> float | None:
        """A gradient-norm limit this method asks for (the smallest requested one is used)."""
        return None

    def gradient_balance(self) -> float | None:
        """A cap r on the gradient of the objective's other terms, as a multiple of the cross-entropy's
        (:mod:`isnet.train.balance`; the smallest requested one is used), or None."""
        return None

    def after_step(self, trainer: "TrainContext") -> None:
        """Called after the optimiser step."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: "TrainContext") -> dict[str, float]:
        """Called after each epoch's training and validation with that epoch's metrics; returns extra metrics
        to log for the epoch (e.g. diagnostics gathered during it)."""
        return {}

    def selectable(self, epoch: int) -> bool:
        """Whether the model after ``epoch`` (counted from 1) may become the run's best checkpoint and count
        for early stopping (ISNet with a P schedule: only once its final P is in force)."""
        return True

    def on_fit_end(self, trainer: "TrainContext") -> None:
        """Called once after the last epoch, before testing and model export (e.g. to remove module hooks)."""

    def validation_metrics(self, trainer: "TrainContext", epoch: int) -> dict[str, float]:
        """Extra validation metrics logged per epoch."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def register(name: str, params: type[BaseModel] = NoParams, *, alone: bool = False, excludes: tuple[str, ...] = (),
             summary: str = "") -> Callable[[type[Method]], type[Method]]:
    """Class decorator: register a :class:`Method` under ``name`` with its parameter model (the config's
    ``method.<name>`` block) in the run-config registry (:mod:`isnet.config.registry`). After this the name
    can be listed in ``methods:`` of any YAML config, a stress-test spec and the benchmark."""

    def deco(cls: type[Method]) -> type[Method]:
        doc = (summary or (cls.__doc__ or "").strip().split("\n")[0]).strip()
        register_method(MethodSpec(name=name, params=params, factory=cls, owns_forward=bool(cls.owns_forward),
                                   alone=alone, excludes=frozenset(excludes), summary=doc))
        return cls

    return deco


def unregister(name: str) -> None:
    """Remove a registered method (for plug-ins registered temporarily, e.g. in tests)."""
    unregister_method(name)


def build_methods(names: list[str], config: Any) -> list[Method]:
    """Instantiate the configured methods, in the order listed, from their config blocks."""
    check_combination(names)
    specs = method_specs()
    return [specs[name].factory(config) for name in names if specs[name].factory is not None]
