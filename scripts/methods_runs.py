"""Short real runs of each training method on 64 px marker phantoms (the numbers of docs/notes/methods-log.md).

Usage (from a scratch folder: the MLflow store and checkpoints are written to the current directory):

    isnet phantom --out ph64 --sites 2 --per-class 24 --seed 5 --size 64 --class-marker-rate 1.0
    python scripts/methods_runs.py ph64/manifest.csv NAME "METHODS" [KEY=VALUE ...] >> runs.jsonl

e.g. ``python scripts/methods_runs.py ph64/manifest.csv rrr-1e4 rrr method.rrr.lam=1e4``. One run: small_cnn
(width 8), batch 16, 6 epochs, one CPU thread; then the best checkpoint's test accuracy and mean background
relevance share (LRP of the predicted class with the run's rules, as ``isnet explain``) on the run's own test
split. Prints one JSON line with those, the validation share of the last epoch and the method's last-epoch
training metrics. ``--evaluate RUN_ID MANIFEST`` scores an existing run; ``--figure RUN_ID MANIFEST OUT.png``
draws the heatmaps of four test images (normal, covid, tb, covid) of a run, as in docs/methods.md.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from mlflow.tracking import MlflowClient

from isnet.lrp import run_lrp_config
from isnet.config import load_config
from isnet.data.dataset import build_dataset, build_loader
from isnet.data.manifest import load_manifest
from isnet.measure.relevance import explain_loader
from isnet.tracking import store_uri
from isnet.train.loading import load_run_model
from isnet.train.run import train

RECIPE = ["model.backbone=small_cnn", "model.width=8", "data.image_size=64", "data.batch_size=16",
          "optim.epochs=6", "optim.early_stopping_patience=0", "train.threads=1", "train.heatmap_every=0",
          "tracking.log_model=false", "tracking.experiment=methods_64px"]


def main(manifest: str, name: str, methods: str, *overrides: str) -> None:
    cfg = load_config(None, [*RECIPE, f"methods=[{methods}]", f"tracking.run_name={name}", *overrides])
    t0 = time.perf_counter()
    result = train(cfg, manifest, progress=False)
    seconds = time.perf_counter() - t0
    print(json.dumps({"name": name, "methods": methods, "overrides": list(overrides),
                      **evaluate(result.run_id, manifest), "seconds": round(seconds, 1)}), flush=True)


def gradient_bg_share(model: torch.nn.Module, loader) -> float:
    """Mean over images of the share of |∂Σ_c log p_c/∂x|² outside the lung mask: the explanation that RRR
    penalises (eval mode)."""
    shares = []
    for batch in loader:
        x = batch["image"].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(torch.log_softmax(model(x), 1).sum(), x)
        sq = (g ** 2).sum(1)
        bg = 1.0 - (batch["mask"][:, 0] > 0.5).to(sq.dtype)
        shares.append(((sq * bg).flatten(1).sum(1) / sq.flatten(1).sum(1).clamp_min(1e-30)).numpy())
    return float(np.nanmean(np.concatenate(shares)))


def evaluate(run_id: str, manifest: str) -> dict:
    """Test accuracy and background shares (LRP of the predicted class; RRR's input gradient) of a run's best
    checkpoint on its own test split, and its last-epoch training metrics."""
    model, run_cfg = load_run_model(run_id)
    man = load_manifest(manifest, run_cfg.data.classes, split_fractions=run_cfg.data.split_fractions,
                        split_seed=run_cfg.data.split_seed)
    loader = build_loader(build_dataset(man.records("test"), run_cfg.data, train=False), run_cfg.data,
                          shuffle=False)
    res = explain_loader(model, loader, torch.device("cpu"), run_lrp_config(run_cfg))
    metrics = MlflowClient(store_uri()).get_run(run_id).data.metrics
    train_metrics = {k: round(v, 5) for k, v in metrics.items()
                     if k.startswith("train_") and k not in ("train_loss", "train_accuracy")}
    return {"run_id": run_id, "test_accuracy": round(float(metrics["test_accuracy"]), 4),
            "test_bg_share": round(float(np.nanmean(res["bg_share"])), 4),
            "test_grad_bg_share": round(gradient_bg_share(model, loader), 4),
            "val_bg_share_last": round(float(metrics.get("val_bg_share", float("nan"))), 4),
            "train_accuracy_last": round(float(metrics["train_accuracy"]), 4), "train": train_metrics}


def figure(run_id: str, manifest: str, out: str) -> None:
    """LRP heatmaps (predicted class, the run's rules) of four test images: the first normal, covid and tb
    image and the second covid image of the run's test split."""
    import matplotlib

    matplotlib.use("Agg")
    from isnet.measure.figures import heatmap_grid

    model, run_cfg = load_run_model(run_id)
    man = load_manifest(manifest, run_cfg.data.classes, split_fractions=run_cfg.data.split_fractions,
                        split_seed=run_cfg.data.split_seed)
    by_class = {k: [r for r in man.records("test") if r["label"] == k] for k in range(len(run_cfg.data.classes))}
    records = [by_class[0][0], by_class[1][0], by_class[2][0], by_class[1][1]]
    loader = build_loader(build_dataset(records, run_cfg.data, train=False), run_cfg.data, shuffle=False)
    kept = explain_loader(model, loader, torch.device("cpu"), run_lrp_config(run_cfg), keep=4)["kept"]
    names = run_cfg.data.classes
    titles = [f"{names[t]} → {names[p]}" for t, p in zip(kept["label"], kept["pred"])]
    fig = heatmap_grid(kept["image"], kept["mask"], kept["heatmap"], titles, value_range=run_cfg.data.value_range)
    fig.savefig(out, dpi=80, bbox_inches="tight")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--evaluate":  # --evaluate RUN_ID MANIFEST: an existing run
        print(json.dumps(evaluate(sys.argv[2], sys.argv[3])))
    elif len(sys.argv) == 5 and sys.argv[1] == "--figure":
        figure(*sys.argv[2:])
    elif len(sys.argv) < 4:
        sys.exit(__doc__)
    else:
        main(*sys.argv[1:])
