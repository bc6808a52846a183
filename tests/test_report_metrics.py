"""Report metrics against hand-computed values, the vectorised bootstrap against scikit-learn, and the
bootstrap's coverage of a simulated population's true AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

from isnet.measure.bootstrap import (bootstrap_metrics, paired_difference, patient_weights, percentile_ci,
                                      weighted_auc)
from isnet.measure.calibration import expected_calibration_error, reliability_bins
from isnet.evaluate.report import Cohort, MethodResult, assemble_report
from isnet.measure.metrics import point_metrics

CLASSES = ["normal", "covid", "tb"]
# Six images, two per class. Predictions: 0,1,1,1,2,0 → confusion [[1,1,0],[0,2,0],[1,0,1]].
Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array([[0.72, 0.18, 0.10],
              [0.30, 0.55, 0.15],
              [0.05, 0.85, 0.10],
              [0.20, 0.65, 0.15],
              [0.05, 0.10, 0.85],
              [0.52, 0.08, 0.40]])


def test_point_metrics_hand_computed():
    v, reasons = point_metrics(Y, P, CLASSES)
    assert v["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert v["accuracy"] == pytest.approx(4 / 6)
    # sensitivity 1/2, 2/2, 1/2; specificity 3/4, 3/4, 4/4; precision 1/2, 2/3, 1/1; F1 1/2, 4/5, 2/3
    assert v["sensitivity"] == pytest.approx({"normal": 0.5, "covid": 1.0, "tb": 0.5})
    assert v["specificity"] == pytest.approx({"normal": 0.75, "covid": 0.75, "tb": 1.0})
    assert v["precision"] == pytest.approx({"normal": 0.5, "covid": 2 / 3, "tb": 1.0})
    assert v["f1"] == pytest.approx({"normal": 0.5, "covid": 0.8, "tb": 2 / 3})
    assert v["macro_sensitivity"] == v["balanced_accuracy"] == pytest.approx(2 / 3)
    assert v["macro_specificity"] == pytest.approx((0.75 + 0.75 + 1) / 3)
    assert v["macro_precision"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert v["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    # AUC one-vs-rest: normal 7/8 pairs ordered (0.30 < 0.52), covid 8/8, tb 8/8
    assert v["auc"] == pytest.approx({"normal": 7 / 8, "covid": 1.0, "tb": 1.0})
    assert v["macro_auc"] == pytest.approx((7 / 8 + 2) / 3)
    assert v["macro_auc"] == pytest.approx(roc_auc_score(Y, P, multi_class="ovr", average="macro"))
    assert reasons == {}


def test_ece_and_reliability_hand_computed():
    # bins of width 0.1: [.5,.6): .55 ✗ .52 ✗ | [.6,.7): .65 ✓ | [.7,.8): .72 ✓ | [.8,.9): .85 ✓ .85 ✓
    # ECE = (2·|0 − .535| + |1 − .65| + |1 − .72| + 2·|1 − .85|) / 6 = 2.0 / 6
    assert expected_calibration_error(Y, P, 10) == pytest.approx(2.0 / 6)
    bins = reliability_bins(Y, P, 10)
    assert bins["count"] == [0, 0, 0, 0, 0, 2, 1, 1, 2, 0]
    assert bins["accuracy"][5] == 0 and bins["accuracy"][8] == 1
    assert bins["confidence"][5] == pytest.approx(0.535)
    assert math.isnan(bins["accuracy"][0])


def test_vectorised_bootstrap_matches_sklearn_with_weights():
    rng = np.random.default_rng(3)
    n, k = 40, 3
    y = rng.integers(0, k, n)
    probs = rng.dirichlet(np.ones(k), n)
    probs[:5] = probs[5:10]            # ties in the scores
    W = rng.integers(0, 3, size=(4, n)).astype(float)
    for c in range(k):                 # keep every class present in every row
        W[:, np.flatnonzero(y == c)[0]] = 1
    s = bootstrap_metrics(y, probs, W, k)
    pred = probs.argmax(1)
    for r in range(len(W)):
        w = W[r]
        assert s["accuracy"][r] == pytest.approx(np.sum(w * (pred == y)) / w.sum())
        assert s["macro_f1"][r] == pytest.approx(f1_score(y, pred, average="macro", sample_weight=w,
                                                          zero_division=np.nan))
        assert s["macro_sensitivity"][r] == pytest.approx(recall_score(y, pred, average="macro", sample_weight=w))
        assert s["macro_precision"][r] == pytest.approx(precision_score(y, pred, average="macro", sample_weight=w,
                                                                        zero_division=np.nan))
        for c in range(k):
            assert s["auc"][r, c] == pytest.approx(roc_auc_score(y == c, probs[:, c], sample_weight=w))
        cm = confusion_matrix(y, pred, sample_weight=w, labels=range(k))
        tn = cm.sum() - cm.sum(0) - cm.sum(1) + np.diag(cm)
        fp = cm.sum(0) - np.diag(cm)
        assert s["macro_specificity"][r] == pytest.approx(np.mean(tn / (tn + fp)))
    ones = bootstrap_metrics(Y, P, np.ones((1, len(Y))), 3)
    v, _ = point_metrics(Y, P, CLASSES)
    for m in ("macro_auc", "macro_f1", "macro_precision", "macro_specificity", "balanced_accuracy"):
        assert ones[m][0] == pytest.approx(v[m])
    assert ones["ece"][0] == pytest.approx(2.0 / 6)


def test_weighted_auc_ties_and_one_class():
    assert weighted_auc(np.array([True, False]), np.array([0.5, 0.5]), np.ones((1, 2)))[0] == 0.5
    assert np.isnan(weighted_auc(np.array([True, True]), np.array([0.1, 0.5]), np.ones((1, 2)))[0])


def test_patient_weights_keep_patients_together_and_strata_sizes():
    patients = ["a", "a", "b", "c", "c", "c", "d"]
    sites = ["s1", "s1", "s1", "s2", "s2", "s2", "s2"]
    W = patient_weights(patients, 50, np.random.default_rng(0), strata=sites)
    assert (W[:, 0] == W[:, 1]).all() and (W[:, 3] == W[:, 4]).all() and (W[:, 4] == W[:, 5]).all()
    # two patients drawn per site per resample: image weight sums are 2 × image counts of drawn patients
    per_patient = np.stack([W[:, 0], W[:, 2], W[:, 3], W[:, 6]], 1)
    assert (per_patient[:, :2].sum(1) == 2).all() and (per_patient[:, 2:].sum(1) == 2).all()


def test_paired_difference_p_value():
    rng = np.random.default_rng(0)
    a = rng.normal(0.9, 0.01, 500)
    b = rng.normal(0.8, 0.01, 500)
    res = paired_difference(a, b, 0.9, 0.8)
    assert res["difference"] == pytest.approx(0.1)
    assert res["ci_low"] > 0 and res["p_value"] < 0.01
    same = paired_difference(a, a + rng.normal(0, 0.01, 500), 0.9, 0.9)
    assert same["p_value"] > 0.05 and same["ci_low"] < 0 < same["ci_high"]


def test_bootstrap_ci_covers_true_auc_of_a_simulated_population():
    """Binormal population with a patient random effect: image score = u_patient + e, u ~ N(μ_y, σ_u²),
    e ~ N(0, σ_e²), two or three images per patient. Positive and negative images never share a patient,
    so the population AUC is Φ(d / √(2(σ_u² + σ_e²))). The 95% patient-level percentile interval must
    contain it in ≥ 90% of 100 simulated studies (fixed seed)."""
    rng = np.random.default_rng(20240607)
    d, su, se = 1.0, 0.8, 0.6
    true_auc = norm.cdf(d / math.sqrt(2 * (su ** 2 + se ** 2)))
    reps, hits, widths = 100, 0, []
    for _ in range(reps):
        n_pat = 60
        lab = rng.integers(0, 2, n_pat)
        n_img = rng.integers(2, 4, n_pat)
        u = rng.normal(d * lab, su)
        pid = np.repeat(np.arange(n_pat), n_img)
        y = lab[pid]
        score = u[pid] + rng.normal(0, se, len(pid))
        W = patient_weights(pid.astype(str), 200, rng)
        lo, hi = percentile_ci(weighted_auc(y == 1, score, W))
        hits += lo <= true_auc <= hi
        widths.append(hi - lo)
    coverage = hits / reps
    assert coverage >= 0.90, f"coverage {coverage:.2f} of the true AUC {true_auc:.3f}"
    assert 0.05 < np.mean(widths) < 0.4


def test_assemble_report_one_class_site_and_empty_site_say_why():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 0, 0])
    probs = np.random.default_rng(1).dirichlet(np.ones(3), len(y))
    probs[np.arange(6), y[:6]] += 1
    probs /= probs.sum(1, keepdims=True)
    sites = ["a"] * 6 + ["one"] * 3
    patients = [f"p{i}" for i in range(len(y))]
    share = np.array([0.2, 0.3, np.nan, 0.1, 0.5, 0.4, 0.3, 0.2, 0.1])
    cohort = Cohort(y, sites, patients, probs, share)
    methods = [MethodResult("m1", "r1", cohort),
               MethodResult("m2", "r2", Cohort(y, sites, patients, probs[:, [0, 2, 1]], share))]
    rep = assemble_report(methods, CLASSES, ["a", "one", "empty"], n_resamples=50, seed=0)
    one = rep["metrics"]["m1"]["one"]
    assert math.isnan(one["values"]["macro_auc"]) and "only one class" in one["reasons"]["macro_auc"]
    assert one["values"]["accuracy"] == pytest.approx(float((probs[6:].argmax(1) == 0).mean()))
    empty = rep["metrics"]["m1"]["empty"]
    assert empty["values"]["n_images"] == 0 and "no images" in empty["reasons"]["macro_auc"]
    assert math.isnan(empty["ci"]["macro_auc"][0])
    assert rep["data"]["empty"]["n_images"] == 0
    assert rep["metrics"]["m1"]["a"]["values"]["bg_share_mean"] == pytest.approx(np.mean([0.2, 0.3, 0.1, 0.5, 0.4]))
    pairs = [p for p in rep["paired"] if p["group"] == "empty"]
    assert pairs and all(math.isnan(p["p_value"]) and p["reason"] for p in pairs)
    assert rep["gap"]["m1"]["source"] == "unavailable"
