"""COVID-QU-Ex: ``{Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks}/<name>.png``.

The root may be the ``Lung Segmentation Data`` folder, the ``Infection Segmentation Data`` folder, or their
parent (both are read; an image present in both keeps its first row). Splits come from the folders. The data
set carries no patient ids: each image is its own patient, so cross-split leakage cannot be checked.
"""

from __future__ import annotations

import pandas as pd

from .base import BuildContext, BuildResult, list_images, register

LABELS = {"COVID-19": "covid", "Normal": "normal", "Non-COVID": None}
SPLITS = {"Train": "train", "Val": "val", "Test": "test"}
SUBSETS = ("Lung Segmentation Data", "Infection Segmentation Data")


@register("covid-qu-ex", "COVID-QU-Ex: {Train,Val,Test}/{COVID-19,Non-COVID,Normal}/{images,lung masks}/")
def build(ctx: BuildContext) -> BuildResult:
    res = BuildResult(pd.DataFrame())
    roots = [ctx.root / s for s in SUBSETS if (ctx.root / s).is_dir()] or [ctx.root]
    rows, seen = [], set()
    for root in roots:
        for split_dir, split in SPLITS.items():
            for cls_dir in sorted((root / split_dir).glob("*")) if (root / split_dir).is_dir() else []:
                if not cls_dir.is_dir():
                    continue
                label = ctx.map_label(cls_dir.name, LABELS)
                for img in list_images(cls_dir / "images"):
                    if label is None:
                        res.skipped[cls_dir.name] += 1
                        continue
                    key = (split, cls_dir.name, img.name)
                    if key in seen:
                        continue
                    seen.add(key)
                    m = cls_dir / "lung masks" / img.name
                    rows.append({"image": ctx.rel(img), "mask": ctx.rel(m) if m.is_file() else "", "label": label,
                                 "site": ctx.site or "covid-qu-ex", "patient_id": f"{cls_dir.name}/{img.stem}",
                                 "split": split})
    res.frame = pd.DataFrame(rows)
    return res
