"""Classification metrics over predicted probabilities (scikit-learn), with one definition of an undefined metric.

Per class k (one-vs-rest): sensitivity (recall), specificity, precision, F1 and AUC. Macro values average
the classes for which the metric is defined (a class absent from a group has no sensitivity or AUC; a class
the model never predicts has no precision); balanced accuracy is the macro sensitivity. A metric with no
defined class is NaN, and ``reasons[metric]`` says why, so that a small or one-class site renders instead of
crashing. Training, the stress test and the external-site report all use these definitions.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_score, recall_score, roc_auc_score)

HEADLINE = ("macro_auc", "macro_f1", "macro_sensitivity", "macro_specificity", "macro_precision",
            "balanced_accuracy", "accuracy")
PER_CLASS = ("auc", "sensitivity", "specificity", "precision", "f1")
#: the headline numbers logged per epoch and per stress cell
SUMMARY = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1")


def _names(idx: Sequence[int], classes: Sequence[str]) -> str:
    return ", ".join(classes[i] for i in idx)


def point_metrics(y: Sequence[int], probs: np.ndarray, classes: Sequence[str]) -> tuple[dict, dict[str, str]]:
    """(values, reasons): headline metrics as floats, per-class metrics as {name: {class: float}}, the
    confusion matrix as a list of lists; ``reasons`` explains every NaN and every partial macro average."""
    k = len(classes)
    y = np.asarray(y, dtype=int)
    p = np.asarray(probs, dtype=float).reshape(len(y), k)
    labels = list(range(k))
    nan = math.nan
    reasons: dict[str, str] = {}
    if len(y) == 0:
        why = "no images in this group"
        vals = {m: nan for m in HEADLINE}
        vals.update({m: {c: nan for c in classes} for m in PER_CLASS})
        vals["confusion_matrix"] = [[0] * k for _ in range(k)]
        vals["n_images"] = 0
        reasons.update({m: why for m in HEADLINE + PER_CLASS})
        return vals, reasons
    pred = p.argmax(1)
    present = sorted(set(y.tolist()))
    absent = [c for c in labels if c not in present]
    never_pred = [c for c in labels if c not in set(pred.tolist())]
    cm = confusion_matrix(y, pred, labels=labels)
    vals: dict = {"n_images": int(len(y)), "confusion_matrix": cm.tolist()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sens = recall_score(y, pred, labels=labels, average=None, zero_division=np.nan)
        prec = precision_score(y, pred, labels=labels, average=None, zero_division=np.nan)
        f1 = f1_score(y, pred, labels=labels, average=None, zero_division=np.nan)
        bal = balanced_accuracy_score(y, pred)
    tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
    fp = cm.sum(0) - np.diag(cm)
    spec = np.array([tn[c] / (tn[c] + fp[c]) if tn[c] + fp[c] > 0 else nan for c in labels])
    auc = np.full(k, nan)
    for c in present:
        if len(present) > 1:
            auc[c] = roc_auc_score(y == c, p[:, c])
    vals["accuracy"] = float(accuracy_score(y, pred))
    vals["balanced_accuracy"] = float(bal)
    for name, arr in (("sensitivity", sens), ("specificity", spec), ("precision", prec), ("f1", f1), ("auc", auc)):
        arr = np.asarray(arr, dtype=float)
        vals[name] = {classes[c]: float(arr[c]) for c in labels}
        defined = ~np.isnan(arr)
        vals["macro_" + name] = float(arr[defined].mean()) if defined.any() else nan
    for c in labels:
        name = classes[c]
        if c in absent:
            reasons[f"sensitivity.{name}"] = f"no {name} images here"
            reasons[f"auc.{name}"] = f"no {name} images here"
        elif len(present) < 2:
            reasons[f"auc.{name}"] = f"only {name} images here: AUC needs negatives"
        if c in never_pred:
            reasons[f"precision.{name}"] = f"the model never predicted {name} here"
        if np.isnan(spec[c]):
            reasons[f"specificity.{name}"] = f"only {name} images here: no negatives"
        if np.isnan(f1[c]):
            reasons[f"f1.{name}"] = f"{name} neither present nor predicted"
    if len(present) < 2:
        only = _names(present, classes)
        why = f"only one class ({only}) at this site: AUC and specificity need images of other classes"
        for m in ("macro_auc", "macro_specificity", "auc", "specificity"):
            reasons[m] = why
    if absent:
        note = f"class(es) {_names(absent, classes)} absent: their sensitivity and AUC are undefined"
        if "macro_auc" in reasons:
            reasons["macro_sensitivity"] = reasons["balanced_accuracy"] = (
                f"averaged over the class present ({_names(present, classes)}); {note}")
        else:
            reasons["macro_auc"] = f"averaged over {_names(present, classes)}; {note}"
            reasons["macro_sensitivity"] = reasons["balanced_accuracy"] = reasons["macro_auc"]
    if never_pred:
        reasons["macro_precision"] = (f"averaged over the predicted classes; the model never predicted "
                                      f"{_names(never_pred, classes)}, so their precision is undefined")
    if "macro_f1" not in reasons:
        undefined_f1 = [c for c in labels if np.isnan(f1[c])]
        if undefined_f1:
            reasons["macro_f1"] = f"class(es) {_names(undefined_f1, classes)} neither present nor predicted: excluded"
    return vals, reasons


def classification_metrics(y_true: Sequence[int], probs: np.ndarray, num_classes: int) -> dict[str, float]:
    """The summary numbers (:data:`SUMMARY`) of :func:`point_metrics`, for classes named by their index."""
    vals, _ = point_metrics(y_true, probs, [str(k) for k in range(num_classes)])
    return {m: float(vals[m]) for m in SUMMARY}
