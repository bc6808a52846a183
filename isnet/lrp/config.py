"""Configuration of the LRP rules used to build ISNet heatmaps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig

BODY_RULES = ("epsilon", "zplus", "alpha2beta1", "epsilon_zplus")
FIRST_RULES = ("zb", "epsilon", "flat")


@dataclass(frozen=True)
class LRPConfig:
    """Which LRP rules to use and their parameters.

    epsilon: LRP-ε stabiliser, z + sign(z)·ε with sign(0)=+1; also the stabiliser of every other rule's
        denominator, so that a single knob controls how much relevance the stabilisers absorb.
    body_rule: "epsilon" | "zplus" | "alpha2beta1" | "epsilon_zplus" (ε for dense layers, z⁺ for convolutions).
        Pooling layers and residual sums always use the ε rule.
    first_rule: rule of the first convolution/dense layer: "zb" (bounded z^B), "epsilon" or "flat".
    low, high: z^B bounds, i.e. the range of the input pixels: [0, 1] by default, [-1024, 1024] under
        ``data.intensity: xrv`` (:func:`run_lrp_config` sets them from the run's data config).
    detach_biases: in a differentiable heatmap, treat each layer's own bias and BatchNorm batch statistics (and
        BN shift) as constants where the rule uses them (the original ISNet LRP block); False differentiates
        everything (LRP-Flex). Heatmap values are the same either way; only their gradient differs.
    compile: fuse the elementwise arithmetic of the ε relevance steps with ``torch.compile``
        (:mod:`isnet.lrp.kernels`): the same heatmaps and gradients up to float rounding, faster steps on large
        inputs, a one-off compilation of tens of seconds (a C++ compiler on CPU).
    """

    epsilon: float = 0.01
    body_rule: str = "epsilon"
    first_rule: str = "zb"
    low: float = 0.0
    high: float = 1.0
    detach_biases: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        if self.body_rule not in BODY_RULES:
            raise ValueError(f"body_rule must be one of {BODY_RULES}, got {self.body_rule!r}")
        if self.first_rule not in FIRST_RULES:
            raise ValueError(f"first_rule must be one of {FIRST_RULES}, got {self.first_rule!r}")
        if self.epsilon < 0:
            raise ValueError("epsilon must be >= 0")
        if self.low > self.high:
            raise ValueError("low must not exceed high")

    def layer_rule(self, dense: bool) -> str:
        """The body rule for a dense (Linear) or convolutional layer."""
        if self.body_rule == "epsilon_zplus":
            return "epsilon" if dense else "zplus"
        return self.body_rule


def run_lrp_config(cfg: "TrainConfig", detach_biases: bool = False) -> LRPConfig:
    """The LRP rules of a run: its ``lrp`` section, with z^B bounds = the input range of ``data.intensity``
    ([0, 1] or [-1024, 1024]). Every heatmap of a run (training, diagnostics, explain, reports) uses them;
    ``detach_biases`` is ISNet's choice for its own training graph (``method.isnet.detach``)."""
    low, high = cfg.data.value_range
    r = cfg.lrp
    return LRPConfig(epsilon=r.epsilon, body_rule=r.body_rule, first_rule=r.first_rule, low=float(low),
                     high=float(high), detach_biases=detach_biases, compile=r.compile)
