"""COVIDx CXR: ``train.txt`` / ``val.txt`` / ``test.txt`` with one image per line,
``patient_id filename label source`` (space separated), images in ``train/``, ``val/``, ``test/``.

Both label vocabularies are mapped: CXR-3/4 (``positive``/``negative``) and CXR-1/2 (``COVID-19``/``normal``/
``pneumonia``). The ``site`` is the data source column (``covidx:<source>``), so that per-source
out-of-distribution evaluation works on the merged set.
"""

from __future__ import annotations

import pandas as pd

from isnet.errors import UserError

from .base import BuildContext, BuildResult, register

LABELS = {"positive": "covid", "COVID-19": "covid", "covid": "covid", "negative": "normal", "normal": "normal",
          "pneumonia": None}
SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}


@register("covidx", "COVIDx CXR: {train,val,test}.txt (patient_id filename label source) + {train,val,test}/")
def build(ctx: BuildContext) -> BuildResult:
    res = BuildResult(pd.DataFrame())
    rows = []
    lists = {s: ctx.root / f for s, f in SPLIT_FILES.items() if (ctx.root / f).is_file()}
    if not lists:
        raise UserError(f"covidx: none of {list(SPLIT_FILES.values())} found in {ctx.root}")
    for split, listing in lists.items():
        for n, line in enumerate(listing.read_text().splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) < 3:
                raise UserError(f"{listing}: line {n}: expected 'patient_id filename label [source]', got {line!r}")
            pid, fname, raw = parts[0], parts[1], parts[2]
            source = parts[3] if len(parts) > 3 else "unknown"
            label = ctx.map_label(raw, LABELS)
            if label is None:
                res.skipped[raw] += 1
                continue
            img = ctx.root / split / fname
            rows.append({"image": ctx.rel(img), "mask": "", "label": label,
                         "site": ctx.site or f"covidx:{source}", "patient_id": f"{source}:{pid}", "split": split})
    res.frame = pd.DataFrame(rows)
    return res
