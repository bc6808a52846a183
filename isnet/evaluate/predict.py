"""``isnet predict``: class probabilities of a trained run on new, possibly unlabelled images.

The run's own stored config decides the preprocessing (image size, intensity convention, percentile scaling,
crop, masked input), so a prediction sees exactly what the test evaluation saw. Rows that cannot be used (a
missing or unreadable image, a mask a masked-input model lacks) are reported with the reason and skipped;
the other rows are still predicted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from isnet.lrp import run_lrp_config
from isnet.data.manifest import read_manifest
from isnet.data.transforms import build_transforms
from isnet.errors import UserError
from isnet.files import atomic_write
from isnet.train.loading import load_run_model


@dataclass
class PredictResult:
    predictions: pd.DataFrame
    errors: pd.DataFrame
    classes: list[str]
    out: Path
    errors_path: Path | None = None
    heatmaps: Path | None = None
    notes: list[str] = field(default_factory=list)


def errors_path_for(out: str | Path) -> Path:
    """``predictions.csv`` → ``predictions.errors.csv`` (beside the predictions)."""
    p = Path(out)
    return p.with_name(p.stem + ".errors.csv")


def prob_column(cls: str) -> str:
    return f"prob_{cls}"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80]


def _reason(exc: BaseException) -> str:
    """The most specific message of an exception chain (MONAI wraps ours in 'applying transform ...')."""
    chain, e = [], exc
    while e is not None and len(chain) < 10:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        text = str(e).strip()
        if text and not text.startswith("applying transform"):
            return text.splitlines()[0][:300]
    return type(chain[-1]).__name__


def _device(name: str) -> torch.device:
    """``auto``: the GPU when there is one; a CUDA device that is not there is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:<index>") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise UserError(f"--device {name}: no such CUDA device here ({torch.cuda.device_count()} visible); "
                        f"use auto or cpu")
    return dev


def _check_labels(df: pd.DataFrame, manifest: Path, classes: list[str], run_id: str) -> None:
    """Labels are optional, but a label the run does not know means the manifest belongs to another class
    list: one line naming the rows and the run's classes."""
    bad = df[(df["label"] != "") & ~df["label"].isin(classes)]
    if bad.empty:
        return
    rows = list(bad["row"])
    shown = rows[:10]
    more = f" and {len(rows) - len(shown)} more" if len(rows) > len(shown) else ""
    labels = sorted(set(bad["label"]))
    raise UserError(f"manifest {manifest}: label(s) {labels} in row(s) {shown}{more} are not classes of run "
                    f"{run_id}, which knows {classes}; fix the labels or leave the label column empty")


def predict_run(run_id: str, manifest: str | Path, out: str | Path, *, heatmaps: str | Path | None = None,
                device: str = "auto", batch_size: int = 32, checkpoint_dir: str | Path = "checkpoints",
                tracking_uri: str | None = None) -> PredictResult:
    """Write ``out`` (one row per predicted image: ``image`` as in the manifest, ``row``, ``label`` when
    the manifest has labels, ``prob_<class>`` per class of the run, ``predicted``; with ``heatmaps`` also
    ``bg_share`` (NaN without a mask) and ``heatmap``, the PNG written into that folder) and, when rows
    could not be used, ``<out stem>.errors.csv`` (``row``, ``image``, ``error``)."""
    manifest = Path(manifest)
    out = Path(out)
    dev = _device(device)
    model, cfg = load_run_model(run_id, checkpoint_dir, tracking_uri, device=dev)
    classes = list(cfg.data.classes)
    df = read_manifest(manifest, required=("image",))
    _check_labels(df, manifest, classes, run_id)
    has_labels = (df["label"] != "").any()
    data_cfg = cfg.data.model_copy(update={"cache": "none"})  # a copy keeps the derived data.input_mask
    transform = build_transforms(data_cfg, train=False)
    lrp_cfg = run_lrp_config(cfg) if heatmaps is not None else None
    heat_dir = Path(heatmaps) if heatmaps is not None else None
    if heat_dir is not None:
        heat_dir.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    errors: list[dict] = []
    pending: list[tuple[object, dict]] = []

    def flush() -> None:
        if pending:
            rows.extend(_predict_batch(model, pending, dev, lrp_cfg, classes, has_labels, heat_dir,
                                       data_cfg.value_range))
            pending.clear()

    for r in df.itertuples(index=False):
        item, error = _load_row(r, transform)
        if error is not None:
            errors.append({"row": int(r.row), "image": r.image, "error": error})
            continue
        pending.append((r, item))
        if len(pending) >= batch_size:
            flush()
    flush()
    table, err_table, err_path = _write_outputs(rows, errors, out, manifest)
    return PredictResult(table, err_table, classes, out, err_path, heat_dir)


