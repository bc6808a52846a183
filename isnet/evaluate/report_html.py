"""One self-contained HTML page from the report dict: figures embedded as base64 PNG, tables sortable by a
click on a header (a few lines of inline JavaScript), no external resources, so it reads offline.

The markup, CSS and JavaScript live in the jinja2 template ``templates/report.html.j2`` (shipped as package
data), rendered with autoescaping on: every value from the report is escaped there. This module only turns the
report into rows of plain values: a metric cell's value, CI and reason become a small dict (``_cell``) that the
template's ``cell`` macro draws."""

from __future__ import annotations

import base64
import math
from functools import lru_cache
from typing import Mapping

from jinja2 import Environment, PackageLoader, StrictUndefined, Template

from isnet.evaluate.report import OVERALL, PAIRED_METRICS
from isnet.measure.metrics import HEADLINE

TEMPLATE = "report.html.j2"

LABELS = {"macro_auc": "AUC (macro OvR)", "macro_f1": "F1 (macro)", "macro_sensitivity": "Sensitivity (macro)",
          "macro_specificity": "Specificity (macro)", "macro_precision": "Precision (macro)",
          "balanced_accuracy": "Balanced acc.", "accuracy": "Accuracy", "ece": "ECE",
          "bg_share_mean": "Background share (mean)", "bg_share_median": "Background share (median)",
          "auc": "AUC", "sensitivity": "Sensitivity", "specificity": "Specificity", "precision": "Precision",
          "f1": "F1"}

PER_CLASS = ("auc", "sensitivity", "specificity", "precision", "f1")


