"""Shenzhen TB set: ``CXR_png/CHNCXR_0001_0.png`` (suffix 0 = normal, 1 = TB). Some files are palette or RGB
PNGs; they are converted to grey-scale copies. Lung masks, when present (the separately published
``mask/CHNCXR_0001_0_mask.png`` set, or ``masks/`` with the image's own name), are attached."""

from __future__ import annotations

import pandas as pd

from .base import BuildContext, BuildResult, grey_copy_if_needed, list_images, register
from .montgomery import suffix_label

LABELS = {"0": "normal", "1": "tb"}
MASK_DIRS = ("mask", "masks", "ManualMask")


def _find_mask(ctx: BuildContext, stem: str):
    for d in MASK_DIRS:
        for name in (f"{stem}_mask.png", f"{stem}.png"):
            p = ctx.root / d / name
            if p.is_file():
                return p
    return None


@register("shenzhen", "Shenzhen: CXR_png/ (palette/RGB converted), optional mask/*_mask.png; _0 normal, _1 tb")
def build(ctx: BuildContext) -> BuildResult:
    res = BuildResult(pd.DataFrame())
    rows = []
    converted = 0
    for img in list_images(ctx.root / "CXR_png"):
        label = ctx.map_label(suffix_label(img.stem), LABELS)
        if label is None:
            res.skipped[suffix_label(img.stem)] += 1
            continue
        used = grey_copy_if_needed(img, ctx, "images")
        converted += used != img
        m = _find_mask(ctx, img.stem)
        mask = ctx.rel(grey_copy_if_needed(m, ctx, "masks")) if m is not None else ""
        rows.append({"image": ctx.rel(used), "mask": mask, "label": label, "site": ctx.site or "shenzhen",
                     "patient_id": img.stem.rsplit("_", 1)[0], "split": ""})
    if converted:
        res.notes.append(f"{converted} palette/RGB image(s) converted to grey-scale under {ctx.derived_dir / 'images'}")
    res.frame = pd.DataFrame(rows)
    return res
