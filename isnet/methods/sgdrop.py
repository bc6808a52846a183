"""SGDrop: saliency-guided dropout of the most attributed latent features (docs/design.md, section 5).

Before each training forward, one extra pass on the batch computes the attribution of the true-class score
ψ_c on a feature map z, as in the paper ReLU(∂ψ_c/∂z ⊙ z) (``attribution: grad_x_act``; ``lrp``: the positive
part of the LRP relevance of the feature map, :func:`isnet.lrp.lrp_relevance_at`, with the rules of
``method.isnet``); the features above the per-sample quantile q_rho are zeroed in the real forward (with
``rescale``, not in the paper, the kept ones are scaled like dropout). The extra pass runs in
the model's training mode on the step's batch and weights (BatchNorm normalises with the batch statistics, as
in the real forward; the random-number state is restored afterwards, so dropout layers draw the same masks in
both passes), runs the body of the network without a graph and differentiates only the part after the feature
map, so its cost is one forward plus the head's backward (or relevance backward). BatchNorm running statistics
are restored afterwards: the batch is counted once. The mask must exist before the forward that it changes, so
this pass cannot be merged into the training forward itself.

The mask is applied by a module hook, so it acts wherever the model's modules are called: in the plain
forward and inside :func:`isnet.lrp.lrp_heatmaps`, which calls the same modules (``methods: [isnet, sgdrop]``).
A constant elementwise mask is a linear, relevance-transparent map (like dropout): the relevance of a
dropped feature is zero and a kept one passes its relevance on unchanged. The default layers are ones the
LRP forward calls as modules (the last block's output, taken at the input of the global pooling).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal, Optional

import torch
from torch import nn
from torchvision.models.densenet import DenseNet
from torchvision.models.resnet import ResNet
from torchvision.models.vgg import VGG
from pydantic import Field

from isnet.lrp import lrp_relevance_at, run_lrp_config, supports_model
from isnet.config.registry import MethodParams
from isnet.methods.base import LossTerms, Method, register

if TYPE_CHECKING:  # pragma: no cover
    from isnet.config.schema import TrainConfig
    from isnet.methods.base import TrainContext


def default_layer(model: nn.Module) -> tuple[str, str]:
    """(module name, "input"/"output") of the last convolutional block's feature map for our backbones."""
    if isinstance(model, (ResNet, VGG)):
        return "avgpool", "input"  # layer4 / features output
    if isinstance(model, DenseNet):
        return "features.norm5", "output"  # features output (before the final ReLU and functional pooling)
    pools = [n for n, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    if pools:  # small_cnn: the last conv block feeds its global pooling
        return pools[-1], "input"
    raise ValueError(f"SGDrop has no default layer for {type(model).__name__}; set method.sgdrop.layer")


def quantile_mask(attribution: torch.Tensor, threshold: torch.Tensor, rescale: bool) -> torch.Tensor:
    """Keep (1) features whose attribution is ≤ the per-sample ``threshold`` [B], drop (0) the rest; with
    ``rescale`` the kept ones are scaled by (number of features / number kept), like dropout."""
    flat = attribution.flatten(1)
    keep = (flat <= threshold.reshape(-1, 1).to(flat.dtype)).to(flat.dtype)
    if rescale:
        keep = keep * (flat.shape[1] / keep.sum(1, keepdim=True).clamp_min(1.0))
    return keep.reshape(attribution.shape)


@contextlib.contextmanager
def same_step(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """An extra pass on the step's batch that leaves no trace: the model's buffers (BatchNorm running statistics)
    and the random-number state (dropout masks of the real forward) are restored when the block ends."""
    buffers = [b.detach().clone() for b in model.buffers()]
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)


class SGDropParams(MethodParams):
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


@register("sgdrop", params=SGDropParams)
class SGDropMethod(Method):
    name = "sgdrop"

    def __init__(self, cfg: "TrainConfig"):
        self.params = cfg.method.sgdrop
        self.threshold: float | None = None  # EMA of the batch-mean q_rho (ema variant)
        self.layer = ""
        self._module: nn.Module | None = None
        self._at = "output"
        self.lrp = run_lrp_config(cfg)  # the run's lrp rules, z^B bounds of data.intensity
        self._handle: Any = None
        self._mask: torch.Tensor | None = None
        self._capture = False
        self._feature: torch.Tensor | None = None
        self._applied = 0
        self._dropped = float("nan")

    # -- the module hook ----------------------------------------------------------------------------
    def attach(self, model: nn.Module) -> None:
        """Register the hook on the configured (or default) layer; idempotent."""
        self.detach()
        name, at = (self.params.layer, self.params.at) if self.params.layer else default_layer(model)
        modules = dict(model.named_modules())
        if name not in modules:
            raise ValueError(f"method.sgdrop.layer {name!r} is not a module of the model "
                             f"(e.g. {', '.join(list(modules)[1:6])}, ...)")
        module = modules[name]
        if self.params.attribution == "lrp" and not supports_model(model):
            raise ValueError(f"method.sgdrop.attribution=lrp: our LRP engine does not support "
                             f"{type(model).__name__}; use attribution=grad_x_act")
        self.layer = f"{name}.{at}"
        self._module, self._at = module, at
        if at == "input":
            self._handle = module.register_forward_pre_hook(lambda mod, args: (self._hook(mod, args[0]),) + args[1:])
        else:
            self._handle = module.register_forward_hook(lambda mod, args, out: self._hook(mod, out))

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module: nn.Module, t: torch.Tensor) -> torch.Tensor:
        if self._capture:  # attribution pass: the head after this point is differentiated w.r.t. t
            self._feature = t.detach().requires_grad_(True)
            torch.set_grad_enabled(True)  # the caller's no_grad block restores the mode when it exits
            return self._feature.clone()  # not the leaf itself: DenseNet applies an in-place ReLU next
        if self._mask is None or not module.training:
            return t
        if self._mask.shape != t.shape:
            raise RuntimeError(f"SGDrop mask {tuple(self._mask.shape)} does not fit the feature map "
                               f"{tuple(t.shape)} at {self.layer}")
        self._applied += 1
        return t * self._mask.to(t.dtype)

    # -- the mask -------------------------------------------------------------------------------------
    def attribution(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Attribution of the true class on the hooked feature map (detached), in the model's current mode:
        ReLU(gradient × activation), or the positive part of the LRP relevance (``attribution: lrp``). Buffers
        and RNG state are restored."""
        if self._module is None:
            raise RuntimeError("SGDrop: attach(model) first")
        mask, self._mask = self._mask, None  # the pass sees the unmasked feature map
        try:
            with same_step(model, x):
                if self.params.attribution == "lrp":
                    _, rel = lrp_relevance_at(model, x, y[:, None], self._module, self._at, config=self.lrp)
                    return rel[:, 0].clamp_min(0)
                return self._grad_x_act(model, x, y).clamp_min(0)
        finally:
            self._mask = mask

    def _grad_x_act(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self._capture, self._feature = True, None
        try:
            with torch.no_grad():
                logits = model(x)
                if self._feature is None:
                    raise RuntimeError(f"SGDrop: the layer {self.layer} was not called by the model's forward")
                score = logits.float().gather(1, y[:, None]).sum()
                (grad,) = torch.autograd.grad(score, self._feature)
        finally:
            self._capture = False
        attr = (grad * self._feature).detach()
        self._feature = None
        return attr

    def compute_mask(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attr = self.attribution(model, x, y)
        flat = attr.flatten(1).to(torch.promote_types(attr.dtype, torch.float32))  # q in the compared precision
        k = min(flat.shape[1], max(1, math.ceil(self.params.rho * flat.shape[1])))
        q = flat.kthvalue(k, dim=1).values  # q_rho per sample (kthvalue: no size limit, unlike quantile)
        if self.params.ema:
            m = self.params.ema_momentum
            batch_q = float(q.mean())
            self.threshold = batch_q if self.threshold is None else m * self.threshold + (1 - m) * batch_q
            q = torch.full_like(q, self.threshold)
        mask = quantile_mask(attr, q, self.params.rescale)
        self._dropped = float((mask == 0).float().mean())
        return mask

    # -- hooks ----------------------------------------------------------------------------------------
    def on_fit_start(self, trainer: "TrainContext") -> None:
        self.attach(trainer.model)

    def on_fit_end(self, trainer: "TrainContext") -> None:
        self.detach()

    def before_forward(self, batch: dict, trainer: "TrainContext") -> dict:
        self._mask = None
        if trainer.model.training:
            self._mask = self.compute_mask(trainer.model, batch["image"], batch["label"])
            self._applied = 0
        return batch

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        if self._mask is None:
            return LossTerms()
        if not self._applied:
            raise RuntimeError(f"SGDrop: the mask at {self.layer} was not applied by the forward pass; choose a "
                               f"layer that the model (and, with ISNet, the LRP forward) calls as a module")
        self._mask = None
        metrics = {"sgdrop_drop_fraction": self._dropped}
        if self.threshold is not None:
            metrics["sgdrop_threshold"] = self.threshold
        return LossTerms(metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t = state.get("threshold")
        self.threshold = None if t is None else float(t)
