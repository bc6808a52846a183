"""How much of a classifier's LRP relevance falls outside the lungs: the project's core diagnostic.

The background share of an image is Σ|R|·(1−m) / Σ|R| for the heatmap R of the predicted class. A model
that reads text markers or borders has a high share; one that looks at the lungs has a low one.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from isnet.lrp import LRPConfig, lrp_heatmaps


def background_share(heatmaps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] heatmaps and [B, 1, H, W] masks → [B, K] share of |R| outside the mask."""
    a = heatmaps.abs()
    m = (masks[:, :1] > 0.5).to(a.dtype)
    total = a.sum((-2, -1))
    outside = (a * (1 - m)).sum((-2, -1))
    return outside / total.clamp_min(torch.finfo(a.dtype).tiny)


def predicted_class(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1, keepdim=True)


def explained_batches(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                      config: LRPConfig | None, also: int | None = None) -> Iterator[dict]:
    """The one LRP pass over a loader (eval mode, heatmap of the predicted class): per batch the batch itself,
    ``probs`` [B, K], ``heat`` [B, 1, H, W] and ``bg_share`` [B] (NaN for images without a mask), on the CPU.
    ``config=None`` (a backbone without LRP support) gives probabilities only (``heat``/``bg_share`` None).
    ``also``: one more class explained in the same pass (same forward); its logit and the signed total Σ R of its
    heatmap come as ``also_logit`` and ``also_total`` [B] (float64).
    Used by validation diagnostics, ``isnet explain``, the report and the stress test."""
    model.eval()

    def targets(z: torch.Tensor) -> torch.Tensor:  # the predicted class, then ``also``
        top = predicted_class(z)
        return top if also is None else torch.cat([top, torch.full_like(top, also)], 1)

    for batch in loader:
        x = batch["image"].to(device)
        extra = {}
        if config is None:
            with torch.no_grad():
                logits = model(x)
            heat = share = None
        else:
            logits, heat = lrp_heatmaps(model, x, targets, config=config)
            heat = heat.detach()
            if also is not None:
                extra = {"also_logit": logits[:, also].detach().double().cpu(),
                         "also_total": heat[:, 1].double().sum((-2, -1)).cpu()}
                heat = heat[:, :1]
            share = background_share(heat, batch["mask"].to(device))[:, 0]
            share = torch.where(batch["has_mask"].bool().to(device), share, torch.full_like(share, float("nan")))
            heat, share = heat.cpu(), share.cpu()
        yield {"batch": batch, "probs": torch.softmax(logits.detach().float(), 1).cpu(), "heat": heat,
               "bg_share": share, **extra}


def explain_loader(model: torch.nn.Module, loader: DataLoader, device: torch.device, config: LRPConfig,
                   max_images: int | None = None, keep: int = 0) -> dict:
    """Heatmaps of the predicted class over a loader (eval mode): per-image shares, and the first ``keep``
    images with their masks and heatmaps for figures."""
    shares, rows, preds, labels, probs = [], [], [], [], []
    kept: dict[str, list] = {"image": [], "mask": [], "heatmap": [], "label": [], "pred": []}
    seen = 0
    for out in explained_batches(model, loader, device, config):
        batch, p, heat = out["batch"], out["probs"], out["heat"]
        shares.append(out["bg_share"].numpy())
        rows.extend(batch["row"].tolist())
        preds.append(p.argmax(1).numpy())
        labels.append(batch["label"].numpy())
        probs.append(p.numpy())
        if len(kept["image"]) < keep:
            take = min(keep - len(kept["image"]), len(p))
            kept["image"].extend(batch["image"][:take, 0].numpy())
            kept["mask"].extend(batch["mask"][:take, 0].numpy())
            kept["heatmap"].extend(heat[:take, 0].numpy())
            kept["label"].extend(batch["label"][:take].tolist())
            kept["pred"].extend(p.argmax(1)[:take].tolist())
        seen += len(p)
        if max_images is not None and seen >= max_images:
            break
    cat = lambda v: np.concatenate(v) if v else np.zeros(0)  # noqa: E731
    return {"bg_share": cat(shares), "rows": rows, "pred": cat(preds), "label": cat(labels),
            "probs": cat(probs), "kept": kept}


def mean_background_share(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                          config: LRPConfig | None) -> float:
    """The mean per-image background share of the predicted class's heatmap over a loader: the number a run's
    "val bg share" reports. NaN without LRP support (``config=None``) or without any lung mask."""
    if config is None:
        return float("nan")
    shares = [out["bg_share"].numpy() for out in explained_batches(model, loader, device, config)]
    values = np.concatenate(shares) if shares else np.array([np.nan])
    return float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")
