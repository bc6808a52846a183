"""Seeded, stratified, patient-grouped train/val/test assignment.

A patient's images must all land in one split, or the test score measures memorised anatomy. Rows that
already carry a split keep it; only empty cells are assigned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")


def assign_splits(df: pd.DataFrame, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                  seed: int = 0) -> pd.DataFrame:
    """Fill empty ``split`` cells. Patients are stratified by their most frequent label, then by site,
    so that every split sees every class from every site in about the requested proportions."""
    out = df.copy()
    if "split" not in out.columns:
        out["split"] = ""
    out["split"] = out["split"].fillna("").astype(str).str.strip().str.lower()
    todo = out["split"] == ""
    if not todo.any():
        return out
    pid = out["patient_id"] if "patient_id" in out.columns else pd.Series(out.index.astype(str), index=out.index)
    pid = pid.fillna("").astype(str)
    pid = pid.where(pid != "", "row" + out.index.astype(str))
    sub = out[todo].assign(_pid=pid[todo])
    site = sub["site"].astype(str) if "site" in sub.columns else ""
    sub = sub.assign(_site=site)
    per_patient = sub.groupby("_pid").agg(
        label=("label", lambda s: s.astype(str).value_counts().index[0]),
        site=("_site", "first"),
    )
    rng = np.random.default_rng(seed)
    target = np.asarray(fractions, dtype=float)
    counts = np.zeros(3)
    patient_split: dict[str, str] = {}
    # Walk the strata one after another (patients shuffled within each) and give every patient to the
    # split that is furthest behind its target share: exact overall proportions, and even a stratum of
    # five patients contributes to train, val and test.
    for _, group in per_patient.groupby(["label", "site"], sort=True):
        ids = np.array(sorted(group.index))
        rng.shuffle(ids)
        for p in ids:
            deficit = target * (counts.sum() + 1) - counts
            k = int(np.argmax(deficit))
            counts[k] += 1
            patient_split[p] = SPLITS[k]
    out.loc[todo, "split"] = sub["_pid"].map(patient_split).values
    return out
