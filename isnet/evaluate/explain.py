"""``isnet explain``: LRP heatmaps for any trained run on any manifest, as overlays and a CSV."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from isnet.data.dataset import eval_loader
from isnet.data.manifest import read_manifest, records_of, validate_manifest
from isnet.errors import ManifestError
from isnet.measure.figures import heatmap_grid
from isnet.lrp import run_lrp_config
from isnet.measure.relevance import explained_batches
from isnet.train.loading import load_run_model


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


def explain_run(run_id: str, manifest: str | Path, out_dir: str | Path, *, split: str | None = None,
                max_images: int | None = None, checkpoint_dir: str | Path = "checkpoints",
                tracking_uri: str | None = None, batch_size: int = 16) -> pd.DataFrame:
    """Write ``overlays/*.png`` and ``relevance.csv`` (per-image prediction and background share)."""
    model, cfg = load_run_model(run_id, checkpoint_dir, tracking_uri)
    classes = list(cfg.data.classes)
    df = read_manifest(manifest)
    if split:
        df = df[df["split"] == split]
        if df.empty:
            raise ManifestError(f"manifest {manifest} has no rows with split {split!r}")
    labelled = df["label"].isin(classes) | (df["label"] == "")
    # a masked-input model sees only the lungs: every image needs its mask (cfg.data.input_mask)
    report = validate_manifest(df[labelled], manifest, classes, require_masks=cfg.data.input_mask is not None)
    for r, lab in zip(df.loc[~labelled, "row"], df.loc[~labelled, "label"]):
        report.add(r, f"unknown label {lab!r}; the model knows {classes}")
    report.raise_if_any()
    if max_images:
        df = df.head(max_images)
    loader = eval_loader(records_of(df, classes, unlabelled=-1), cfg.data, batch_size=batch_size)
    lrp_cfg = run_lrp_config(cfg)
    out = Path(out_dir)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    rows = []
    by_row = df.set_index("row")
    for out_batch in explained_batches(model, loader, torch.device("cpu"), lrp_cfg):
        batch, prob, heat, share = out_batch["batch"], out_batch["probs"], out_batch["heat"], out_batch["bg_share"]
        for i, row in enumerate(batch["row"].tolist()):
            meta = by_row.loc[row]
            has_mask = bool(batch["has_mask"][i])
            pred = int(prob[i].argmax())
            bg = float(share[i]) if has_mask else float("nan")
            name = f"row{row:05d}_{_safe(Path(meta['image']).stem)}.png"
            title = f"{meta['label'] or '?'} → {classes[pred]} ({float(prob[i, pred]):.2f}); background {bg:.0%}"
            fig = heatmap_grid([batch["image"][i, 0].numpy()], [batch["mask"][i, 0].numpy() if has_mask else None],
                               [heat[i, 0].numpy()], [title], columns=1, value_range=cfg.data.value_range)
            fig.savefig(out / "overlays" / name, dpi=110)
            plt.close(fig)
            rows.append({"row": row, "image": meta["image"], "label": meta["label"], "site": meta["site"],
                         "predicted": classes[pred], "probability": float(prob[i, pred]),
                         "bg_share": bg, "overlay": f"overlays/{name}"})
    table = pd.DataFrame(rows)
    table.to_csv(out / "relevance.csv", index=False)
    return table


def summarise(table: pd.DataFrame) -> str:
    if table.empty:
        return "no images explained"
    acc = (table["label"] == table["predicted"]).mean() if (table["label"] != "").any() else float("nan")
    return (f"{len(table)} images; accuracy {acc:.3f}; mean background relevance share "
            f"{np.nanmean(table['bg_share']):.3f}")
