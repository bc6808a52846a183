"""``isnet report``: score trained runs on an external manifest and write the HTML + JSON report.

For every run: predictions on the external images (``predict``), the background relevance share of every
image with a mask (``explain_loader``), predictions on the run's own test split (rebuilt from the
``data/splits.csv`` artifact and the ``manifest_path`` tag, else the logged ``test_*`` metrics), and heatmap
galleries of the most confident correct and wrong predictions per site. The numbers come from
:func:`isnet.evaluate.report.assemble_report`; both files are logged to an MLflow run in experiment
``reports``.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from isnet.config.schema import TrainConfig  # noqa: E402
from isnet.data.dataset import eval_loader  # noqa: E402
from isnet.data.manifest import read_manifest, records_of, sha256_file, validate_manifest  # noqa: E402
from isnet.errors import UserError  # noqa: E402
from isnet.lrp import run_lrp_config  # noqa: E402
from isnet.measure.calibration import reliability_figure  # noqa: E402
from isnet.measure.figures import heatmap_grid  # noqa: E402
from isnet.measure.relevance import explain_loader  # noqa: E402
from isnet.evaluate.report import OVERALL, Cohort, MethodResult, assemble_report  # noqa: E402
from isnet.evaluate.report_html import render_html  # noqa: E402
from isnet.tracking import RunUnavailable, Tracker, download_run_artifact, read_run, store_uri  # noqa: E402
from isnet.train.evaluation import predict  # noqa: E402
from isnet.train.loading import load_run_model  # noqa: E402

logger = logging.getLogger(__name__)


def _in_distribution(run_id: str, tracking_uri: str, classes: Sequence[str]) -> tuple[pd.DataFrame | None, dict, str]:
    """(test-split rows with resolved paths or None, logged test metrics, note)."""
    try:
        run = read_run(run_id, tracking_uri)
    except RunUnavailable as exc:  # no store, unknown run, store error, unreachable server
        logger.info(f"{exc}; the report goes on without its in-distribution metrics")
        return None, {}, str(exc)
    logged = {k: v for k, v in run.metrics.items() if k.startswith("test_")}
    manifest_tag = run.tags.get("manifest_path", "")
    try:
        splits_path = download_run_artifact(run_id, "data/splits.csv", tracking_uri)
        splits = pd.read_csv(splits_path, dtype=str, keep_default_na=False)
    except (RunUnavailable, OSError, ValueError) as exc:  # no such artifact, unreadable or not a CSV
        logger.info(f"run {run_id}: data/splits.csv cannot be read ({type(exc).__name__}: {exc}); the report "
                    f"goes on without recomputing its in-distribution metrics")
        return None, logged, "the run has no data/splits.csv artifact"
    base = Path(manifest_tag).expanduser()
    base = (base if base.is_absolute() else Path.cwd() / base).resolve().parent
    test = splits[splits.get("split", pd.Series(dtype=str)) == "test"].copy()
    if test.empty:
        return None, logged, "the run has no test split"
    test["image_path"] = [str(Path(v) if Path(v).is_absolute() else base / v) for v in test["image"]]
    test["mask_path"] = [str(Path(v) if Path(v).is_absolute() else base / v) if v else ""
                         for v in test.get("mask", pd.Series([""] * len(test), index=test.index))]
    missing = [p for p in test["image_path"] if not Path(p).is_file()]
    if missing:
        return None, logged, (f"test images of the run not found (e.g. {missing[0]}; manifest_path tag "
                              f"{manifest_tag!r})")
    test = test[test["label"].isin(classes)]
    test["row"] = test["row"].astype(int) if "row" in test else range(len(test))
    trained = splits[splits["split"].isin(["train", "val"])]
    test.attrs["trained_images"] = {str(Path(v) if Path(v).is_absolute() else base / v) for v in trained["image"]}
    return test, logged, ""


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _confusion_figure(report: dict, name: str) -> bytes:
    groups = [g for g in report["groups"] if report["data"][g]["n_images"] > 0]
    classes = report["classes"]
    fig, axes = plt.subplots(1, len(groups), figsize=(2.6 * len(groups), 2.7), squeeze=False)
    for ax, g in zip(axes[0], groups):
        cm = np.asarray(report["metrics"][name][g]["values"]["confusion_matrix"])
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(classes)):
            for j in range(len(classes)):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(classes)), classes, fontsize=7, rotation=30)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set_xlabel("predicted", fontsize=7)
        ax.set_ylabel("true", fontsize=7)
        ax.set_title(g, fontsize=8)
    fig.suptitle(name, fontsize=9)
    fig.tight_layout()
    return _png(fig)


def _forest_figure(report: dict, metric: str, label: str) -> bytes:
    """Point and CI of a metric per group (rows) and method (colours)."""
    names = [m["name"] for m in report["methods"]]
    groups = report["groups"]
    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(groups) * len(names) + 1.0))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    y = 0
    ticks, labels = [], []
    for g in groups:
        for k, n in enumerate(names):
            e = report["metrics"][n][g]
            v, (lo, hi) = e["values"].get(metric, math.nan), e["ci"].get(metric, [math.nan, math.nan])
            if math.isfinite(v):
                ax.plot([v], [y], "o", color=colours[k % len(colours)], label=n if g == groups[0] else None)
                if math.isfinite(lo):
                    ax.plot([lo, hi], [y, y], "-", color=colours[k % len(colours)])
            else:
                ax.text(0.5, y, "undefined", fontsize=7, va="center", color="grey",
                        label=None, transform=ax.get_yaxis_transform())
            ticks.append(y)
            labels.append(f"{g} · {n}")
            y -= 1
        y -= 0.5
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def _gallery(records: list[dict], model, cfg: TrainConfig, device, classes: Sequence[str], probs_by_row: dict,
             title: str) -> bytes | None:
    if not records:
        return None
    out = explain_loader(model, eval_loader(records, cfg.data, batch_size=len(records)), device, run_lrp_config(cfg),
                         keep=len(records))
    k = out["kept"]
    titles = []
    for lab, pred, r in zip(k["label"], k["pred"], out["rows"]):
        titles.append(f"row {r}: {classes[lab]} → {classes[pred]} ({probs_by_row[r][pred]:.2f})")
    fig = heatmap_grid(k["image"], [m if np.any(m > 0.5) else None for m in k["mask"]], k["heatmap"], titles,
                       columns=len(records), value_range=cfg.data.value_range)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return _png(fig)


def _json_safe(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating,)):
        return _json_safe(float(obj))
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def run_report(run_ids: Sequence[str], manifest: str | Path, out: str | Path, *, sites: Sequence[str] | None = None,
               n_resamples: int = 1000, seed: int = 0, n_bins: int = 10, gallery_size: int = 3,
               checkpoint_dir: str | Path = "checkpoints", tracking_uri: str | None = None, batch_size: int = 32,
               device: str = "cpu", log_mlflow: bool = True) -> dict:
    """Write ``out`` (HTML) and ``out`` with suffix ``.json``; returns the report dict (with paths)."""
    run_ids = [r.strip() for r in run_ids if r.strip()]
    if not run_ids:
        raise UserError("report: --runs needs at least one run id")
    if len(set(run_ids)) != len(run_ids):
        raise UserError(f"report: a run id is listed twice in {run_ids}")
    out = Path(out)
    json_path = out.with_suffix(".json")
    uri = store_uri(tracking_uri)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    loaded = [load_run_model(r, checkpoint_dir, uri, device=dev) for r in run_ids]
    classes = list(loaded[0][1].data.classes)
    for r, (_, cfg) in zip(run_ids, loaded):
        if list(cfg.data.classes) != classes:
            raise UserError(f"report: run {r} has classes {cfg.data.classes} but run {run_ids[0]} has {classes}; "
                            f"methods can only be compared on the same classes")

    df = read_manifest(manifest)
    all_sites = sorted(set(df["site"]))
    if sites:
        sites = list(dict.fromkeys(s.strip() for s in sites if s.strip()))
        df = df[df["site"].isin(sites)]
        if df.empty:
            raise UserError(f"report: manifest {manifest} has no rows of site(s) {sites}; its sites are {all_sites}")
    else:
        sites = all_sites
    report_val = validate_manifest(df, manifest, classes)
    report_val.raise_if_any()
    df = df.sort_values("row")
    # the MLflow run opens before the work (an unreachable server stops here, not after minutes of scoring);
    # from then on an outage only buffers its records (mlflow-buffer/<run id>.jsonl, `isnet tracking sync`)
    tracker = Tracker("reports", uri, enabled=log_mlflow)
    report_run = tracker.start(run_name=f"report {out.stem}")
    with tracker.ending_run():  # FINISHED, KILLED on Ctrl-C, FAILED on any error
        report = _score_and_write(run_ids, loaded, df, classes, sites, manifest, out, json_path, uri, dev, tracker,
                                  n_resamples=n_resamples, seed=seed, n_bins=n_bins, gallery_size=gallery_size,
                                  batch_size=batch_size)
    report["report_run_id"] = report_run
    return report


@dataclass
class _ExternalSet:
    """The external images every run is scored on, in manifest order, with their labels, sites and patients."""

    records: list[dict]
    labels: np.ndarray
    sites: list[str]
    patients: list[str]


def _score_and_write(run_ids, loaded, df, classes, sites, manifest, out: Path, json_path: Path, uri: str, dev,
                     tracker: Tracker, *, n_resamples: int, seed: int, n_bins: int, gallery_size: int,
                     batch_size: int) -> dict:
    """The report's steps in order: score every run, assemble the numbers, draw the figures, write both files and
    only then log them (a lost tracking server costs no part of the files)."""
    # what the runs logged is read first: a server lost during the scoring costs no part of the report
    in_distribution = {r: _in_distribution(r, uri, classes) for r in run_ids}
    records = records_of(df, classes)
    ext = _ExternalSet(records, np.array([r["label"] for r in records]), [r["site"] for r in records],
                       [r["patient_id"] for r in records])
    warnings: list[str] = []
    for s in sites:
        if s not in set(ext.sites):
            warnings.append(f"site {s!r} has no images in {Path(manifest).name}: its metrics are undefined")

    methods: list[MethodResult] = []
    models = {}
    for run_id, (model, cfg) in zip(run_ids, loaded):
        result = _score_run(run_id, model, cfg, ext, classes, in_distribution[run_id], dev, batch_size, warnings)
        methods.append(result)
        models[result.name] = (model, cfg)

    report = assemble_report(methods, classes, sites, n_resamples=n_resamples, seed=seed, n_bins=n_bins)
    report["manifest"] = str(manifest)
    report["manifest_sha256"] = sha256_file(manifest)
    report["warnings"] = warnings
    report["predictions"] = {m.name: [{"row": r["row"], "site": r["site"], "patient_id": r["patient_id"],
                                       "label": classes[r["label"]], "probs": [float(x) for x in m.external.probs[i]],
                                       "bg_share": float(m.external.bg_share[i])}
                                      for i, r in enumerate(records)] for m in methods}
    report["gallery"], figures = _galleries(methods, models, ext, classes, sites, dev, gallery_size)
    figures.update(_summary_figures(report, methods))

    report["report_run_id"] = tracker.run_id
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(_json_safe(report), indent=1, allow_nan=False))
    out.write_text(render_html(report, figures), encoding="utf-8")
    _log_report(tracker, report, methods, run_ids, manifest, sites, out, json_path,
                n_resamples=n_resamples, seed=seed, n_bins=n_bins)
    report["html_path"], report["json_path"] = str(out), str(json_path)
    return report


def _score_run(run_id: str, model, cfg: TrainConfig, ext: _ExternalSet, classes: Sequence[str],
               in_distribution: tuple[pd.DataFrame | None, dict, str], dev, batch_size: int,
               warnings: list[str]) -> MethodResult:
    """One run's predictions and background shares on the external images, and its in-distribution cohort (its
    own test split) when that can be rebuilt; problems are appended to ``warnings``."""
    records = ext.records
    name = f"{'+'.join(cfg.methods)} {run_id[:8]}"
    logger.info(f"scoring run {run_id} ({'+'.join(cfg.methods)}, {cfg.model.backbone}) on {len(records)} images")
    pred = predict(model, eval_loader(records, cfg.data, batch_size=batch_size), dev)
    if pred["rows"] != [r["row"] for r in records]:
        raise RuntimeError("loader changed the order of the manifest rows")
    rel = explain_loader(model, eval_loader(records, cfg.data, batch_size=batch_size), dev, run_lrp_config(cfg))
    share = dict(zip(rel["rows"], rel["bg_share"].tolist()))
    bg = np.array([share[r["row"]] for r in records], dtype=float)
    test_df, logged, note = in_distribution
    id_cohort = None
    if test_df is not None:
        trained = test_df.attrs.get("trained_images", set())
        overlap = sum(1 for r in records if str(Path(r["image"])) in trained)
        if overlap:
            warnings.append(f"{overlap} external image(s) were in the train/val split of run {run_id}: "
                            f"this is not an external test (filter with --sites)")
        id_records = records_of(test_df, classes)
        id_pred = predict(model, eval_loader(id_records, cfg.data, batch_size=batch_size), dev)
        id_cohort = Cohort(id_pred["labels"], id_pred["sites"], [r["patient_id"] for r in id_records],
                           id_pred["probs"])
    elif note:
        warnings.append(f"run {run_id}: in-distribution metrics not recomputed: {note}")
    return MethodResult(
        name, run_id, Cohort(ext.labels, ext.sites, ext.patients, pred["probs"], bg), id_cohort, logged, note,
        info={"methods": list(cfg.methods), "backbone": cfg.model.backbone, "image_size": cfg.data.image_size})


def _galleries(methods: list[MethodResult], models: dict, ext: _ExternalSet, classes: Sequence[str],
               sites: Sequence[str], dev, gallery_size: int) -> tuple[dict, dict[str, bytes]]:
    """The most confident correct and wrong predictions per site and method: (the report's ``gallery`` entry,
    their heatmap figures by name)."""
    records, labels = ext.records, ext.labels
    figures: dict[str, bytes] = {}
    gallery: dict = {}
    for m in methods:
        model, cfg = models[m.name]
        probs = m.external.probs
        conf = probs.max(1) if len(probs) else np.zeros(0)
        correct = probs.argmax(1) == labels if len(probs) else np.zeros(0, dtype=bool)
        by_row = {r["row"]: probs[i] for i, r in enumerate(records)}
        for s in sites:
            idx = np.flatnonzero(np.asarray(ext.sites) == s)
            entry = gallery.setdefault(s, {}).setdefault(m.name, {})
            for kind, want in (("correct", True), ("wrong", False)):
                pick = idx[correct[idx] == want]
                pick = pick[np.argsort(-conf[pick], kind="stable")][:gallery_size]
                entry[kind] = [{"row": records[i]["row"], "label": classes[labels[i]],
                                "predicted": classes[int(probs[i].argmax())], "confidence": float(conf[i])}
                               for i in pick]
                png = _gallery([records[i] for i in pick], model, cfg, dev, classes, by_row,
                               f"{s} · {m.name} · most confident {kind}")
                if png:
                    figures[f"gallery/{s}/{m.name}/{kind}"] = png
    return gallery, figures


def _summary_figures(report: dict, methods: list[MethodResult]) -> dict[str, bytes]:
    """The forest plots, the reliability diagram and one confusion matrix per method, by figure name."""
    figures = {"forest_auc": _forest_figure(report, "macro_auc", "macro AUC (one-vs-rest), 95% CI"),
               "forest_bg": _forest_figure(report, "bg_share_mean", "mean background relevance share, 95% CI")}
    curves = {m.name: report["metrics"][m.name][OVERALL]["calibration"] for m in methods}
    figures["reliability"] = _png(reliability_figure(curves, "Reliability, all external images"))
    for m in methods:
        figures[f"confusion/{m.name}"] = _confusion_figure(report, m.name)
    return figures


def _log_report(tracker: Tracker, report: dict, methods: list[MethodResult], run_ids: Sequence[str], manifest,
                sites: Sequence[str], out: Path, json_path: Path, *, n_resamples: int, seed: int,
                n_bins: int) -> None:
    """The report's MLflow record, after the files are written: settings, headline metrics per run and group
    (site names escaped, the mapping logged), and both files as artifacts."""
    tracker.log_params({"runs": ",".join(run_ids), "manifest": str(manifest), "sites": ",".join(sites),
                        "n_resamples": n_resamples, "seed": seed, "n_bins": n_bins})
    tracker.set_tags({"manifest_sha256": report["manifest_sha256"]})
    keys = {**tracker.log_site_keys(sites), OVERALL: OVERALL}  # site names are data: escaped, mapping logged
    flat = {}
    for m in methods:
        for g in report["groups"]:
            vals = report["metrics"][m.name][g]["values"]
            for k in ("macro_auc", "balanced_accuracy", "macro_f1", "ece", "bg_share_mean"):
                flat[f"{m.run_id[:8]}.{keys[g]}.{k}"] = vals[k]
        for k, v in report["gap"][m.name]["gap"].items():
            flat[f"{m.run_id[:8]}.gap.{k}"] = v["difference"]
    tracker.log_metrics(flat)
    tracker.log_artifact(out, "report")
    tracker.log_artifact(json_path, "report")
