"""One self-contained HTML page from the report dict: figures embedded as base64 PNG, tables sortable by a
click on a header (a few lines of inline JavaScript), no external resources, so it reads offline."""

from __future__ import annotations

import base64
import html
import math
from typing import Mapping

from isnet.evaluate.report import OVERALL, PAIRED_METRICS
from isnet.measure.metrics import HEADLINE

LABELS = {"macro_auc": "AUC (macro OvR)", "macro_f1": "F1 (macro)", "macro_sensitivity": "Sensitivity (macro)",
          "macro_specificity": "Specificity (macro)", "macro_precision": "Precision (macro)",
          "balanced_accuracy": "Balanced acc.", "accuracy": "Accuracy", "ece": "ECE",
          "bg_share_mean": "Background share (mean)", "bg_share_median": "Background share (median)",
          "auc": "AUC", "sensitivity": "Sensitivity", "specificity": "Specificity", "precision": "Precision",
          "f1": "F1"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
 padding:0 16px}
h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:2em}
h3{margin-bottom:4px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f0f3f7;cursor:pointer;user-select:none}th.sorted-asc::after{content:" \\25B2"}
th.sorted-desc::after{content:" \\25BC"}td:first-child,td.txt{text-align:left}
th{white-space:normal}td.undef{white-space:normal;max-width:200px;text-align:left}
tr:nth-child(even) td{background:#fafafa}.na{color:#b33;cursor:help;border-bottom:1px dotted #b33}
.ci{color:#666;font-size:11px}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 10px;margin:6px 0}
.note{color:#555;font-size:13px}img{max-width:100%;border:1px solid #eee;margin:4px 0}
.meta td{text-align:left}.sig{font-weight:bold}
"""

JS = """
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
 var t=th.closest('table'),b=t.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
 var asc=!th.classList.contains('sorted-asc');t.querySelectorAll('th').forEach(function(h){
 h.classList.remove('sorted-asc','sorted-desc')});th.classList.add(asc?'sorted-asc':'sorted-desc');
 var rows=Array.prototype.slice.call(b.rows),key=function(r){var c=r.cells[i],v=c.getAttribute('data-v');
 if(v===null)v=c.textContent;var n=parseFloat(v);return isNaN(n)?v.toLowerCase():n};
 rows.sort(function(x,y){var a=key(x),c=key(y);if(typeof a!==typeof c){return(typeof a==='number'?-1:1)*(asc?1:-1)}
 return(a<c?-1:a>c?1:0)*(asc?1:-1)});rows.forEach(function(r){b.appendChild(r)})})});
