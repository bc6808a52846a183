"""Manifest builders on tiny fake trees in each public layout (phantom pixels, the layout's own formats)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isnet.data import io
from isnet.data.builders import BUILDERS, build_manifest
from isnet.data.manifest import load_manifest
from isnet.data.phantom import render_case
from isnet.errors import UserError

from conftest import CLASSES, run_isnet

SIZE = 48


def _case(seed: int, label: str = "normal"):
    c = render_case(seed, label=label if label in ("normal", "covid", "tb") else "normal", site=seed % 3, size=SIZE)
    return (c.image * 255).astype(np.uint8), c.mask


def _png(path: Path, arr: np.ndarray, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode == "RGB":
        img = img.convert("RGB")
    elif mode == "P":
        img = img.convert("P")
    img.save(path)
    return path


def _read(out: Path) -> pd.DataFrame:
    return pd.read_csv(out, dtype=str, keep_default_na=False)


def test_registry_has_every_layout():
    assert set(BUILDERS) == {"montgomery", "shenzhen", "covid-qu-ex", "covidx", "tbx11k", "folders"}


def test_montgomery_merges_left_and_right_masks(tmp_path: Path):
    root = tmp_path / "MontgomerySet"
    for i, suffix in enumerate(["0", "1", "0", "1"]):
        name = f"MCUCXR_{i + 1:04d}_{suffix}.png"
        img, mask = _case(i, "tb" if suffix == "1" else "normal")
        _png(root / "CXR_png" / name, img)
        half = SIZE // 2
        left, right = mask.copy(), mask.copy()
        left[:, half:] = 0
        right[:, :half] = 0
        _png(root / "ManualMask" / "leftMask" / name, left * 255)
        _png(root / "ManualMask" / "rightMask" / name, right * 255)
    (root / "ClinicalReadings").mkdir()
    out = tmp_path / "manifests" / "montgomery.csv"
    r = run_isnet(["manifest", "build", "montgomery", str(root), "--out", str(out)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no problems found" in r.stdout and "per site and class" in r.stdout
    df = _read(out)
    assert list(df.columns[:6]) == ["image", "mask", "label", "site", "patient_id", "split"]
    assert sorted(df["label"]) == ["normal", "normal", "tb", "tb"]
    assert set(df["site"]) == {"montgomery"} and set(df["split"]) == {""}
    row = df[df["image"].str.endswith("MCUCXR_0002_1.png")].iloc[0]
    assert row["label"] == "tb" and row["patient_id"] == "MCUCXR_0002"
    merged = io.read_mask(out.parent / row["mask"])
    _, expected = _case(1, "tb")
    assert np.array_equal(merged, expected)  # left | right = the whole lung mask
    # relative paths: the manifest can be moved together with its folder
    assert not Path(row["image"]).is_absolute()
    # refuses to overwrite what is already there
    r2 = run_isnet(["manifest", "build", "montgomery", str(root), "--out", str(out)], cwd=tmp_path)
    assert r2.returncode == 2 and "already exists" in r2.stderr


def test_shenzhen_converts_palette_and_rgb(tmp_path: Path):
    root = tmp_path / "ChinaSet_AllFiles"
    modes = ["L", "RGB", "P", "RGB"]
    for i, mode in enumerate(modes):
        suffix = str(i % 2)
        img, mask = _case(10 + i)
        _png(root / "CXR_png" / f"CHNCXR_{i + 1:04d}_{suffix}.png", img, mode)
        if i < 2:
            _png(root / "mask" / f"CHNCXR_{i + 1:04d}_{suffix}_mask.png", mask * 255, "RGB")
    out = tmp_path / "shenzhen.csv"
    res = build_manifest("shenzhen", root, out)
    df = res.frame
    assert len(df) == 4 and sorted(df["label"]) == ["normal", "normal", "tb", "tb"]
    assert set(df["site"]) == {"shenzhen"}
    assert (df["mask"] != "").sum() == 2
    for r in df.itertuples():
        p = out.parent / r.image
        with Image.open(p) as im:
            assert im.mode == "L", (r.image, im.mode)
        i = int(Path(r.image).stem.split("_")[1]) - 1
        expected, _ = _case(10 + i)
        # grey stays grey: RGB copies are exact, palette quantisation changes values by a little at most
        assert np.abs(np.asarray(Image.open(p), np.int16) - expected).max() <= (0 if modes[i] != "P" else 12)
    assert any("converted" in n for n in res.notes)
    assert any("_files/images" in v for v in df["image"])  # the originals are not touched


def test_covid_qu_ex_splits_labels_and_masks(tmp_path: Path):
    root = tmp_path / "COVID-QU-Ex" / "Lung Segmentation Data"
    n = 0
    for split in ("Train", "Val", "Test"):
        for cls in ("COVID-19", "Non-COVID", "Normal"):
            img, mask = _case(n, "covid" if cls == "COVID-19" else "normal")
            _png(root / split / cls / "images" / f"{cls.lower()}_{n}.png", img)
            _png(root / split / cls / "lung masks" / f"{cls.lower()}_{n}.png", mask * 255)
            n += 1
    out = tmp_path / "covidqu.csv"
    r = run_isnet(["manifest", "build", "covid-qu-ex", str(root.parent), "--out", str(out)], cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "Non-COVID x3" in r.stdout  # skipped and said so
    df = _read(out)
    assert len(df) == 6 and set(df["label"]) == {"covid", "normal"}
    assert sorted(df["split"]) == ["test"] * 2 + ["train"] * 2 + ["val"] * 2
    assert (df["mask"] != "").all() and set(df["site"]) == {"covid-qu-ex"}
    # a user who wants the third class maps it explicitly
    res = build_manifest("covid-qu-ex", root, tmp_path / "x.csv", label_map={"Non-COVID": "pneumonia"})
    assert (res.frame["label"] == "pneumonia").sum() == 3


def test_covidx_lists_sources_and_patients(tmp_path: Path):
    root = tmp_path / "covidx"
    lines = {"train": [("p1", "a.png", "positive", "bimcv"), ("p2", "b.png", "negative", "rsna"),
                       ("p3", "c.png", "negative", "rsna"), ("p4", "d.png", "positive", "cohen")],
             "test": [("p5", "e.png", "positive", "ricord"), ("p6", "f.png", "negative", "rsna")]}
    k = 0
    for split, rows in lines.items():
        for pid, fname, _lab, _src in rows:
            _png(root / split / fname, _case(k)[0])
            k += 1
        (root / f"{split}.txt").write_text("\n".join(" ".join(r) for r in rows) + "\n")
    out = tmp_path / "covidx.csv"
    df = build_manifest("covidx", root, out).frame
    assert len(df) == 6
    b = df[df["image"].str.endswith("b.png")].iloc[0]
    assert (b["label"], b["site"], b["patient_id"], b["split"]) == ("normal", "covidx:rsna", "rsna:p2", "train")
    assert set(df.loc[df["split"] == "test", "site"]) == {"covidx:ricord", "covidx:rsna"}
    (root / "val.txt").write_text("p7 g.png mystery rsna\n")
    with pytest.raises(UserError, match=r"label 'mystery' is not in this builder's table"):
        build_manifest("covidx", root, out)


def test_tbx11k_lists_and_skipped_sick(tmp_path: Path):
    root = tmp_path / "TBX11K"
    names = {"health": ["h1.png", "h2.png"], "tb": ["tb1.png", "tb2.png"], "sick": ["s1.png"]}
    k = 0
    for folder, files in names.items():
        for f in files:
            _png(root / "imgs" / folder / f, _case(k, "tb" if folder == "tb" else "normal")[0])
            k += 1
    (root / "lists").mkdir()
    (root / "lists" / "TBX11K_train.txt").write_text("health/h1.png\ntb/tb1.png\nsick/s1.png\n")
    (root / "lists" / "TBX11K_val.txt").write_text("health/h2.png\ntb/tb2.png\n")
    res = build_manifest("tbx11k", root, tmp_path / "tbx.csv")
    df = res.frame
    assert len(df) == 4 and res.skipped == {"sick": 1}
    assert dict(zip(df["image"].map(lambda s: Path(s).name), df["split"])) == {
        "h1.png": "train", "tb1.png": "train", "h2.png": "val", "tb2.png": "val"}
    assert set(df["label"]) == {"normal", "tb"} and set(df["site"]) == {"tbx11k"}
    # without the lists: every labelled image, splits left to the seeded assignment
    for f in (root / "lists").iterdir():
        f.unlink()
    df2 = build_manifest("tbx11k", root, tmp_path / "tbx2.csv", label_map={"sick": "tb"}).frame
    assert len(df2) == 5 and set(df2["split"]) == {""}


def test_folders_with_splits_masks_label_map_and_dicom(tmp_path: Path):
    from isnet.data.dicom import write_dicom

    root = tmp_path / "hospital_a"
    masks = tmp_path / "hospital_a_masks"
    k = 0
    for split in ("train", "val"):
        for cls in ("Normal", "COVID", "TB"):
            img, mask = _case(k, {"Normal": "normal", "COVID": "covid", "TB": "tb"}[cls])
            if cls == "TB":
                write_dicom(root / split / cls / f"x{k}.dcm", img.astype(np.uint16) * 16, bits_stored=12)
                _png(masks / split / cls / f"x{k}.png", mask * 255)
            else:
                _png(root / split / cls / f"patient_{k}" / f"x{k}.png", img)
            k += 1
    out = tmp_path / "folders.csv"
    r = run_isnet(["manifest", "build", "folders", str(root), "--out", str(out), "--mask-dir", str(masks),
                   "--label-map", "COVID=covid", "--site", "hospital-a"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    df = _read(out)
    assert len(df) == 6 and sorted(df["label"]) == sorted(CLASSES * 2)
    assert set(df["site"]) == {"hospital-a"}
    assert sorted(df["split"]) == ["train"] * 3 + ["val"] * 3
    assert (df.loc[df["label"] == "tb", "mask"] != "").all() and (df.loc[df["label"] != "tb", "mask"] == "").all()
    assert set(df.loc[df["label"] == "normal", "patient_id"]) == {"patient_0", "patient_3"}
    m = load_manifest(out, CLASSES)  # usable for training as it is
    assert len(m.records("train")) == 3


def test_unknown_layout_and_missing_root(tmp_path: Path):
    r = run_isnet(["manifest", "build", "montgomery", str(tmp_path / "nope"), "--out", str(tmp_path / "m.csv")],
                  cwd=tmp_path)
    assert r.returncode == 2 and "data folder not found" in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_isnet(["manifest", "build", "montgomery", str(tmp_path / "empty"), "--out", str(tmp_path / "m.csv")],
                  cwd=tmp_path)
    assert r.returncode == 2 and "no usable images" in r.stderr and not (tmp_path / "m.csv").exists()
