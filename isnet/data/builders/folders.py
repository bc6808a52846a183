"""Generic folder-per-class layout: ``<root>/<class>/**/<image>``, or ``<root>/<split>/<class>/**/<image>``
when the top folders are ``train``/``val``/``test``. Class folder names are lower-cased and mapped through
``--label-map`` (identity otherwise). Lung masks, if any, live under ``--mask-dir`` with the same relative
path and stem (any image suffix). ``site`` is ``--site`` or the root folder's name; each image is its own
patient unless its parent folder is named like ``patient_<id>``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .base import IMAGE_SUFFIXES, BuildContext, BuildResult, list_images, register

SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
               "test": "test", "testing": "test"}


def _mask_for(mask_dir: Path | None, rel: Path) -> Path | None:
    if mask_dir is None:
        return None
    for suffix in (rel.suffix,) + IMAGE_SUFFIXES + (".nii.gz", ".nii"):
        p = mask_dir / rel.with_suffix("").parent / (rel.stem + suffix)
        if p.is_file():
            return p
    return None


@register("folders", "generic: <root>/[<split>/]<class>/**/image; --label-map, --site, --mask-dir")
def build(ctx: BuildContext) -> BuildResult:
    mask_dir = ctx.mask_dir
    res = BuildResult(pd.DataFrame())
    tops = [d for d in sorted(ctx.root.iterdir()) if d.is_dir() and not d.name.startswith(".")
            and (mask_dir is None or d.resolve() != Path(mask_dir).resolve())]
    by_split = bool(tops) and all(d.name.lower() in SPLIT_NAMES for d in tops)
    groups = [(SPLIT_NAMES[t.name.lower()], c) for t in tops for c in sorted(t.iterdir()) if c.is_dir()] \
        if by_split else [("", t) for t in tops]
    rows = []
    for split, cls_dir in groups:
        raw = cls_dir.name
        label = ctx.label_map[raw] if raw in ctx.label_map else raw.lower()
        for img in list_images(cls_dir, recursive=True):
            if label is None:
                res.skipped[raw] += 1
                continue
            rel = img.relative_to(ctx.root)
            m = _mask_for(Path(mask_dir) if mask_dir else None, rel)
            parent = img.parent.name
            pid = parent if parent.lower().startswith("patient") else rel.with_suffix("").as_posix()
            rows.append({"image": ctx.rel(img), "mask": ctx.rel(m) if m else "", "label": label,
                         "site": ctx.site or ctx.root.resolve().name, "patient_id": pid, "split": split})
    res.frame = pd.DataFrame(rows)
    return res
