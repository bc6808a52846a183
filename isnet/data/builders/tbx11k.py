"""TBX11K: ``imgs/{health,sick,tb,test}/<name>.png`` and ``lists/{TBX11K_train,TBX11K_val}.txt`` (one
``folder/name.png`` per line). ``health`` = normal, ``tb`` = TB; ``sick`` (sick but not TB) is skipped by default and
``test`` has no public labels. Without the lists every labelled image is read with an empty split."""

from __future__ import annotations

import pandas as pd

from .base import BuildContext, BuildResult, list_images, register

LABELS = {"health": "normal", "tb": "tb", "sick": None}
LISTS = {"train": "TBX11K_train.txt", "val": "TBX11K_val.txt"}


@register("tbx11k", "TBX11K: imgs/{health,sick,tb}/ + lists/TBX11K_{train,val}.txt; health normal, tb tb, sick skipped")
def build(ctx: BuildContext) -> BuildResult:
    res = BuildResult(pd.DataFrame())
    imgs = ctx.root / "imgs"
    entries: list[tuple[str, str]] = []
    listed = {s: ctx.root / "lists" / f for s, f in LISTS.items() if (ctx.root / "lists" / f).is_file()}
    if listed:
        for split, path in listed.items():
            entries += [(line.strip(), split) for line in path.read_text().splitlines() if line.strip()]
    else:
        for folder in LABELS:
            entries += [(f"{folder}/{p.name}", "") for p in list_images(imgs / folder)]
    rows = []
    for rel, split in entries:
        folder = rel.split("/", 1)[0]
        label = ctx.map_label(folder, LABELS)
        if label is None:
            res.skipped[folder] += 1
            continue
        img = imgs / rel
        rows.append({"image": ctx.rel(img), "mask": "", "label": label, "site": ctx.site or "tbx11k",
                     "patient_id": f"tbx11k:{img.stem}", "split": split})
    res.frame = pd.DataFrame(rows)
    return res
