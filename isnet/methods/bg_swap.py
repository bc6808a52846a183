"""Background swap: train on images whose background belongs to another image of the batch.

The data-side counterpart of ISNet (docs/methods.md, "bg_swap"): with probability ``prob`` per training
image, everything outside the dilated lung mask is replaced by the background of a random image of the
previous batch (or by a noise texture), so no background content stays tied to a class. Validation, test and
inference images are left as they are: the method costs nothing after training. The swap itself is the
MONAI dictionary transform :class:`isnet.data.background.BackgroundSwapd`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from isnet.config.registry import MethodParams
from isnet.data.background import BackgroundSwapd
from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext


class BackgroundParams(MethodParams):
    """How a background is replaced (shared by bg_swap and bg_consistency)."""

    dilation_px: int = Field(2, ge=0, le=256, description="the lung mask is dilated by this many pixels of the "
                                                          "network input before the swap; what lies outside "
                                                          "is background")
    source: Literal["batch", "noise"] = Field("batch", description="batch: the background of a random image of the "
                                                                     "previous batch; noise: a smooth noise texture")


class BgSwapParams(BackgroundParams):
    """Background swap: with probability prob per training image, its background is replaced."""

    prob: float = Field(1.0, ge=0.0, le=1.0, description="share of training images whose background is "
                                                         "replaced; below 1 the rest keep their own background, "
                                                         "and with it whatever ties it to the class")


def background_transform(params: BackgroundParams, prob: float, seed: int) -> BackgroundSwapd:
    """The swap transform of a method's parameters, seeded from the run's seed (reproducible runs)."""
    swap = BackgroundSwapd(prob=prob, dilation_px=params.dilation_px, source=params.source)
    swap.set_random_state(seed=seed)
    return swap


class BackgroundMethod(Method):
    """A method that swaps backgrounds: needs lung masks; its swap transform's random state is checkpointed."""

    needs_masks = True
    swap: BackgroundSwapd

    def state_dict(self) -> dict[str, Any]:
        return self.swap.get_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.swap.set_state(state)


@register("bg_swap", params=BgSwapParams)
class BgSwapMethod(BackgroundMethod):
    """Background swap: training images get the background of an image of the previous batch."""

    name = "bg_swap"

    def __init__(self, cfg: "TrainConfig"):
        self.params = cfg.method.bg_swap
        self.swap = background_transform(self.params, self.params.prob, cfg.train.seed)

    def before_forward(self, batch: dict, trainer: "TrainContext") -> dict:
        if not trainer.model.training:
            return batch
        return self.swap(batch)

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        moved = batch.get("background_from")
        if moved is None:
            return LossTerms()
        share = float((moved != -2).float().mean())  # -2: kept its own background
        return LossTerms(metrics={"bg_swap_swapped": share})