"""


def _e(s) -> str:
    return html.escape(str(s))


def _fin(v) -> bool:
    return isinstance(v, (int, float)) and v is not None and math.isfinite(v)


def _cell(v, ci=None, reason: str | None = None, digits: int = 3, br: bool = False) -> str:
    """A metric cell: value with its CI, or "n/a" with the reason as a tooltip and in text."""
    if not _fin(v):
        why = reason or "undefined"
        return (f'<td class="undef" data-v="" title="{_e(why)}"><span class="na">n/a</span> '
                f'<span class="ci">({_e(why)})</span></td>')
    txt = f"{v:.{digits}f}"
    if reason:
        txt += f'<sup class="na" title="{_e(reason)}">†</sup>'
    sep = "<br>" if br else " "
    if ci is not None and _fin(ci[0]) and _fin(ci[1]):
        txt += f'{sep}<span class="ci">[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]</span>'
    elif ci is not None:
        txt += f' <span class="ci" title="{_e(reason or "too few resamples defined it")}">[CI n/a]</span>'
    return f'<td data-v="{v:.6g}">{txt}</td>'


def _table(head: list[str], rows: list[str], cls: str = "sortable") -> str:
    return (f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) +
            "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _img(figures: Mapping[str, bytes], key: str, alt: str) -> str:
    if key not in figures:
        return ""
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{base64.b64encode(figures[key]).decode()}">'


def render_html(report: dict, figures: Mapping[str, bytes]) -> str:
    names = [m["name"] for m in report["methods"]]
    groups = report["groups"]
    classes = report["classes"]
    lvl = int(round(report["ci_level"] * 100))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>isnet external-site report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>External-site generalisation report</h1>",
             f"<p class='note'>Manifest <code>{_e(report.get('manifest', ''))}</code> "
             f"(SHA-256 {_e(str(report.get('manifest_sha256', ''))[:12])}…); sites: {_e(', '.join(report['sites']))}; "
             f"{lvl}% CIs from a patient-level bootstrap with {report['n_resamples']} resamples "
             f"(stratified by site, seed {report['seed']}); MLflow report run "
             f"<code>{_e(report.get('report_run_id') or '-')}</code>.</p>"]
    # runs
    rows = []
    for m in report["methods"]:
        rows.append(f"<tr><td>{_e(m['name'])}</td><td class='txt'><code>{_e(m['run_id'])}</code></td>"
                    f"<td class='txt'>{_e(', '.join(m.get('methods', [])))}</td><td class='txt'>{_e(m.get('backbone', ''))}</td>"
                    f"<td>{_e(m.get('image_size', ''))}</td></tr>")
    parts.append("<h2>Runs</h2>" + _table(["name", "run id", "method", "backbone", "image size"], rows))
    for w in report.get("warnings", []):
        parts.append(f"<div class='warn'>{_e(w)}</div>")
    # data
    rows = []
    for g in groups:
        d = report["data"][g]
        rows.append(f"<tr><td>{_e(g)}</td><td>{d['n_images']}</td><td>{d['n_patients']}</td>" +
                    "".join(f"<td>{d['per_class'][c]}</td>" for c in classes) + "</tr>")
    parts.append("<h2>External images</h2>" + _table(["group", "images", "patients"] + classes, rows))
    # headline
    cols = list(HEADLINE) + ["ece", "bg_share_mean"]
    rows = []
    for g in groups:
        for n in names:
            e = report["metrics"][n][g]
            cells = "".join(_cell(e["values"].get(m), e["ci"].get(m), e["reasons"].get(m) or e["reasons"].get(f"{m}_ci"),
                                  br=True) for m in cols)
            rows.append(f"<tr><td>{_e(g)}</td><td class='txt'>{_e(n)}</td><td>{e['values']['n_images']}</td>{cells}</tr>")
    parts.append("<h2>Metrics per site and overall</h2><p class='note'>Value [" + str(lvl) + "% CI]. "
                 "Macro values average the classes for which a metric is defined (sensitivity and AUC need the class "
                 "present, precision needs it predicted); balanced accuracy equals macro sensitivity. Hover "
                 "<span class='na'>n/a</span> or <span class='na'>†</span> (a partial average) for the reason. Click a header to sort.</p>" +
                 _table(["group", "method", "images"] + [LABELS[c] for c in cols], rows))
    parts.append(_img(figures, "forest_auc", "macro AUC per site"))
    # per class
    rows = []
    for g in groups:
        for n in names:
            e = report["metrics"][n][g]
            for c in classes:
                cells = "".join(_cell(e["values"][m][c], e["per_class_ci"][m][c],
                                      e["reasons"].get(f"{m}.{c}") or e["reasons"].get(m))
                                for m in ("auc", "sensitivity", "specificity", "precision", "f1"))
                rows.append(f"<tr><td>{_e(g)}</td><td class='txt'>{_e(n)}</td><td class='txt'>{_e(c)}</td>{cells}</tr>")
    parts.append("<h2>Per class (one-vs-rest)</h2>" +
                 _table(["group", "method", "class", "AUC", "Sensitivity", "Specificity", "Precision", "F1"], rows))
    # paired
    if len(names) > 1:
        rows = []
        for p in report["paired"]:
            pv = p["p_value"]
            sig = " class='sig'" if _fin(pv) and pv < 0.05 else ""
            rows.append(f"<tr><td>{_e(p['group'])}</td><td class='txt'>{_e(LABELS[p['metric']])}</td>"
                        f"<td class='txt'>{_e(p['a'])} − {_e(p['b'])}</td>"
                        + _cell(p["difference"], [p["ci_low"], p["ci_high"]], p.get("reason"))
                        + (f"<td data-v='{pv:.6g}'{sig}>{pv:.4f}</td>" if _fin(pv) else
                           _cell(math.nan, None, p.get("reason"))) + "</tr>")
        parts.append("<h2>Paired comparison (same images, same resamples)</h2><p class='note'>Difference of the "
                     f"first method minus the second with its {lvl}% paired-bootstrap interval; two-sided p-value "
                     "for no difference (share of resamples on the other side of zero, doubled). Metrics: "
                     + ", ".join(LABELS[m] for m in PAIRED_METRICS) + ".</p>" +
                     _table(["group", "metric", "comparison", "difference [CI]", "p-value"], rows))
    # gap
    rows = []
    for n in names:
        gp = report["gap"][n]
        for k, d in gp["gap"].items():
            rows.append(f"<tr><td>{_e(n)}</td><td class='txt'>{_e(LABELS[k])}</td>"
                        + _cell(gp["in_distribution"].get(k), gp.get("id_ci", {}).get(k), gp.get("reason"))
                        + _cell(gp["external"].get(k), report["metrics"][n][OVERALL]["ci"].get(k),
                                report["metrics"][n][OVERALL]["reasons"].get(k))
                        + _cell(d["difference"], [d["ci_low"], d["ci_high"]] if gp.get("id_ci") else None,
                                gp.get("reason")) + f"<td class='txt'>{_e(gp['source'])}</td></tr>")
    parts.append("<h2>In-distribution → external gap</h2><p class='note'>In-distribution: the run's own test "
                 "split; external: all images of this report. Gap = external − in-distribution (CI from independent "
                 "bootstraps of the two sets).</p>" +
                 _table(["method", "metric", "in-distribution", "external", "gap", "source"], rows))
    # calibration
    rows = []
    for g in groups:
        for n in names:
            e = report["metrics"][n][g]
            rows.append(f"<tr><td>{_e(g)}</td><td class='txt'>{_e(n)}</td>"
                        + _cell(e["values"]["ece"], e["ci"]["ece"], e["reasons"].get("ece")) + "</tr>")
    parts.append(f"<h2>Calibration</h2><p class='note'>Top-label expected calibration error with "
                 f"{report['n_bins']} equal-width confidence bins.</p>" + _table(["group", "method", "ECE"], rows)
                 + _img(figures, "reliability", "reliability diagram"))
    parts.append("<h2>Confusion matrices</h2><p class='note'>Counts; colour = share of the true class.</p>" +
                 "".join(_img(figures, f"confusion/{n}", f"confusion {n}") for n in names))
    # background share
    rows = []
    for g in groups:
        for n in names:
            e = report["metrics"][n][g]
            v = e["values"]
            rows.append(f"<tr><td>{_e(g)}</td><td class='txt'>{_e(n)}</td>"
                        + _cell(v["bg_share_mean"], e["ci"]["bg_share_mean"], e["reasons"].get("bg_share_mean"))
                        + _cell(v["bg_share_median"], None, e["reasons"].get("bg_share_median"))
                        + f"<td>{v['n_with_mask']}</td></tr>")
    parts.append("<h2>Background relevance share</h2><p class='note'>Share of the absolute LRP relevance of the "
                 "predicted class outside the lung mask (images with a mask). Low = the model looks at the "
                 "lungs.</p>" + _table(["group", "method", "mean [CI]", "median", "images with mask"], rows)
                 + _img(figures, "forest_bg", "background share per site"))
    # gallery
    parts.append("<h2>Heatmap gallery</h2><p class='note'>Per site and method: the most confident correct and "
                 "wrong predictions; radiograph with the lung outline (green) and the LRP heatmap of the predicted "
                 "class (red = evidence for it, blue = against).</p>")
    for s in report["sites"]:
        parts.append(f"<h3>{_e(s)}</h3>")
        for n in names:
            for kind in ("correct", "wrong"):
                key = f"gallery/{s}/{n}/{kind}"
                if key in figures:
                    parts.append(_img(figures, key, f"{s} {n} {kind}"))
                else:
                    why = ("no images at this site" if report["data"].get(s, {}).get("n_images", 0) == 0
                           else f"no {kind} predictions at this site")
                    parts.append(f"<p class='note'>{_e(n)} · {kind}: {_e(why)}.</p>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts)
