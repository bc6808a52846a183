"""Worker for tests/test_distributed.py: a few training steps of the real Trainer on a fixed global batch.

``python tests/ddp_worker.py MANIFEST OUT.pt SPECS`` trains in one process on the global batch; under
``torchrun --nproc_per_node=N`` each rank takes its contiguous 1/N of the same batch and trains through
DDP (gloo). Rank 0 (or the single process) saves the final weights and per-step losses to OUT.pt, and what
each rank's Trainer built: its training records, how many of them it cached, whether it has validation data.
One process also trains on the first half of each batch only (a reference that must *not* match).
SPECS are "+"-separated method lists, e.g. ``isnet+standard+isnet:bn`` (":bn": small_cnn with BatchNorm;
":balance": ISNet's gradient balance on, whose cross-entropy gradient must be averaged over ranks too).
"""

from __future__ import annotations

import sys

import torch

from isnet.config import load_config
from isnet.data.manifest import load_manifest
from isnet.methods import build_methods
from isnet.models import build_classifier
from isnet.tracking import Tracker
from isnet.train.distributed import distribute_trainer, init_distributed
from isnet.train.seeding import seed_everything
from isnet.train.trainer import Trainer

GLOBAL_BATCH, SIZE, STEPS = 8, 32, 2


def bn_free_cnn(num_classes: int, width: int = 4) -> torch.nn.Sequential:
    from torch import nn

    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4 * width, num_classes))


def fixed_batches(num_classes: int) -> list[dict]:
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(STEPS):
        x = torch.rand(GLOBAL_BATCH, 1, SIZE, SIZE, generator=g)
        y = torch.arange(GLOBAL_BATCH) % num_classes
        for i in range(GLOBAL_BATCH):  # a class-dependent bright bar, so the gradients are not noise only
            x[i, 0, 8:24, 4 + 8 * int(y[i]): 10 + 8 * int(y[i])] += 1.0
        mask = torch.zeros(GLOBAL_BATCH, 1, SIZE, SIZE)
        mask[:, :, 4:28, 4:28] = 1.0
        out.append({"image": x, "mask": mask, "label": y, "has_mask": torch.ones(GLOBAL_BATCH, dtype=torch.bool)})
    return out


def run(manifest_path: str, spec: str, ctx, half: bool = False) -> dict | None:
    """One configuration, e.g. "isnet" or "standard:bn" (":bn": small_cnn with BatchNorm)."""
    methods, _, variant = spec.partition(":")
    methods = methods.split(",")
    overrides = ["model.backbone=small_cnn", "model.width=4", f"data.image_size={SIZE}",
                 f"data.batch_size={GLOBAL_BATCH}", "data.augment.enabled=false", "optim.optimizer=sgd",
                 "optim.lr=0.2", "optim.momentum=0.9", "optim.weight_decay=0", "train.threads=1",
                 "train.device=cpu", f"methods={methods}"]
    if "isnet" in methods:
        overrides += ["method.isnet.C1=0.5", "method.isnet.C2=5.0"]
    if variant == "balance":
        overrides += ["method.isnet.balance=0.1"]
    if "sgdrop" in methods and variant != "bn":
        overrides += ["method.sgdrop.layer='8'"]  # bn_free_cnn's global pooling, as small_cnn's default
    cfg = load_config(None, overrides)
    torch.set_num_threads(1)
    seed_everything(cfg.train.seed, cfg.train.deterministic)
    ms = build_methods(cfg.methods, cfg)
    manifest = load_manifest(manifest_path, cfg.data.classes, require_masks=True)
    if variant == "bn":  # small_cnn: BatchNorm statistics per rank (no SyncBatchNorm on CPU)
        model = build_classifier("small_cnn", len(cfg.data.classes), width=4)
    else:  # no BatchNorm: DDP on N shards must equal one process on the global batch
        model = bn_free_cnn(len(cfg.data.classes))
    trainer = Trainer(cfg, manifest, model, ms, Tracker(enabled=False), torch.device("cpu"), "unused", dist=ctx)
    if ctx is not None:
        distribute_trainer(trainer, ctx)
    data = {"train_rows": [r["row"] for r in trainer.train_ds.records], "cached": trainer.train_ds.cached_count(),
            "all_train_rows": [r["row"] for r in manifest.records("train")], "has_val": trainer.val_ds is not None}
    for m in ms:  # as Trainer.fit does before the first epoch (SGDrop installs its hook here)
        m.on_fit_start(trainer)
    trainer.model.train()
    losses = []
    for batch in fixed_batches(len(cfg.data.classes)):
        if ctx is not None:
            per = GLOBAL_BATCH // ctx.world_size
            batch = {k: v[ctx.rank * per:(ctx.rank + 1) * per] for k, v in batch.items()}
        elif half:
            batch = {k: v[:GLOBAL_BATCH // 2] for k, v in batch.items()}
        losses.append(trainer.train_step(batch))
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    if ctx is None:
        return {"model": state, "losses": losses, "data": data}
    states = [None] * ctx.world_size  # every rank's weights: they must agree (DDP averaged the gradients)
    torch.distributed.all_gather_object(states, state)
    datas = [None] * ctx.world_size  # what each rank built and cached
    torch.distributed.all_gather_object(datas, data)
    return {"model": state, "losses": losses, "ranks": states, "data": datas}


def main() -> None:
    manifest_path, out_path, specs = sys.argv[1], sys.argv[2], sys.argv[3].split("+")
    ctx = init_distributed("cpu")
    out = {spec: run(manifest_path, spec, ctx) for spec in specs}
    if ctx is None:  # references trained on the first half of each batch only
        out.update({spec + "/half": run(manifest_path, spec, None, half=True) for spec in specs})
    if ctx is None or ctx.is_main:
        torch.save(out, out_path)
    if ctx is not None:
        ctx.close()


if __name__ == "__main__":
    main()
