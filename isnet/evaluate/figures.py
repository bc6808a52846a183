"""Figures: heatmap grids (image, lung outline, relevance) that make shortcut learning visible."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _symmetric(h: np.ndarray) -> float:
    v = float(np.percentile(np.abs(h), 99.5)) if h.size else 1.0
    return v if v > 0 else 1.0


def heatmap_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], heatmaps: Sequence[np.ndarray],
                 titles: Sequence[str] | None = None, columns: int = 4):
    """Each example gets two panels: the radiograph with the lung outline, and its LRP heatmap (red =
    evidence for the explained class, blue = against) with the same outline."""
    n = len(images)
    cols = min(columns, max(n, 1))
    rows = int(np.ceil(n / cols)) if n else 1
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4.0 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        a_img, a_hm = axes[r, 2 * c], axes[r, 2 * c + 1]
        a_img.imshow(images[i], cmap="gray", vmin=0, vmax=1)
        v = _symmetric(heatmaps[i])
        a_hm.imshow(heatmaps[i], cmap="bwr", vmin=-v, vmax=v)
        for ax in (a_img, a_hm):
            if masks[i] is not None and np.any(masks[i] > 0.5):
                ax.contour(masks[i] > 0.5, levels=[0.5], colors="lime", linewidths=0.6)
        if titles is not None:
            a_img.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig
