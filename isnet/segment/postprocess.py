"""Clean-up of predicted lung masks and the plausibility flag that a manifest records.

A U-Net's raw output can carry speckles outside the chest and holes where a lesion is dense; a lung mask is
two solid regions. ``clean_mask`` keeps the largest components and fills holes; ``mask_quality`` says "ok" or
why a mask is implausible, so that the manifest records the doubt instead of silently using the mask.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def clean_mask(mask: np.ndarray, keep_components: int = 2, fill_holes: bool = True) -> np.ndarray:
    """Keep the ``keep_components`` largest 8-connected regions, then fill holes inside each; uint8 0/1."""
    m = np.asarray(mask).astype(bool)
    lab, k = ndimage.label(m, structure=np.ones((3, 3), bool))
    if k > keep_components:
        sizes = ndimage.sum_labels(np.ones(m.shape), lab, index=np.arange(1, k + 1))
        keep = 1 + np.argsort(sizes)[::-1][:keep_components]
        m = np.isin(lab, keep)
    if fill_holes:
        m = ndimage.binary_fill_holes(m)
    return m.astype(np.uint8)


def mask_quality(mask: np.ndarray, area_range: tuple[float, float] = (0.10, 0.60)) -> str:
    """``ok`` or the reason a lung mask is implausible (empty, area outside ``area_range``, a single region)."""
    m = np.asarray(mask).astype(bool)
    frac = float(m.mean()) if m.size else 0.0
    if frac == 0:
        return "implausible: empty mask"
    lo, hi = area_range
    if frac < lo:
        return f"implausible: lung area {frac:.3f} of the image < {lo:.2f}"
    if frac > hi:
        return f"implausible: lung area {frac:.3f} of the image > {hi:.2f}"
    _, k = ndimage.label(m, structure=np.ones((3, 3), bool))
    if k < 2:
        return "implausible: one lung region (two expected)"
    return "ok"


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two binary masks (both 1.0 when both are empty)."""
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    inter, union, total = float((p & t).sum()), float((p | t).sum()), float(p.sum() + t.sum())
    if total == 0:
        return 1.0, 1.0
    return 2 * inter / total, inter / union
