"""Figures: heatmap grids (image, lung outline, relevance) that make shortcut learning visible."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from isnet.config.schema import INTENSITY_RANGES  # noqa: E402


def _symmetric(h: np.ndarray) -> float:
    v = float(np.percentile(np.abs(h), 99.5)) if h.size else 1.0
    return v if v > 0 else 1.0


def display_range(images: Sequence[np.ndarray]) -> tuple[float, float]:
    """The grey-level range to show network inputs with when their convention is not given: [0, 1] if every
    pixel lies in it, else torchxrayvision's [-1024, 1024] if every pixel lies in that, else their min/max."""
    vals = [np.asarray(im) for im in images if np.asarray(im).size]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(float(v.min()) for v in vals), max(float(v.max()) for v in vals)
    for a, b in (INTENSITY_RANGES["unit"], INTENSITY_RANGES["xrv"]):
        if a <= lo and hi <= b:
            return a, b
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def heatmap_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray], heatmaps: Sequence[np.ndarray],
                 titles: Sequence[str] | None = None, columns: int = 4,
                 value_range: tuple[float, float] | None = None):
    """Each example gets two panels: the radiograph with the lung outline, and its LRP heatmap (red =
    evidence for the explained class, blue = against) with the same outline. ``value_range``: the pixel
    range of the images (``DataConfig.value_range``: black, white); default: guessed by ``display_range``."""
    vmin, vmax = value_range if value_range is not None else display_range(images)
    n = len(images)
    cols = min(columns, max(n, 1))
    rows = int(np.ceil(n / cols)) if n else 1
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(4.0 * cols, 2.1 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, cols)
        a_img, a_hm = axes[r, 2 * c], axes[r, 2 * c + 1]
        a_img.imshow(images[i], cmap="gray", vmin=vmin, vmax=vmax)
        v = _symmetric(heatmaps[i])
        a_hm.imshow(heatmaps[i], cmap="bwr", vmin=-v, vmax=v)
        for ax in (a_img, a_hm):
            if masks[i] is not None and np.any(masks[i] > 0.5):
                ax.contour(masks[i] > 0.5, levels=[0.5], colors="lime", linewidths=0.6)
        if titles is not None:
            a_img.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    return fig


def comparison_grid(images: Sequence[np.ndarray], masks: Sequence[np.ndarray | None],
                    heatmap_rows: Sequence[Sequence[np.ndarray]], image_titles: Sequence[str],
                    heatmap_titles: Sequence[Sequence[str]], value_range: tuple[float, float] | None = None,
                    row_masks: Sequence[Sequence[np.ndarray | None]] | None = None):
    """Several models on the same images, one column per image: row 1 the radiograph with the lung outline,
    then one row of LRP heatmaps per model (each scaled on its own, red = for the explained class), so that
    where each model looks is compared image by image. ``row_masks``: the outline per heatmap row when a
    model saw the images at another size (default: ``masks``)."""
    vmin, vmax = value_range if value_range is not None else display_range(images)
    n = max(len(images), 1)
    rows = 1 + len(heatmap_rows)
    fig, axes = plt.subplots(rows, n, figsize=(1.9 * n, 2.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")

    def outline(ax, mask) -> None:
        if mask is not None and np.any(mask > 0.5):
            ax.contour(mask > 0.5, levels=[0.5], colors="lime", linewidths=0.6)

    for j, img in enumerate(images):
        axes[0, j].imshow(img, cmap="gray", vmin=vmin, vmax=vmax)
        outline(axes[0, j], masks[j])
        axes[0, j].set_title(image_titles[j], fontsize=7)
    for i, heats in enumerate(heatmap_rows, start=1):
        for j, h in enumerate(heats):
            v = _symmetric(h)
            axes[i, j].imshow(h, cmap="bwr", vmin=-v, vmax=v)
            outline(axes[i, j], (row_masks[i - 1] if row_masks is not None else masks)[j])
            axes[i, j].set_title(heatmap_titles[i - 1][j], fontsize=7)
    fig.tight_layout()
    return fig
