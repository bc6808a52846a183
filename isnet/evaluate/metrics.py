"""Classification metrics over predicted probabilities, computed with scikit-learn.

A metric that is undefined for the data (AUC when a class is absent) is returned as NaN with the reason in
``undefined`` rather than raising, because per-site test sets are often small and incomplete.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, roc_auc_score


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, num_classes: int) -> dict[str, float]:
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(probs, dtype=float)
    if len(y) == 0:
        return {"accuracy": math.nan, "balanced_accuracy": math.nan, "macro_auc": math.nan, "macro_f1": math.nan}
    pred = p.argmax(1)
    out = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "macro_f1": float(f1_score(y, pred, average="macro", labels=list(range(num_classes)), zero_division=0)),
    }
    present = np.unique(y)
    if len(present) == num_classes:
        out["macro_auc"] = float(roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(num_classes))))
    else:
        out["macro_auc"] = math.nan
    return out
