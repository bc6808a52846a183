"""Running a model over a loader and scoring it."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from isnet.measure.metrics import classification_metrics


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> dict:
    """Probabilities, labels, mean cross-entropy and the rows/sites for per-site breakdowns."""
    model.eval()
    probs, labels, rows, sites, loss_sum, n = [], [], [], [], 0.0, 0
    for batch in loader:
        x = batch["image"].to(device)
        y = batch["label"].to(device)
        logits = model(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        n += len(y)
        probs.append(torch.softmax(logits, 1).cpu().numpy())
        labels.append(y.cpu().numpy())
        rows.extend(batch["row"].tolist())
        sites.extend(batch["site"])
    return {
        "probs": np.concatenate(probs) if probs else np.zeros((0, 0)),
        "labels": np.concatenate(labels) if labels else np.zeros(0, dtype=int),
        "rows": rows,
        "sites": sites,
        "loss": loss_sum / max(n, 1),
    }


def score(pred: dict, num_classes: int) -> dict[str, float]:
    out = classification_metrics(pred["labels"], pred["probs"], num_classes)
    out["loss"] = pred["loss"]
    return out


def per_site_accuracy(pred: dict) -> dict[str, float]:
    sites = np.asarray(pred["sites"])
    hits = pred["probs"].argmax(1) == pred["labels"]
    return {str(s): float(hits[sites == s].mean()) for s in sorted(set(sites))}
