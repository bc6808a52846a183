"""Patient-level bootstrap of classification metrics, vectorised over resamples.

A resample draws patients with replacement (within each stratum, e.g. site, so that every site keeps its
size) and gives each image the number of times its patient was drawn as a weight. All metrics of all
resamples are then computed at once from those weights: confusion counts are one ``einsum``, the AUC is
the weighted Mann-Whitney statistic over the sorted scores. scikit-learn computes the point estimates
(:mod:`isnet.measure.metrics`); it has no vectorised weighted bootstrap, so that part is written here
and tested against scikit-learn with ``sample_weight``.

Metric definitions (the same as the point estimates):
per class k (one-vs-rest): sensitivity TP/(TP+FN), specificity TN/(TN+FP), precision TP/(TP+FP),
F1 2TP/(2TP+FP+FN), AUC P(s_pos > s_neg) + ½P(tie); undefined (NaN) when the denominator is zero.
Macro values average the defined classes; balanced accuracy = macro sensitivity.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np



def patient_weights(patients: Sequence[str], n_resamples: int, rng: np.random.Generator,
                    strata: Sequence[str] | None = None) -> np.ndarray:
    """[R, N] image weights (how often each image's patient was drawn) for ``n_resamples`` patient-level
    bootstrap resamples; patients are drawn within each stratum so stratum sizes stay fixed."""
    patients = np.asarray([str(p) for p in patients])
    n = len(patients)
    W = np.zeros((n_resamples, n), dtype=np.float64)
    if n == 0:
        return W
    strata = np.asarray([str(s) for s in strata]) if strata is not None else np.zeros(n, dtype=str)
    for s in sorted(set(strata.tolist())):
        idx = np.flatnonzero(strata == s)
        uniq, inv = np.unique(patients[idx], return_inverse=True)
        p = len(uniq)
        draws = rng.integers(0, p, size=(n_resamples, p))
        flat = (draws + np.arange(n_resamples)[:, None] * p).ravel()
        counts = np.bincount(flat, minlength=n_resamples * p).reshape(n_resamples, p)
        W[:, idx] = counts[:, inv]
    return W


def confusion_counts(y: np.ndarray, pred: np.ndarray, num_classes: int, W: np.ndarray) -> np.ndarray:
    """[R, K, K] weighted confusion matrices (rows: true class, columns: predicted)."""
    Y = np.eye(num_classes)[np.asarray(y, dtype=int)]
    P = np.eye(num_classes)[np.asarray(pred, dtype=int)]
    return np.einsum("rn,ni,nj->rij", W, Y, P, optimize=True)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _nanmean(a: np.ndarray, axis: int = -1) -> np.ndarray:
    ok = ~np.isnan(a)
    n = ok.sum(axis)
    s = np.where(ok, a, 0).sum(axis)
    return np.where(n > 0, s / np.where(n > 0, n, 1), np.nan)


def metrics_from_confusion(C: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of [..., K, K] confusion matrices: macro values and per-class arrays [..., K]."""
    C = np.asarray(C, dtype=float)
    tp = np.diagonal(C, axis1=-2, axis2=-1)
    support = C.sum(-1)
    predicted = C.sum(-2)
    total = C.sum((-2, -1))
    fn = support - tp
    fp = predicted - tp
    tn = total[..., None] - tp - fn - fp
    sens = _div(tp, tp + fn)
    spec = _div(tn, tn + fp)
    prec = _div(tp, tp + fp)
    f1 = _div(2 * tp, 2 * tp + fp + fn)
    out = {
        "accuracy": _div(tp.sum(-1), total),
        "macro_sensitivity": _nanmean(sens),
        "macro_specificity": _nanmean(spec),
        "macro_precision": _nanmean(prec),
        "macro_f1": _nanmean(f1),
        "sensitivity": sens, "specificity": spec, "precision": prec, "f1": f1,
    }
    out["balanced_accuracy"] = out["macro_sensitivity"]
    return out


def weighted_auc(positive: np.ndarray, score: np.ndarray, W: np.ndarray) -> np.ndarray:
    """[R] weighted one-vs-rest AUC, P(s_pos > s_neg) + ½ P(s_pos = s_neg), for every row of ``W``."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    W = np.atleast_2d(np.asarray(W, dtype=float))
    order = np.argsort(score, kind="mergesort")
    s = score[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]]) if len(s) else np.zeros(0, dtype=int)
    w = W[:, order]
    pos = positive[order]
    if len(s) == 0:
        return np.full(len(W), np.nan)
    Pw = np.add.reduceat(w * pos, starts, axis=1)
    Nw = np.add.reduceat(w * ~pos, starts, axis=1)
    below = np.cumsum(Nw, axis=1) - Nw
    num = (Pw * (below + 0.5 * Nw)).sum(1)
    return _div(num, Pw.sum(1) * Nw.sum(1))


def expected_calibration_error_weighted(y: np.ndarray, probs: np.ndarray, W: np.ndarray,
                                        n_bins: int = 10) -> np.ndarray:
    """[R] top-label ECE with equal-width confidence bins, for every row of ``W``."""
    probs = np.asarray(probs, dtype=float)
    W = np.atleast_2d(np.asarray(W, dtype=float))
    if probs.size == 0:
        return np.full(len(W), np.nan)
    conf = probs.max(1)
    correct = (probs.argmax(1) == np.asarray(y)).astype(float)
    b = confidence_bins(conf, n_bins)
    onehot = np.eye(n_bins)[b]                       # [N, B]
    gap = (W * (conf - correct)) @ onehot            # [R, B] Σ w (conf − correct) per bin
    return _div(np.abs(gap).sum(1), W.sum(1))


def confidence_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence in equal-width bins over [0, 1]; bin i is [i/n, (i+1)/n), the last
    bin also holds 1."""
    return np.clip(np.floor(np.asarray(conf) * n_bins).astype(int), 0, n_bins - 1)


def bootstrap_metrics(y: np.ndarray, probs: np.ndarray, W: np.ndarray, num_classes: int,
                      n_bins: int = 10) -> dict[str, np.ndarray]:
    """Every headline metric for every resample: {name: [R]} plus per-class {name: [R, K]}."""
    y = np.asarray(y, dtype=int)
    probs = np.asarray(probs, dtype=float).reshape(len(y), num_classes)
    out = metrics_from_confusion(confusion_counts(y, probs.argmax(1), num_classes, W))
    auc = np.stack([weighted_auc(y == k, probs[:, k], W) for k in range(num_classes)], axis=-1)
    out["auc"] = auc
    out["macro_auc"] = _nanmean(auc)
    out["ece"] = expected_calibration_error_weighted(y, probs, W, n_bins)
    return out


def percentile_ci(samples: np.ndarray, level: float = 0.95, max_undefined: float = 0.05) -> tuple[float, float]:
    """Percentile interval of bootstrap samples; NaN when more than ``max_undefined`` of the resamples
    left the metric undefined (e.g. a class missing from too many resamples)."""
    a = np.asarray(samples, dtype=float)
    ok = a[~np.isnan(a)]
    if a.size == 0 or ok.size < (1 - max_undefined) * a.size or ok.size == 0:
        return (math.nan, math.nan)
    lo, hi = np.quantile(ok, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def paired_difference(a: np.ndarray, b: np.ndarray, point_a: float, point_b: float,
                      level: float = 0.95) -> dict[str, float]:
    """Paired bootstrap comparison of two methods scored on the same resamples: difference a − b, its
    percentile interval, and a two-sided p-value for "no difference" (the share of resamples on the other
    side of zero, doubled; (count+1)/(R+1) so it is never exactly 0)."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    diff = point_a - point_b
    lo, hi = percentile_ci(d, level)
    ok = d[~np.isnan(d)]
    if not math.isfinite(diff) or math.isnan(lo) or ok.size == 0:
        return {"difference": diff if math.isfinite(diff) else math.nan, "ci_low": math.nan, "ci_high": math.nan,
                "p_value": math.nan, "resamples": int(ok.size)}
    below = (np.sum(ok <= 0) + 1) / (ok.size + 1)
    above = (np.sum(ok >= 0) + 1) / (ok.size + 1)
    return {"difference": float(diff), "ci_low": lo, "ci_high": hi, "p_value": float(min(1.0, 2 * min(below, above))),
            "resamples": int(ok.size)}
