"""The interface between the trainer and a training method.

A method (ISNet loss, SGDrop, RelDrop, RRR, masked input) is an object with hooks that the trainer calls
at fixed points of every step; the loop itself never asks which methods are on. Adding a method means
writing one class and registering it, not editing the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import torch

if TYPE_CHECKING:  # pragma: no cover
    from isnet.train.trainer import Trainer


@dataclass
class StepOutput:
    """What one forward pass produced: logits, and whatever a method computed alongside (heatmaps...)."""

    logits: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class Method:
    """Base class: every hook is a no-op, so a method overrides only the points it cares about."""

    name: str = "base"
    #: the method needs lung masks for every training image
    needs_masks: bool = False
    #: the method computes the forward pass itself (at most one enabled method may)
    owns_forward: bool = False

    def on_fit_start(self, trainer: "Trainer") -> None:
        """Called once before the first epoch (after a resume too)."""

    def on_epoch_start(self, epoch: int, trainer: "Trainer") -> None:
        """Called before each training epoch."""

    def before_forward(self, batch: dict, trainer: "Trainer") -> dict:
        """May change the batch (e.g. occlude pixels); must return it."""
        return batch

    def forward(self, model: torch.nn.Module, batch: dict, trainer: "Trainer") -> StepOutput:
        raise NotImplementedError

    def loss(self, total: torch.Tensor, ce: torch.Tensor, out: StepOutput, batch: dict,
             trainer: "Trainer") -> tuple[torch.Tensor, dict[str, float]]:
        """Transform the running loss; return it with this method's per-step metrics."""
        return total, {}

    def grad_clip_norm(self) -> float | None:
        """A gradient-norm limit this method asks for (the smallest requested one is used)."""
        return None

    def after_step(self, trainer: "Trainer") -> None:
        """Called after the optimiser step."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], trainer: "Trainer") -> dict[str, float]:
        """Called after each epoch's training and validation with that epoch's metrics; returns extra metrics
        to log for the epoch (e.g. diagnostics gathered during it)."""
        return {}

    def on_fit_end(self, trainer: "Trainer") -> None:
        """Called once after the last epoch, before testing and model export (e.g. to remove module hooks)."""

    def validation_metrics(self, trainer: "Trainer", epoch: int) -> dict[str, float]:
        """Extra validation metrics logged per epoch."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


_REGISTRY: dict[str, Callable[..., Method]] = {}


def register(name: str) -> Callable[[Callable[..., Method]], Callable[..., Method]]:
    def deco(factory: Callable[..., Method]) -> Callable[..., Method]:
        _REGISTRY[name] = factory
        return factory

    return deco


def unregister(name: str) -> None:
    """Remove a registered method (for plug-ins registered temporarily, e.g. in tests)."""
    _REGISTRY.pop(name, None)


def build_methods(names: list[str], config: Any) -> list[Method]:
    """Instantiate the configured methods, in the order listed, from their config blocks."""
    out = []
    for name in names:
        if name == "standard":
            continue
        if name not in _REGISTRY:
            raise ValueError(f"unknown method {name!r}; registered: {sorted(_REGISTRY)}")
        out.append(_REGISTRY[name](config))
    owners = [m.name for m in out if m.owns_forward]
    if len(owners) > 1:
        raise ValueError(f"methods {owners} each compute their own forward pass and cannot be combined")
    return out
