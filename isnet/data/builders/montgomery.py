"""Montgomery County TB set: ``CXR_png/MCUCXR_0001_0.png`` (suffix 0 = normal, 1 = TB) and the lung masks
``ManualMask/{leftMask,rightMask}/<same name>``, merged into one mask per image."""

from __future__ import annotations

import pandas as pd

from .base import BuildContext, BuildResult, list_images, merge_masks, register

LABELS = {"0": "normal", "1": "tb"}


def suffix_label(stem: str) -> str:
    return stem.rsplit("_", 1)[-1] if "_" in stem else ""


@register("montgomery", "Montgomery County: CXR_png/ + ManualMask/{leftMask,rightMask}/ (merged); _0 normal, _1 tb")
def build(ctx: BuildContext) -> BuildResult:
    res = BuildResult(pd.DataFrame())
    images = list_images(ctx.root / "CXR_png")
    left_dir, right_dir = ctx.root / "ManualMask" / "leftMask", ctx.root / "ManualMask" / "rightMask"
    rows = []
    for img in images:
        label = ctx.map_label(suffix_label(img.stem), LABELS)
        if label is None:
            res.skipped[suffix_label(img.stem)] += 1
            continue
        parts = [d / img.name for d in (left_dir, right_dir) if (d / img.name).is_file()]
        mask = ""
        if len(parts) == 2:
            mask = ctx.rel(merge_masks(parts, ctx.derived_dir / "masks" / (img.stem + ".png")))
        elif parts:
            res.notes.append(f"{img.name}: only one lung mask ({parts[0].parent.name}); mask left empty")
        rows.append({"image": ctx.rel(img), "mask": mask, "label": label, "site": ctx.site or "montgomery",
                     "patient_id": img.stem.rsplit("_", 1)[0], "split": ""})
    res.frame = pd.DataFrame(rows)
    return res
