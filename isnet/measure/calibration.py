"""Calibration: top-label expected calibration error and reliability diagrams.

ECE = Σ_b (n_b / N) · |accuracy_b − confidence_b| over equal-width bins of the top-label confidence
(max softmax probability); bin i covers [i/B, (i+1)/B), the last bin also 1. scikit-learn's
``calibration_curve`` is binary only, so the multi-class top-label version is written here.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from isnet.measure.bootstrap import confidence_bins  # noqa: E402


def reliability_bins(y: Sequence[int], probs: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """Per bin: edges, image count, mean confidence and accuracy (NaN for empty bins)."""
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y, dtype=int)
    edges = np.linspace(0, 1, n_bins + 1)
    count = np.zeros(n_bins, dtype=int)
    conf_mean = np.full(n_bins, math.nan)
    acc = np.full(n_bins, math.nan)
    if len(y):
        conf = probs.max(1)
        correct = probs.argmax(1) == y
        b = confidence_bins(conf, n_bins)
        for i in range(n_bins):
            sel = b == i
            count[i] = int(sel.sum())
            if count[i]:
                conf_mean[i] = float(conf[sel].mean())
                acc[i] = float(correct[sel].mean())
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": conf_mean.tolist(),
            "accuracy": acc.tolist()}


def expected_calibration_error(y: Sequence[int], probs: np.ndarray, n_bins: int = 10) -> float:
    bins = reliability_bins(y, probs, n_bins)
    n = sum(bins["count"])
    if n == 0:
        return math.nan
    return float(sum(c / n * abs(a - f) for c, a, f in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c))


def reliability_figure(curves: Mapping[str, dict], title: str = "Reliability (top-label)"):
    """One panel per method: accuracy against mean confidence per bin, the diagonal, and bin counts."""
    n = max(len(curves), 1)
    fig, axes = plt.subplots(1, n, figsize=(3.4 * n, 3.3), squeeze=False)
    for ax, (name, bins) in zip(axes[0], curves.items()):
        edges = np.asarray(bins["edges"])
        centers = (edges[:-1] + edges[1:]) / 2
        width = edges[1] - edges[0]
        acc = np.asarray(bins["accuracy"], dtype=float)
        conf = np.asarray(bins["confidence"], dtype=float)
        ax.bar(centers, np.nan_to_num(acc), width=width * 0.9, color="#4c72b0", alpha=0.8, label="accuracy")
        ax.bar(centers, np.nan_to_num(conf - acc), bottom=np.nan_to_num(acc), width=width * 0.9, color="none",
               edgecolor="#c44e52", hatch="//", linewidth=0.6, label="gap to confidence")
        ax.plot([0, 1], [0, 1], "k--", linewidth=0.8)
        counts = bins["count"]
        for c, k in zip(centers, counts):
            if k:
                ax.text(c, 0.02, str(k), ha="center", va="bottom", fontsize=6, color="white", rotation=90)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{name}\nECE {bins.get('ece', math.nan):.3f}", fontsize=8)
        ax.legend(fontsize=6, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
