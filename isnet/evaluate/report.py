"""The numbers of the external-site report, assembled from predictions (no models here).

``assemble_report`` takes, per method, the predicted probabilities and background relevance shares on the
external images, and (when it can be rebuilt) the same on the run's own test split; it returns one
JSON-ready dict: per-site and overall metrics with patient-level bootstrap CIs, per-class metrics, paired
comparisons of every pair of methods on the same resamples, the in-distribution → external gap, calibration
bins and confusion matrices. Undefined numbers are NaN with a reason.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from isnet.measure.bootstrap import bootstrap_metrics, paired_difference, patient_weights, percentile_ci
from isnet.measure.calibration import expected_calibration_error, reliability_bins
from isnet.measure.metrics import HEADLINE, PER_CLASS, point_metrics

OVERALL = "overall"
PAIRED_METRICS = ("macro_auc", "balanced_accuracy", "macro_f1", "ece", "bg_share_mean")
GAP_METRICS = ("macro_auc", "balanced_accuracy", "macro_f1", "accuracy", "ece")


@dataclass
class Cohort:
    """Images scored by one method: labels (class indices), sites, patients, probabilities, shares."""

    labels: np.ndarray
    sites: Sequence[str]
    patients: Sequence[str]
    probs: np.ndarray
    bg_share: np.ndarray | None = None


@dataclass
class MethodResult:
    name: str
    run_id: str
    external: Cohort
    in_distribution: Cohort | None = None
    logged_test: dict = field(default_factory=dict)
    note: str = ""
    info: dict = field(default_factory=dict)


def _bg_mean_weighted(share: np.ndarray, W: np.ndarray) -> np.ndarray:
    ok = np.isfinite(share)
    if not ok.any():
        return np.full(len(W), math.nan)
    w = W[:, ok]
    tot = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, (w * share[ok]).sum(1) / np.where(tot > 0, tot, 1), math.nan)


def _bg_summary(share: np.ndarray | None) -> dict:
    if share is None:
        return {"mean": math.nan, "median": math.nan, "n_with_mask": 0, "reason": "not computed"}
    ok = share[np.isfinite(share)]
    if ok.size == 0:
        reason = "no images in this group" if share.size == 0 else "no image in this group has a lung mask"
        return {"mean": math.nan, "median": math.nan, "n_with_mask": 0, "reason": reason}
    return {"mean": float(ok.mean()), "median": float(np.median(ok)), "n_with_mask": int(ok.size)}


def _score_group(c: Cohort, sel: np.ndarray, W: np.ndarray, classes: Sequence[str], n_bins: int,
                 level: float) -> tuple[dict, dict]:
    """(JSON entry, bootstrap samples) for the images ``sel`` of a cohort."""
    y, p = c.labels[sel], c.probs[sel]
    vals, reasons = point_metrics(y, p, classes)
    vals["n_patients"] = int(len(set(np.asarray(c.patients)[sel].tolist())))
    vals["ece"] = expected_calibration_error(y, p, n_bins)
    if not len(y):
        reasons["ece"] = "no images in this group"
    share = c.bg_share[sel] if c.bg_share is not None else None
    bg = _bg_summary(share)
    vals["bg_share_mean"], vals["bg_share_median"] = bg["mean"], bg["median"]
    vals["n_with_mask"] = bg["n_with_mask"]
    if "reason" in bg:
        reasons["bg_share_mean"] = reasons["bg_share_median"] = bg["reason"]
    Wg = W[:, sel]
    samples = bootstrap_metrics(y, p, Wg, len(classes), n_bins) if len(y) else {}
    if len(y):
        samples["bg_share_mean"] = (_bg_mean_weighted(share, Wg) if share is not None
                                    else np.full(len(W), math.nan))
    ci = {}
    for m in HEADLINE + ("ece", "bg_share_mean"):
        lo, hi = percentile_ci(samples[m], level) if m in samples else (math.nan, math.nan)
        ci[m] = [lo, hi]
        if math.isnan(lo) and math.isfinite(vals.get(m, math.nan)) and m not in reasons:
            reasons[f"{m}_ci"] = "too many resamples left it undefined (too few patients of some class)"
    per_class_ci = {m: {cls: list(percentile_ci(samples[m][:, i], level)) if m in samples else [math.nan, math.nan]
                        for i, cls in enumerate(classes)} for m in PER_CLASS}
    entry = {"values": vals, "ci": ci, "per_class_ci": per_class_ci, "reasons": reasons,
             "calibration": {**reliability_bins(y, p, n_bins), "ece": vals["ece"]}}
    return entry, samples


def assemble_report(methods: Sequence[MethodResult], classes: Sequence[str], sites: Sequence[str], *,
                    n_resamples: int = 1000, seed: int = 0, n_bins: int = 10, level: float = 0.95) -> dict:
    """All numbers of the report. Every method must have scored the same external images in the same order
    (the paired comparison resamples patients once and applies the same weights to every method)."""
    if not methods:
        raise ValueError("no methods to report")
    ext = methods[0].external
    n = len(ext.labels)
    for m in methods[1:]:
        if len(m.external.labels) != n or not np.array_equal(m.external.labels, ext.labels):
            raise ValueError(f"method {m.name} scored different images than {methods[0].name}")
    site_arr = np.asarray([str(s) for s in ext.sites])
    rng = np.random.default_rng(seed)
    W = patient_weights(ext.patients, n_resamples, rng, strata=site_arr)
    groups = [OVERALL] + list(sites)
    masks = {OVERALL: np.ones(n, dtype=bool), **{s: site_arr == s for s in sites}}

    data = {}
    for g in groups:
        sel = masks[g]
        lab = ext.labels[sel]
        data[g] = {"n_images": int(sel.sum()), "n_patients": int(len(set(np.asarray(ext.patients)[sel].tolist()))),
                   "per_class": {c: int((lab == i).sum()) for i, c in enumerate(classes)}}

    metrics, samples = {}, {}
    for m in methods:
        metrics[m.name], samples[m.name] = {}, {}
        for g in groups:
            metrics[m.name][g], samples[m.name][g] = _score_group(m.external, masks[g], W, classes, n_bins, level)

    paired = []
    for a, b in itertools.combinations([m.name for m in methods], 2):
        for g in groups:
            for metric in PAIRED_METRICS:
                sa, sb = samples[a][g].get(metric), samples[b][g].get(metric)
                pa, pb = metrics[a][g]["values"][metric], metrics[b][g]["values"][metric]
                if sa is None or sb is None:
                    res = {"difference": math.nan, "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan,
                           "resamples": 0, "reason": "no images in this group"}
                else:
                    res = paired_difference(sa, sb, pa, pb, level)
                    if math.isnan(res["p_value"]):
                        res["reason"] = (metrics[a][g]["reasons"].get(metric) or metrics[b][g]["reasons"].get(metric)
                                         or "undefined in too many resamples")
                paired.append({"a": a, "b": b, "group": g, "metric": metric, **res})

    gaps = {m.name: _gap(m, metrics[m.name][OVERALL], samples[m.name][OVERALL], classes, n_resamples, seed,
                         n_bins, level) for m in methods}
    return {
        "classes": list(classes), "sites": list(sites), "groups": groups, "n_resamples": n_resamples,
        "seed": seed, "ci_level": level, "n_bins": n_bins, "data": data,
        "methods": [{"name": m.name, "run_id": m.run_id, **m.info, **({"note": m.note} if m.note else {})}
                    for m in methods],
        "metrics": metrics, "paired": paired, "gap": gaps,
    }


def _gap(m: MethodResult, ood: dict, ood_samples: dict, classes: Sequence[str], n_resamples: int, seed: int,
         n_bins: int, level: float) -> dict:
    """External (overall) minus in-distribution (the run's own test split); CIs from independent
    bootstraps of the two sets (difference of the resampled values)."""
    out: dict = {"source": None, "in_distribution": {}, "external": {}, "gap": {}}
    for k in GAP_METRICS:
        out["external"][k] = ood["values"].get(k, math.nan)
    if m.in_distribution is not None and len(m.in_distribution.labels):
        c = m.in_distribution
        W = patient_weights(c.patients, n_resamples, np.random.default_rng(seed + 1),
                            strata=np.asarray([str(s) for s in c.sites]))
        entry, s_id = _score_group(c, np.ones(len(c.labels), dtype=bool), W, classes, n_bins, level)
        out["source"] = "recomputed on the run's test split"
        out["n_images"] = entry["values"]["n_images"]
        out["n_patients"] = entry["values"]["n_patients"]
        out["id_ci"] = {k: entry["ci"].get(k, [math.nan, math.nan]) for k in GAP_METRICS}
        for k in GAP_METRICS:
            idv = entry["values"].get(k, math.nan)
            out["in_distribution"][k] = idv
            if k in s_id and k in ood_samples:
                d = np.asarray(ood_samples[k]) - np.asarray(s_id[k])
                lo, hi = percentile_ci(d, level)
            else:
                lo = hi = math.nan
            out["gap"][k] = {"difference": out["external"][k] - idv, "ci_low": lo, "ci_high": hi}
        return out
    if m.logged_test:
        out["source"] = "test metrics logged by the training run (no CI: its test images were not found)"
        for k in GAP_METRICS:
            idv = float(m.logged_test.get(f"test_{k}", math.nan))
            out["in_distribution"][k] = idv
            out["gap"][k] = {"difference": out["external"][k] - idv, "ci_low": math.nan, "ci_high": math.nan}
        return out
    out["source"] = "unavailable"
    out["reason"] = m.note or "the run has no test split and no logged test metrics"
    for k in GAP_METRICS:
        out["in_distribution"][k] = math.nan
        out["gap"][k] = {"difference": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    return out
