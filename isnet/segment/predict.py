"""Filling a manifest's empty mask cells with the segmenter's post-processed, quality-checked masks.

Each predicted mask is written at the image's own size (PNG 0/255) under ``<out stem>_masks/``. Columns
added: ``mask_source`` (``manifest`` or ``segmenter:<run id>``) and ``mask_quality`` (``ok`` or why the mask is
implausible). An implausible mask is *not* put in the ``mask`` cell: its path goes to ``mask_flagged`` and
the cell stays empty, so a method that needs masks stops at that row instead of training on a bad mask.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.transforms.utils import allow_missing_keys_mode, convert_applied_interp_mode
from PIL import Image

from isnet.data.manifest import read_manifest
from isnet.data.transforms import base_transforms
from isnet.errors import UserError
from isnet.files import atomic_write
from isnet.models.segmenter import build_segmenter
from isnet.segment.config import SegmenterConfig
from isnet.segment.postprocess import clean_mask, mask_quality
from isnet.segment.train import KIND, data_config


def load_segmenter(run_id: str, checkpoint_dir: str | Path = "checkpoints", tracking_uri: str | None = None,
                   device: str | torch.device = "cpu") -> tuple[torch.nn.Module, SegmenterConfig]:
    """A segmenter run's best weights (local checkpoint first, then the MLflow artifact), in eval mode."""
    from isnet.train.loading import load_best_state

    state = load_best_state(run_id, checkpoint_dir, tracking_uri, device)
    if state.get("kind") != KIND:
        raise UserError(f"run {run_id} is not a lung segmenter run (train one with `isnet segmenter train`)")
    cfg = SegmenterConfig.model_validate(state["config"])
    model = build_segmenter(cfg.encoder, cfg.decoder_channels)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


@torch.no_grad()
def predict_mask(model: torch.nn.Module, cfg: SegmenterConfig, image_path: str | Path,
                 device: str | torch.device = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(probability map, cleaned 0/1 mask), both at the image's own size.

    The logits are mapped back through the inverse of the pipeline's own geometry (MONAI's record of its
    resize and pad on the image, inverted by the same transforms), so the mask lands where the network saw the
    lungs whatever the pipeline does; the inverse resize interpolates the logits bilinearly, not with the
    image's area mode, so the mask's outline stays smooth when the image is larger than the network input."""
    pipeline = Compose(base_transforms(data_config(cfg)))
    image = pipeline({"image": str(image_path), "mask": ""})["image"]
    logits = model(image.as_tensor().to(device, torch.float32)[None])[0].cpu()
    trace = convert_applied_interp_mode(image.applied_operations, mode="bilinear", align_corners=False)
    with allow_missing_keys_mode(pipeline):  # the network's output stands in for the image; no mask to invert
        logits = pipeline.inverse({"image": MetaTensor(logits, meta=image.meta, applied_operations=trace)})["image"]
    prob = torch.sigmoid(torch.as_tensor(logits))[0].numpy()
    pp = cfg.postprocess
    return prob, clean_mask(prob > pp.threshold, pp.keep_components, pp.fill_holes)


@dataclass
class PredictSummary:
    out: Path
    predicted: int
    flagged: int
    kept: int


def _rel(path: Path, folder: Path) -> str:
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:
        return str(path.resolve())


def fill_masks(run_id: str, manifest: str | Path, out: str | Path, *, all_rows: bool = False,
               overwrite: bool = False, checkpoint_dir: str | Path = "checkpoints", tracking_uri: str | None = None,
               device: str = "cpu", area_range: tuple[float, float] | None = None, log=print) -> PredictSummary:
    """Write ``out``: ``manifest`` with empty mask cells (every cell with ``all_rows``) filled by the segmenter.

    ``area_range`` replaces the run's plausible lung-area range (fraction of the image) for this prediction.
    """
    manifest, out = Path(manifest), Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it")
    if out.resolve() == manifest.resolve():
        raise UserError("--out must differ from --manifest (the input manifest is never modified)")
    df = read_manifest(manifest)
    original = pd.read_csv(manifest, dtype=str, keep_default_na=False) if manifest.suffix.lower() not in (
        ".parquet", ".pq") else pd.read_parquet(manifest).astype(str)
    missing = [r.row for r in df.itertuples() if not Path(r.image_path).is_file()]
    if missing:
        raise UserError(f"manifest {manifest}: image file(s) missing in rows {missing[:20]}; run "
                        f"`isnet manifest validate {manifest}`")
    model, cfg = load_segmenter(run_id, checkpoint_dir, tracking_uri, device)
    if area_range is not None:
        from pydantic import ValidationError

        try:
            cfg.postprocess = cfg.postprocess.model_copy(update={"area_range": tuple(area_range)})
            cfg.postprocess = type(cfg.postprocess).model_validate(cfg.postprocess.model_dump())
        except ValidationError as exc:
            raise UserError(f"--area-range: {exc.errors()[0]['msg']}") from None
    folder = out.parent
    mask_dir = folder / f"{out.stem}_masks"
    new = original.copy()
    for c in ("mask",):
        if c not in new.columns:
            new[c] = ""
    # paths stay valid when the new manifest lives in another folder
    new["image"] = [_rel(Path(p), folder) for p in df["image_path"]]
    new["mask"] = [_rel(Path(p), folder) if p else "" for p in df["mask_path"]]
    source = np.where(df["mask"] != "", "manifest", "").astype(object)
    quality, flagged_path = [""] * len(df), [""] * len(df)
    todo = [i for i in range(len(df)) if all_rows or df["mask"].iloc[i] == ""]
    predicted = flagged = 0
    for n, i in enumerate(todo, 1):
        row = df.iloc[i]
        _, mask = predict_mask(model, cfg, row["image_path"], device)
        q = mask_quality(mask, cfg.postprocess.area_range)
        target = mask_dir / f"row{int(row['row']):06d}_{Path(row['image_path']).name.split('.')[0]}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask * np.uint8(255)).save(target)
        predicted += 1
        quality[i] = q
        if q == "ok":
            new.loc[new.index[i], "mask"] = _rel(target, folder)
            source[i] = f"segmenter:{run_id}"
        else:
            flagged += 1
            flagged_path[i] = _rel(target, folder)
            log(f"row {int(row['row'])}: {row['image']}: {q}; mask left out (see column mask_flagged)")
        if n % 200 == 0:
            log(f"{n}/{len(todo)} masks predicted")
    new["mask_source"] = source
    new["mask_quality"] = quality
    new["mask_flagged"] = flagged_path
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: new.to_csv(tmp, index=False))
    return PredictSummary(out=out, predicted=predicted, flagged=flagged, kept=len(df) - len(todo))
