from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from isnet.data.manifest import load_manifest, read_manifest, validate_manifest
from isnet.data.splits import assign_splits
from isnet.errors import ManifestError

from conftest import CLASSES, make_toy_set, write_manifest


def test_every_problem_reported_at_once(tmp_path: Path):
    make_toy_set(tmp_path, n_per_class=3, size=40)
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "small_mask.png")
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "empty_mask.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = pd.read_csv(tmp_path / "manifest.csv", dtype=str, keep_default_na=False).to_dict("records")
    rows[0]["image"] = "missing.png"                     # row 2
    rows[1]["label"] = "pneumonia"                        # row 3
    rows[2]["mask"] = "small_mask.png"                    # row 4
    rows[3]["mask"] = "empty_mask.png"                    # row 5
    rows[4]["image"] = "broken.png"                       # row 6
    rows[5]["patient_id"], rows[5]["split"] = "pX", "train"   # rows 7, 8: one patient in two splits
    rows[6]["patient_id"], rows[6]["split"] = "pX", "test"
    rows[7]["image"] = rows[8]["image"]                   # rows 9, 10: duplicate image
    m = write_manifest(tmp_path / "bad.csv", rows)
    with pytest.raises(ManifestError) as exc:
        load_manifest(m, CLASSES)
    text = str(exc.value)
    assert "row 2: image file not found: 'missing.png'" in text
    assert "row 3: unknown label 'pneumonia'" in text
    assert "row 4: mask 'small_mask.png' is 30x30 but image" in text
    assert "row 5: mask 'empty_mask.png' is empty" in text
    assert "row 6: image 'broken.png' is not an image file" in text
    assert "patient 'pX' appears in splits ['test', 'train']" in text
    assert "listed in several rows [9, 10]" in text
    assert text.count("bad.csv: ") >= 7


def test_missing_manifest_and_columns(tmp_path: Path):
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "m.csv").write_text("path,label\na.png,tb\n")
    with pytest.raises(ManifestError, match=r"lacks required column\(s\) \['image'\]"):
        read_manifest(tmp_path / "m.csv")


def test_require_masks_flags_empty_cells(tmp_path: Path):
    m = make_toy_set(tmp_path, n_per_class=2)
    df = read_manifest(m)
    df.loc[0, "mask"] = ""
    df.loc[0, "mask_path"] = ""
    report = validate_manifest(df, m, CLASSES, require_masks=True)
    assert len(report.problems) == 1 and "row 2" in report.problems[0] and "lung masks" in report.problems[0]
    assert not validate_manifest(df, m, CLASSES, require_masks=False).problems


def test_splits_grouped_by_patient_stratified_and_seeded():
    n = 300
    df = pd.DataFrame({"image": [f"i{i}" for i in range(n)], "label": [CLASSES[i % 3] for i in range(n)],
                       "site": [f"s{i % 2}" for i in range(n)], "patient_id": [f"p{i // 2}" for i in range(n)],
                       "split": [""] * n})
    a = assign_splits(df, (0.6, 0.2, 0.2), seed=1)
    b = assign_splits(df, (0.6, 0.2, 0.2), seed=1)
    c = assign_splits(df, (0.6, 0.2, 0.2), seed=2)
    assert (a["split"] == b["split"]).all() and not (a["split"] == c["split"]).all()
    assert a.groupby("patient_id")["split"].nunique().max() == 1
    frac = a["split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.6) < 0.05 and abs(frac["test"] - 0.2) < 0.05
    for split in ("train", "val", "test"):
        assert set(a.loc[a["split"] == split, "label"]) == set(CLASSES)
    fixed = df.assign(split=["test"] + [""] * (n - 1))
    assert assign_splits(fixed, seed=0)["split"].iloc[0] == "test"


def test_load_manifest_assigns_splits_and_hashes(tmp_path: Path):
    m = make_toy_set(tmp_path, n_per_class=10)
    man = load_manifest(m, CLASSES)
    assert set(man.frame["split"]) == {"train", "val", "test"}
    assert len(man.sha256) == 64
    rec = man.records("train")[0]
    assert Path(rec["image"]).is_absolute() and rec["label"] in (0, 1, 2) and rec["row"] >= 2
