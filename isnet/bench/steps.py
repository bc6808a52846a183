"""The measured operations ("cases"), each built as a zero-argument callable on a synthetic batch.

Training rows go through the real :meth:`isnet.train.trainer.Trainer.train_step` with the method objects built by
:func:`isnet.methods.build_methods` from a :class:`TrainConfig`, so the benchmark measures exactly what
``isnet train`` runs (method hooks, loss, gradient clipping, optimiser step, AMP policy). Methods registered in
:mod:`isnet.methods` besides ISNet (SGDrop, RelDrop, RRR, ...) get a row automatically.
"""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from isnet.config.schema import TrainConfig
from isnet.lrp import lrp_heatmaps, run_lrp_config
from isnet.lrp.zennit_ref import zennit_composite
from isnet.methods import build_methods
from isnet.config.registry import method_specs
from isnet.methods.isnet_loss import isnet_heatmap_loss, isnet_total_loss
from isnet.models import build_classifier

CLASSES = ["normal", "covid", "tb"]
ISNET_VARIANTS = ("original", "stochastic", "selective")
#: fixed foreground band, so that no warm-up tuning runs inside the benchmark
C1, C2 = 1.0, 25.0


@dataclass(frozen=True)
class Spec:
    backbone: str
    size: int
    batch: int
    device: str = "cpu"
    width: int = 8  # small_cnn only
    seed: int = 0

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


def extra_methods() -> list[str]:
    """Registered training methods other than ``standard`` and ISNet (which has its own variant cases), in
    the registry's order: a plug-in method is benchmarked without being listed anywhere."""
    return [n for n in method_specs() if n not in ("standard", "isnet")]


#: a case name ending in this runs that ISNet case with ``lrp.compile: true`` (isnet.lrp.kernels)
COMPILED = "+compiled"
COMPILED_CASES = tuple(f"isnet-{v}{COMPILED}" for v in ISNET_VARIANTS)
#: cases left out of the default run (``--cases all`` or naming them runs them): slow, or costing a compilation
OPT_IN = ("zennit-naive-original",) + COMPILED_CASES


def case_names() -> tuple[list[str], dict[str, str]]:
    """(all cases, {skipped case: why}) for the train-step suite."""
    cases = ["standard", "inference", "explain"] + [f"isnet-{v}" for v in ISNET_VARIANTS] + ["isnet-balanced"]
    cases += list(COMPILED_CASES)
    extra = extra_methods()
    cases += extra
    cases += ["zennit-naive-stochastic", "zennit-naive-original"]
    skipped: dict[str, str] = {}
    try:
        import zennit  # noqa: F401
    except ImportError:  # pragma: no cover - zennit is a dependency
        for c in ("zennit-naive-stochastic", "zennit-naive-original"):
            cases.remove(c)
            skipped[c] = "zennit is not installed"
    return cases, skipped


def synthetic_batch(spec: Spec) -> dict:
    """A batch shaped like the loader's: images in [0, 1], two elliptic 'lungs' as masks, balanced labels."""
    g = torch.Generator().manual_seed(spec.seed)
    b, s = spec.batch, spec.size
    image = torch.rand(b, 1, s, s, generator=g)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, s), torch.linspace(-1, 1, s), indexing="ij")
    lungs = (((xx - 0.4) / 0.3) ** 2 + (yy / 0.6) ** 2 <= 1) | (((xx + 0.4) / 0.3) ** 2 + (yy / 0.6) ** 2 <= 1)
    mask = lungs.float().expand(b, 1, s, s).clone()
    label = torch.arange(b) % len(CLASSES)
    return {"image": image, "mask": mask, "label": label, "has_mask": torch.ones(b, dtype=torch.long),
            "row": torch.arange(b), "site": ["bench"] * b, "patient_id": [f"p{i}" for i in range(b)]}


def train_config(spec: Spec, methods: list[str], variant: str = "stochastic") -> TrainConfig:
    cfg = TrainConfig()
    cfg.data.classes = list(CLASSES)
    cfg.data.image_size = spec.size
    cfg.data.batch_size = spec.batch
    cfg.model.backbone = spec.backbone
    cfg.model.width = spec.width
    cfg.train.device = "cuda" if spec.device.startswith("cuda") else "cpu"
    cfg.train.seed = spec.seed
    cfg.methods = methods
    cfg.method.isnet.variant = variant
    cfg.method.isnet.C1, cfg.method.isnet.C2 = C1, C2
    return cfg


def _model(spec: Spec) -> nn.Module:
    torch.manual_seed(spec.seed)
    return build_classifier(spec.backbone, len(CLASSES), width=spec.width).to(spec.torch_device)


def bench_trainer(cfg: TrainConfig, spec: Spec, batch: dict):
    """A :class:`Trainer` built by ``Trainer.from_loaders`` (the run's model wiring, methods, optimiser and AMP
    policy) over the bench batch, without data sets, tracker or checkpoints, which a single step does not touch.
    Methods get their start hooks."""
    from isnet.train.trainer import Trainer

    model = _model(spec)
    methods = build_methods(list(cfg.methods), cfg)
    # methods that look at training data in on_fit_start see the bench batch
    tr = Trainer.from_loaders(cfg, model, methods, spec.torch_device, [batch], [batch],
                              checkpoint_dir=Path(tempfile.gettempdir()) / "isnet-bench-unused")
    for m in tr.methods:
        m.on_fit_start(tr)
    for m in tr.methods:
        m.on_epoch_start(1, tr)
    tr.model.train()
    return tr