def _load_row(r, transform) -> tuple[dict | None, str | None]:
    """(the preprocessed item, None) for a usable manifest row, else (None, why it cannot be used): a problem
    with one image is that row's, and the other rows are still predicted."""
    img = Path(r.image_path)
    if not r.image:
        return None, "image cell is empty"
    if not img.is_file():
        what = "is a folder, not a file" if img.is_dir() else "not found"
        return None, f"image file {what} (looked at {img})"
    record = {"image": r.image_path, "mask": r.mask_path, "label": -1, "row": int(r.row)}
    try:
        item = transform(record)
        if not torch.isfinite(torch.as_tensor(item["image"])).all():
            raise ValueError("the image has non-finite pixel values after preprocessing (a constant "
                             "or damaged image?)")
    except Exception as exc:  # noqa: BLE001 - any decoding problem is this row's, reported with its reason
        return None, _reason(exc)
    return item, None


def _forward_batch(model: torch.nn.Module, pending: list[tuple[object, dict]], dev: torch.device,
                   lrp_cfg) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(probabilities, heatmaps of the predicted class, background shares) of one batch, on the CPU; without an
    LRP config only the probabilities (no graph kept)."""
    x = torch.stack([torch.as_tensor(item["image"]) for _, item in pending]).to(dev)
    if lrp_cfg is None:
        with torch.no_grad():
            prob = torch.softmax(model(x), 1).cpu()
        return prob, None, None
    from isnet.measure.relevance import background_share, predicted_class
    from isnet.lrp import lrp_heatmaps

    logits, heat = lrp_heatmaps(model, x, predicted_class, config=lrp_cfg)
    prob = torch.softmax(logits.detach(), 1).cpu()
    mask = torch.stack([torch.as_tensor(item["mask"]) for _, item in pending]).to(dev)
    heat = heat.detach()
    share = background_share(heat, mask)[:, 0].cpu()
    return prob, heat.cpu(), share


def _predict_batch(model: torch.nn.Module, pending: list[tuple[object, dict]], dev: torch.device, lrp_cfg,
                   classes: list[str], has_labels: bool, heat_dir: Path | None,
                   value_range: tuple[float, float]) -> list[dict]:
    """The output rows of one batch of usable manifest rows (heatmap PNGs written when asked for)."""
    prob, heat, share = _forward_batch(model, pending, dev, lrp_cfg)
    rows = []
    for i, (r, item) in enumerate(pending):
        pred = int(prob[i].argmax())
        rec = {"image": r.image, "row": int(r.row)}
        if has_labels:
            rec["label"] = r.label
        rec.update({prob_column(c): float(prob[i, k]) for k, c in enumerate(classes)})
        rec["predicted"] = classes[pred]
        if heat is not None:
            has_mask = bool(item["has_mask"])
            bg = float(share[i]) if has_mask else float("nan")
            rec["bg_share"] = bg
            rec["heatmap"] = str(_save_heatmap(heat_dir, r, item, heat[i, 0].numpy(), classes[pred],
                                               float(prob[i, pred]), bg, value_range))
        rows.append(rec)
    return rows


def _write_outputs(rows: list[dict], errors: list[dict], out: Path,
                   manifest: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path | None]:
    """Write the unusable rows' reasons (or remove a stale list) and then the predictions; no usable row is a
    UserError. Returns (predictions, errors, the errors file or None)."""
    err_path = errors_path_for(out)
    table = pd.DataFrame(rows)
    err_table = pd.DataFrame(errors, columns=["row", "image", "error"])
    if errors:
        _write_csv(err_table, err_path)
    elif err_path.is_file():  # a stale list from an earlier prediction into the same file
        err_path.unlink()
    if not rows:
        raise UserError(f"no row of manifest {manifest} could be predicted ({len(errors)} unusable; reasons "
                        f"in {err_path}); first: row {errors[0]['row']}: {errors[0]['error']}")
    _write_csv(table, out)
    return table, err_table, err_path if errors else None


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))


def _save_heatmap(folder: Path, r, item: dict, heat: np.ndarray, pred: str, p: float, bg: float,
                  value_range: tuple[float, float]) -> Path:
    import matplotlib.pyplot as plt

    from isnet.measure.figures import heatmap_grid

    has_mask = bool(item["has_mask"])
    image = torch.as_tensor(item["image"])[0].numpy()
    mask = torch.as_tensor(item["mask"])[0].numpy() if has_mask else None
    title = f"→ {pred} ({p:.2f})" + (f"; background {bg:.0%}" if has_mask else "")
    fig = heatmap_grid([image], [mask], [heat], [title], columns=1, value_range=value_range)
    path = folder / f"row{int(r.row):05d}_{_safe(Path(r.image).stem)}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarise(result: PredictResult) -> str:
    counts = result.predictions["predicted"].value_counts()
    per = ", ".join(f"{c} {int(counts.get(c, 0))}" for c in result.classes)
    text = f"predicted {len(result.predictions)} image(s): {per}; wrote {result.out}"
    if "label" in result.predictions and (result.predictions["label"] != "").any():
        known = result.predictions[result.predictions["label"].fillna("") != ""]
        text += f"\naccuracy on the {len(known)} labelled row(s): {(known['label'] == known['predicted']).mean():.3f}"
    if "bg_share" in result.predictions and result.predictions["bg_share"].notna().any():
        text += (f"\nmean background relevance share {np.nanmean(result.predictions['bg_share']):.3f}; "
                 f"heatmaps in {result.heatmaps}")
    elif result.heatmaps is not None:
        text += f"\nheatmaps in {result.heatmaps} (no lung masks: no background share)"
    return text
