"""``isnet compare``: trained runs side by side, so that ISNet's claim (as accurate, but looking at the lungs) is
checked on the same data: a table of each run's logged test metrics and its background-relevance share, computed
now from its best checkpoint, and one figure of every run's heatmaps on the same images."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from isnet.config.schema import TrainConfig
from isnet.data.dataset import eval_loader
from isnet.data.manifest import Manifest, load_manifest
from isnet.errors import ManifestError, UserError
from isnet.lrp import run_lrp_config, supports_model
from isnet.measure.figures import comparison_grid
from isnet.measure.relevance import explained_batches, mean_background_share
from isnet.tracking import read_run
from isnet.train.loading import load_run_model


@dataclass
class RunRow:
    """One run of the comparison: what it is, what it logged, and where its relevance falls now."""

    label: str
    run_id: str
    run_name: str
    methods: list[str]
    backbone: str
    image_size: int
    epochs: int
    test_accuracy: float
    test_macro_auc: float
    val_bg_share: float
    split_bg_share: float


@dataclass
class Comparison:
    rows: list[RunRow]
    split: str
    figure: Path
    notes: list[str] = field(default_factory=list)


@dataclass
class _Run:
    label: str
    run_id: str
    run_name: str
    metrics: dict[str, float]
    manifest_sha256: str
    model: torch.nn.Module
    cfg: TrainConfig


def _load_runs(run_ids: Sequence[str], labels: Sequence[str], checkpoint_dir: str | Path,
               tracking_uri: str | None) -> list[_Run]:
    runs = []
    for run_id, label in zip(run_ids, labels):
        record = read_run(run_id, tracking_uri)  # an unknown run is named before any checkpoint is looked for
        model, cfg = load_run_model(run_id, checkpoint_dir, tracking_uri)
        runs.append(_Run(label, run_id, record.run_name, record.metrics, record.tags.get("manifest_sha256", ""),
                         model, cfg))
    first = runs[0]
    for r in runs[1:]:
        if list(r.cfg.data.classes) != list(first.cfg.data.classes):
            raise UserError(f"runs {first.run_id} and {r.run_id} have different classes "
                            f"({list(first.cfg.data.classes)} and {list(r.cfg.data.classes)}); only runs with the "
                            f"same classes can be compared")
    return runs


def _labels(run_ids: Sequence[str], labels: Sequence[str] | None) -> list[str]:
    if labels is None:
        return [f"run {i + 1}" for i in range(len(run_ids))]
    labels = [str(v).strip() for v in labels]
    if len(labels) != len(run_ids):
        raise UserError(f"{len(labels)} label(s) for {len(run_ids)} run(s); give one label per run")
    return labels


def _mean_share(model: torch.nn.Module, cfg: TrainConfig, records: list[dict], batch_size: int) -> float:
    """As training's validation diagnostic (``isnet/train/diagnostics.py``), but on the evaluation pipeline's
    unrounded images: training's logged ``val_bg_share`` reads its cached ones, so the two can differ in the third
    decimal. NaN without LRP support, records or masks."""
    if not records:
        return float("nan")
    return mean_background_share(model, eval_loader(records, cfg.data, batch_size=batch_size), torch.device("cpu"),
                                 run_lrp_config(cfg) if supports_model(model) else None)


def pick_images(manifest: Manifest, split: str, n: int) -> list[dict]:
    """``n`` records of ``split``, as evenly split between classes as ``n`` allows (the first classes get the
    remainder), each class's spread evenly over its rows in manifest order: deterministic, and not all from the
    first site of a manifest sorted by site."""
    records = manifest.records(split)
    k = len(manifest.classes)
    chosen = []
    for c in range(k):
        rows = [r for r in records if r["label"] == c]
        want = min(n // k + (1 if c < n % k else 0), len(rows))
        if want:
            idx = np.unique(np.linspace(0, len(rows) - 1, want).round().astype(int))
            chosen += [rows[i] for i in idx]
    return chosen


def _explain_images(model: torch.nn.Module, cfg: TrainConfig, records: list[dict]) -> dict:
    """Image, mask, heatmap, prediction and background share of each record (one batch)."""
    lrp_cfg = run_lrp_config(cfg) if supports_model(model) else None
    out = next(explained_batches(model, eval_loader(records, cfg.data, batch_size=len(records)),
                                 torch.device("cpu"), lrp_cfg))
    batch, n = out["batch"], len(records)
    heat = out["heat"][:, 0].numpy() if out["heat"] is not None else np.zeros((n, *batch["image"].shape[-2:]))
    share = out["bg_share"].numpy() if out["bg_share"] is not None else np.full(n, np.nan)
    has_mask = batch["has_mask"].bool().tolist()
    return {"image": batch["image"][:, 0].numpy(), "heat": heat, "share": share,
            "mask": [batch["mask"][i, 0].numpy() if has_mask[i] else None for i in range(n)],
            "pred": out["probs"].argmax(1).tolist()}


def _pct(v: float) -> str:
    return "n/a" if math.isnan(v) else f"{v:.0%}"


def compare_runs(run_ids: Sequence[str], manifest: str | Path, out: str | Path, *, labels: Sequence[str] | None = None,
                 split: str = "test", images: int = 6, checkpoint_dir: str | Path = "checkpoints",
                 tracking_uri: str | None = None, batch_size: int = 32) -> Comparison:
    """Compare trained runs on one manifest (the one they were trained on: each run's splits are drawn again
    from its own ``data.split_fractions``/``split_seed``). Writes the heatmap figure to ``out``."""
    if not run_ids:
        raise UserError("no runs to compare; give at least one run id")
    if images < 1:
        raise UserError(f"--images must be at least 1, got {images}")
    labels = _labels(run_ids, labels)
    if not Path(manifest).is_file():
        raise ManifestError(f"manifest not found: {manifest}")
    runs = _load_runs(run_ids, labels, checkpoint_dir, tracking_uri)
    manifests: dict[tuple, Manifest] = {}
    notes: list[str] = []
    rows = []
    for r in runs:
        key = (tuple(r.cfg.data.split_fractions), r.cfg.data.split_seed)
        if key not in manifests:
            manifests[key] = load_manifest(manifest, r.cfg.data.classes, split_fractions=r.cfg.data.split_fractions,
                                           split_seed=r.cfg.data.split_seed,
                                           require_masks=r.cfg.data.input_mask is not None, need_splits=("val", split))
        man = manifests[key]
        if r.manifest_sha256 and r.manifest_sha256 != man.sha256:
            notes.append(f"run {r.run_id} ({r.label}) was trained on another manifest than {manifest} (SHA-256 "
                         f"differs): its splits here are not the ones it was trained and tested on")
        rows.append(RunRow(
            label=r.label, run_id=r.run_id, run_name=r.run_name, methods=list(r.cfg.methods),
            backbone=r.cfg.model.backbone, image_size=r.cfg.data.image_size, epochs=r.cfg.optim.epochs,
            test_accuracy=float(r.metrics.get("test_accuracy", float("nan"))),
            test_macro_auc=float(r.metrics.get("test_macro_auc", float("nan"))),
            val_bg_share=_mean_share(r.model, r.cfg, man.records("val"), batch_size),
            split_bg_share=_mean_share(r.model, r.cfg, man.records(split), batch_size)))
    shown = manifests[(tuple(runs[0].cfg.data.split_fractions), runs[0].cfg.data.split_seed)]
    if any(not m.frame["split"].equals(shown.frame["split"]) for m in manifests.values()):
        notes.append(f"the runs drew different splits; the figure shows the {split} images of {runs[0].run_id}, "
                     f"which another run may have trained on")
    figure = _write_figure(runs, shown, split, images, Path(out))
    return Comparison(rows=rows, split=split, figure=figure, notes=notes)


def _write_figure(runs: list[_Run], manifest: Manifest, split: str, images: int, out: Path) -> Path:
    records = pick_images(manifest, split, images)
    classes = list(runs[0].cfg.data.classes)
    explained = [_explain_images(r.model, r.cfg, records) for r in runs]
    first = explained[0]
    fig = comparison_grid(
        list(first["image"]), first["mask"], [list(e["heat"]) for e in explained],
        [f"{classes[rec['label']]} · {rec['site']}" for rec in records],
        [[f"{r.label}: {classes[p]}, bg {_pct(float(s))}" for p, s in zip(e["pred"], e["share"])]
         for r, e in zip(runs, explained)],
        value_range=runs[0].cfg.data.value_range, row_masks=[e["mask"] for e in explained])
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def row_dicts(comparison: Comparison) -> list[dict]:
    """The table's rows for JSON: the split's share under ``<split>_bg_share``, NaN as None."""
    out = []
    for row in comparison.rows:
        d = asdict(row)
        d[f"{comparison.split}_bg_share"] = d.pop("split_bg_share")
        out.append({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()})
    return out


def format_table(comparison: Comparison) -> str:
    """The side-by-side table, one line per run."""
    def num(v: float, fmt: str = ".3f") -> str:
        return "n/a" if math.isnan(v) else format(v, fmt)

    head = ["label", "run", "method(s)", "backbone", "size", "epochs", "test acc", "test AUC", "val bg share"]
    if comparison.split != "val":
        head.append(f"{comparison.split} bg share")
    lines = [head]
    for r in comparison.rows:
        cells = [r.label, r.run_id, "+".join(r.methods), r.backbone, str(r.image_size), str(r.epochs),
                 num(r.test_accuracy), num(r.test_macro_auc), num(r.val_bg_share)]
        if comparison.split != "val":
            cells.append(num(r.split_bg_share))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)