def _train_step(spec: Spec, methods: list[str], variant: str = "stochastic", balance: float | None = None,
                compile_lrp: bool = False) -> Callable[[], None]:
    batch = synthetic_batch(spec)
    cfg = train_config(spec, methods, variant)
    cfg.method.isnet.balance = balance
    cfg.lrp.compile = compile_lrp
    tr = bench_trainer(cfg, spec, batch)
    dev_batch = {k: (v.to(tr.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    return lambda: tr.train_step(dev_batch)


def _inference(spec: Spec) -> Callable[[], None]:
    model = _model(spec).eval()
    x = synthetic_batch(spec)["image"].to(spec.torch_device)

    def run() -> None:
        with torch.no_grad():
            model(x)
    return run


def _explain(spec: Spec) -> Callable[[], None]:
    """What ``isnet explain`` and the validation diagnostics run per batch: eval mode, predicted class, no graph."""
    from isnet.measure.relevance import predicted_class

    model = _model(spec).eval()
    x = synthetic_batch(spec)["image"].to(spec.torch_device)
    lrp = run_lrp_config(TrainConfig())
    return lambda: lrp_heatmaps(model, x, predicted_class, config=lrp)


def _zennit_naive(spec: Spec, variant: str) -> Callable[[], None]:
    """The naive baseline: the same ISNet loss, with heatmaps from zennit's rule hooks (and canonizers) on a deep
    copy of the model and ``create_graph=True``: one forward, one backward per explained class. Its weight
    gradient is incomplete (zennit rebuilds modified weights from ``param.data``), so it is a cost reference only."""
    from isnet.methods.isnet_targets import explain_targets
    from isnet.train.trainer import build_optimizer

    cfg = train_config(spec, ["isnet"], variant)
    c = cfg.method.isnet
    loss_cfg = c.loss_config(c.P_at(1), c.C1, c.C2)  # the run's loss settings, as a training step derives them
    model = copy.deepcopy(_model(spec)).train()
    opt = build_optimizer(model, cfg)
    composite = zennit_composite(model, run_lrp_config(cfg), strict=False)  # DenseNet: not equivalent, cost only
    batch = {k: (v.to(spec.torch_device) if torch.is_tensor(v) else v) for k, v in synthetic_batch(spec).items()}
    gen = torch.Generator().manual_seed(spec.seed)

    def run() -> None:
        x = batch["image"].detach().requires_grad_(True)
        with composite.context(model):
            logits = model(x)
            targets = explain_targets(logits.detach(), variant, gen)
            n_maps = targets.shape[1]
            maps = []
            for k in range(n_maps):
                if targets.is_floating_point():
                    seed = targets[:, k]
                else:
                    seed = F.one_hot(targets[:, k], logits.shape[1]).to(logits) * logits
                (g,) = torch.autograd.grad(logits, x, seed, create_graph=True, retain_graph=True)
                maps.append(g.sum(1))
            heat = torch.stack(maps, 1)
            ce = F.cross_entropy(logits.float(), batch["label"])
            terms = isnet_heatmap_loss(heat, batch["mask"], loss_cfg)
            total = isnet_total_loss(ce, terms, loss_cfg)
            opt.zero_grad(set_to_none=True)
            total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip_norm or 1.0)
        opt.step()
    return run


def build_case(name: str, spec: Spec) -> Callable[[], None]:
    """The callable of one train-step-suite case (see :func:`case_names`)."""
    if name == "standard":
        return _train_step(spec, ["standard"])
    if name == "inference":
        return _inference(spec)
    if name == "explain":
        return _explain(spec)
    if name == "isnet-balanced":
        return _train_step(spec, ["isnet"], "original", balance=1.0)
    if name.startswith("isnet-") and name.endswith(COMPILED):
        return _train_step(spec, ["isnet"], name[len("isnet-"):-len(COMPILED)], compile_lrp=True)
    if name.startswith("isnet-"):
        return _train_step(spec, ["isnet"], name.split("-", 1)[1])
    if name.startswith("zennit-naive-"):
        return _zennit_naive(spec, name.rsplit("-", 1)[1])
    if name in method_specs():
        return _train_step(spec, [name])
    raise ValueError(f"unknown bench case {name!r}")


#: what each case is, for the table's legend
DESCRIPTIONS = {
    "standard": "plain cross-entropy training step (Trainer.train_step)",
    "inference": "eval forward, no grad (ISNet adds nothing here)",
    "explain": "LRP heatmap of the predicted class, eval, no graph (isnet explain)",
    "isnet-original": "ISNet training step, heatmaps of all 3 classes",
    "isnet-stochastic": "ISNet training step, one heatmap per image (random class)",
    "isnet-selective": "ISNet training step, one heatmap per image (softmax score)",
    "isnet-balanced": "ISNet training step, all 3 classes, gradient balance on (method.isnet.balance=1)",
    **{c: f"{c[:-len(COMPILED)]} with lrp.compile (epsilon steps fused by torch.compile)" for c in COMPILED_CASES},
    "zennit-naive-stochastic": "same ISNet loss, zennit rule hooks + create_graph, 1 map",
    "zennit-naive-original": "same ISNet loss, zennit rule hooks + create_graph, 3 maps",
}