@lru_cache(maxsize=1)
def _template() -> Template:
    env = Environment(loader=PackageLoader("isnet.evaluate", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.get_template(TEMPLATE)


def _fin(v) -> bool:
    return isinstance(v, (int, float)) and v is not None and math.isfinite(v)


def _cell(v, ci=None, reason: str | None = None, digits: int = 3, br: bool = False) -> dict:
    """A metric cell for the template's ``cell`` macro: the value with its CI (``ci``, or ``ci_na`` with the
    reason the CI is missing), ``partial`` the reason a macro value averages only some classes (drawn as a
    dagger), or ``na`` with ``why`` when the value itself is undefined."""
    if not _fin(v):
        return {"na": True, "why": reason or "undefined"}
    out = {"na": False, "v": f"{v:.6g}", "text": f"{v:.{digits}f}", "partial": reason or None, "br": br,
           "ci": None, "ci_na": None}
    if ci is not None and _fin(ci[0]) and _fin(ci[1]):
        out["ci"] = f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    elif ci is not None:
        out["ci_na"] = reason or "too few resamples defined it"
    return out


def _p_value(pv, reason: str | None) -> dict:
    """The paired comparison's p-value cell: bold below 0.05, "n/a" with the reason when undefined."""
    if not _fin(pv):
        return _cell(math.nan, None, reason)
    return {"na": False, "v": f"{pv:.6g}", "text": f"{pv:.4f}", "sig": pv < 0.05}


def _img(figures: Mapping[str, bytes], key: str, alt: str) -> dict | None:
    if key not in figures:
        return None
    return {"alt": alt, "b64": base64.b64encode(figures[key]).decode("ascii")}


def _headline_rows(each: list[tuple[str, str, dict]], cols: list[str]) -> list[dict]:
    """One row per (group, method): the headline metrics with their intervals (or why they are undefined)."""
    return [{"group": g, "method": n, "n_images": e["values"]["n_images"],
             "cells": [_cell(e["values"].get(m), e["ci"].get(m),
                             e["reasons"].get(m) or e["reasons"].get(f"{m}_ci"), br=True) for m in cols]}
            for g, n, e in each]


def _class_rows(each: list[tuple[str, str, dict]], classes: list[str]) -> list[dict]:
    """One row per (group, method, class): the one-vs-rest metrics of that class."""
    return [{"group": g, "method": n, "cls": c,
             "cells": [_cell(e["values"][m][c], e["per_class_ci"][m][c],
                             e["reasons"].get(f"{m}.{c}") or e["reasons"].get(m)) for m in PER_CLASS]}
            for g, n, e in each for c in classes]


def _paired_rows(report: dict, names: list[str]) -> list[dict] | None:
    """The paired differences between methods (None with a single method: nothing to compare)."""
    if len(names) <= 1:
        return None
    return [{"group": p["group"], "metric": LABELS[p["metric"]], "a": p["a"], "b": p["b"],
             "difference": _cell(p["difference"], [p["ci_low"], p["ci_high"]], p.get("reason")),
             "p_value": _p_value(p["p_value"], p.get("reason"))} for p in report["paired"]]


def _gap_rows(report: dict, names: list[str]) -> list[dict]:
    """Per method and metric: in-distribution value, external value and the gap between them."""
    metrics = report["metrics"]
    gap = []
    for n in names:
        gp = report["gap"][n]
        ext = metrics[n][OVERALL]
        for k, d in gp["gap"].items():
            gap.append({"method": n, "metric": LABELS[k], "source": gp["source"],
                        "in_distribution": _cell(gp["in_distribution"].get(k), gp.get("id_ci", {}).get(k),
                                                 gp.get("reason")),
                        "external": _cell(gp["external"].get(k), ext["ci"].get(k), ext["reasons"].get(k)),
                        "gap": _cell(d["difference"], [d["ci_low"], d["ci_high"]] if gp.get("id_ci") else None,
                                     gp.get("reason"))})
    return gap


def _calibration_rows(each: list[tuple[str, str, dict]]) -> list[dict]:
    """One row per (group, method): the expected calibration error."""
    return [{"group": g, "method": n, "ece": _cell(e["values"]["ece"], e["ci"]["ece"], e["reasons"].get("ece"))}
            for g, n, e in each]


def _background_rows(each: list[tuple[str, str, dict]]) -> list[dict]:
    """One row per (group, method): mean and median background relevance share over the images with a mask."""
    return [{"group": g, "method": n, "n_with_mask": e["values"]["n_with_mask"],
             "mean": _cell(e["values"]["bg_share_mean"], e["ci"]["bg_share_mean"],
                           e["reasons"].get("bg_share_mean")),
             "median": _cell(e["values"]["bg_share_median"], None, e["reasons"].get("bg_share_median"))}
            for g, n, e in each]


def _gallery_sections(report: dict, names: list[str], figures: Mapping[str, bytes]) -> list[dict]:
    """Per site, each method's most confident correct and wrong predictions (or why a figure is missing)."""
    gallery = []
    for s in report["sites"]:
        entries = []
        for n in names:
            for kind in ("correct", "wrong"):
                key = f"gallery/{s}/{n}/{kind}"
                why = ("no images at this site" if report["data"].get(s, {}).get("n_images", 0) == 0
                       else f"no {kind} predictions at this site")
                entries.append({"img": _img(figures, key, f"{s} {n} {kind}"), "method": n, "kind": kind,
                                "why": why})
        gallery.append({"name": s, "entries": entries})
    return gallery


def _context(report: dict, figures: Mapping[str, bytes]) -> dict:
    """The template's variables: the report's numbers as formatted table rows, and its figures."""
    names = [m["name"] for m in report["methods"]]
    groups = report["groups"]
    classes = report["classes"]
    cols = list(HEADLINE) + ["ece", "bg_share_mean"]
    each = [(g, n, report["metrics"][n][g]) for g in groups for n in names]
    return {
        "manifest": report.get("manifest", ""),
        "manifest_sha": str(report.get("manifest_sha256", ""))[:12],
        "sites": report["sites"],
        "lvl": int(round(report["ci_level"] * 100)),
        "n_resamples": report["n_resamples"],
        "seed": report["seed"],
        "report_run_id": report.get("report_run_id") or "-",
        "runs": [{"name": m["name"], "run_id": m["run_id"], "methods": m.get("methods", []),
                  "backbone": m.get("backbone", ""), "image_size": m.get("image_size", "")}
                 for m in report["methods"]],
        "warnings": report.get("warnings", []),
        "classes": list(classes),
        "data_rows": [{"group": g, "n_images": report["data"][g]["n_images"],
                       "n_patients": report["data"][g]["n_patients"],
                       "per_class": [report["data"][g]["per_class"][c] for c in classes]} for g in groups],
        "headline_labels": [LABELS[c] for c in cols],
        "headline_rows": _headline_rows(each, cols),
        "forest_auc": _img(figures, "forest_auc", "macro AUC per site"),
        "class_rows": _class_rows(each, classes),
        "paired_labels": [LABELS[m] for m in PAIRED_METRICS],
        "paired_rows": _paired_rows(report, names),
        "gap_rows": _gap_rows(report, names),
        "n_bins": report["n_bins"],
        "calibration_rows": _calibration_rows(each),
        "reliability": _img(figures, "reliability", "reliability diagram"),
        "confusion": [_img(figures, f"confusion/{n}", f"confusion {n}") for n in names],
        "background_rows": _background_rows(each),
        "forest_bg": _img(figures, "forest_bg", "background share per site"),
        "gallery": _gallery_sections(report, names, figures),
    }


def render_html(report: dict, figures: Mapping[str, bytes]) -> str:
    return _template().render(_context(report, figures))
