"""Shared fixtures: small on-disk data sets and a way to run the ``isnet`` command as a user would."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["normal", "covid", "tb"]


def write_manifest(path: Path, rows: list[dict]) -> Path:
    fields = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return path


def make_toy_set(folder: Path, n_per_class: int = 10, size: int = 40, seed: int = 0) -> Path:
    """A tiny learnable set (a bright bar whose position depends on the class) with lung-like masks."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_per_class * 3):
        k = i % 3
        img = (rng.random((size, size)) * 80).astype(np.uint8)
        x0 = size // 8 + k * size // 4
        img[size // 4: 3 * size // 4, x0: x0 + size // 6] += 150
        mask = np.zeros((size, size), np.uint8)
        mask[size // 8: 7 * size // 8, size // 8: 7 * size // 8] = 255
        Image.fromarray(img).save(folder / f"img{i:03d}.png")
        Image.fromarray(mask).save(folder / f"mask{i:03d}.png")
        rows.append({"image": f"img{i:03d}.png", "mask": f"mask{i:03d}.png", "label": CLASSES[k],
                     "site": f"site_{i % 2}", "patient_id": f"p{i:03d}", "split": ""})
    return write_manifest(folder / "manifest.csv", rows)


@pytest.fixture
def toy_manifest(tmp_path: Path) -> Path:
    return make_toy_set(tmp_path / "toy")


def run_isnet(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m isnet ARGS`` in ``cwd`` (so the default MLflow store and checkpoints land there)."""
    e = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    e.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    # the package of this checkout, even when the environment's editable install points at another (a worktree)
    root = str(Path(__file__).resolve().parents[1])
    e["PYTHONPATH"] = os.pathsep.join([root] + [p for p in e.get("PYTHONPATH", "").split(os.pathsep) if p])
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "isnet", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=e)


FAST_TRAIN = ["--backbone", "small_cnn", "--set", "model.width=4", "--image-size", "32", "--batch-size", "8",
              "--set", "tracking.log_model=false", "--set", "train.threads=1", "--no-progress"]


def stamp_class_markers(manifest: Path, out_dir: Path, size_frac: float = 0.14) -> Path:
    """Copy a PNG manifest's images with a bright square in a top corner (outside the lungs) whose corner
    depends on the class: a background shortcut fully correlated with the label."""
    import pandas as pd

    from isnet.data import io

    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in df.itertuples(index=False):
        img = io.read_image(manifest.parent / r.image)
        mask = io.read_mask(manifest.parent / r.mask)
        h, w = img.shape
        s = max(3, int(size_frac * min(h, w)))
        lo, hi = float(img.min()), float(img.max())
        out = (img - lo) / max(hi - lo, 1e-6) * 255
        if r.label != "normal":
            x0 = 1 if r.label == "covid" else w - s - 1
            assert mask[1:s + 1, x0:x0 + s].sum() == 0, "marker would touch the lungs"
            out[1:s + 1, x0:x0 + s] = 255
        name = Path(r.image).stem + ".png"
        Image.fromarray(out.astype(np.uint8)).save(out_dir / name)
        Image.fromarray(mask * 255).save(out_dir / ("mask_" + name))
        rows.append({**r._asdict(), "image": name, "mask": "mask_" + name})
    return write_manifest(out_dir / "manifest.csv", rows)


@pytest.fixture(autouse=True)
def _isolated_tracking_uri():
    """mlflow.set_tracking_uri() also exports MLFLOW_TRACKING_URI; keep one test's store out of the next
    (removed after each test too: monkeypatch.delenv would not undo a variable set during the test)."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def randomize_bn(model):
    """Non-trivial BatchNorm running statistics and affine parameters (in place), so that LRP's BN folding
    and the train-mode gates are really exercised by the engine tests; returns the model."""
    import torch
    from torch import nn

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model
