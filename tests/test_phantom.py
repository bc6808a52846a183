"""Phantom data set: determinism, mask geometry, lesion/artefact placement, manifest, arguments, PNG I/O."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from isnet.data.phantom import (LABELS, MANIFEST_COLUMNS, SITE_TABLE, generate_dataset, render_case,
                                site_styles)
from isnet.data.phantom.generate import quantize, write_case

SIZE = 96


@pytest.fixture(scope="module")
def cases():
    """A dozen cases over all classes and the four table sites."""
    return [render_case(np.random.SeedSequence([5, i]), label=LABELS[i % 3], site=i % 4, size=SIZE)
            for i in range(12)]


def test_render_is_deterministic_and_seed_sensitive():
    a = render_case(123, label="tb", site=1, size=64)
    b = render_case(123, label="tb", site=1, size=64)
    c = render_case(124, label="tb", site=1, size=64)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.meta == b.meta
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and a.image.shape == (64, 64)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0


def test_lesion_contrast_changes_only_the_lesions():
    a = render_case(7, label="covid", site=0, size=64, lesion_contrast=0.0)
    b = render_case(7, label="covid", site=0, size=64, lesion_contrast=2.0)
    assert np.array_equal(a.mask, b.mask)
    diff = np.abs(a.image - b.image)
    assert diff.max() > 0.02
    # outside the (slightly dilated) lungs, only noise propagation through the blur can differ
    outside = ndimage.binary_dilation(a.mask > 0, iterations=3) == 0
    assert diff[outside].mean() < 0.1 * diff[a.mask > 0].mean()


def test_mask_geometry(cases):
    areas = []
    for c in cases:
        m = c.mask
        assert set(np.unique(m)) <= {0, 1}
        lab, k = ndimage.label(m)
        assert k == 2, f"expected two lungs, got {k} components"
        half = SIZE // 2
        per = []
        for sl in (np.s_[:, :half], np.s_[:, half:]):
            mm = m[sl]
            ys, xs = np.nonzero(mm)
            h, w = np.ptp(ys) + 1, np.ptp(xs) + 1
            assert 1.3 < h / w < 2.8, "lung bounding box should be taller than wide"
            assert 0.5 < h / SIZE < 0.95, "lung height relative to the image"
            per.append(mm.sum() / m.size)
            assert 0.08 < per[-1] < 0.3
        areas.append(per)
    areas = np.array(areas)
    ratio = areas[:, 0] / areas[:, 1]  # patient right lung (image left) over left lung
    assert 1.0 < ratio.mean() < 1.3
    assert (ratio > 0.85).all()


def test_costophrenic_angles_and_cardiac_notch(cases):
    for c in cases:
        m = c.mask.astype(bool)
        half = SIZE // 2
        # lowest point of each lung lies in its lateral half: sharp lower lateral corner
        right, left = m[:, :half], m[:, half:]
        ys, xs = np.nonzero(right)
        assert xs[ys == ys.max()].mean() < np.median(xs)
        ys, xs = np.nonzero(left)
        assert xs[ys == ys.max()].mean() > np.median(xs)
        # cardiac notch: the left lung's medial border is farther from the midline low than high up
        rows = np.flatnonzero(left.any(axis=1))
        top, bot = rows[0], rows[-1]
        med = lambda r: np.flatnonzero(left[r])[0]  # noqa: E731
        upper = med(top + (bot - top) // 3)
        lower = med(top + 3 * (bot - top) // 4)
        assert lower > upper + 1


def test_lesions_inside_masks_and_in_the_right_zone():
    ys_cov, ys_tb = [], []
    for i in range(8):
        for label in ("covid", "tb"):
            c = render_case(np.random.SeedSequence([11, i]), label=label, site=i % 4, size=SIZE, lesion_contrast=1.5)
            support = c.lesion > 1e-6
            assert support.any(), f"{label} case without lesion"
            assert not (support & (c.mask == 0)).any(), "lesion outside the lung mask"
            rows = np.flatnonzero(c.mask.any(axis=1))
            yc = (np.nonzero(support)[0].mean() - rows[0]) / (rows[-1] - rows[0])
            (ys_cov if label == "covid" else ys_tb).append(yc)
        n = render_case(np.random.SeedSequence([11, i]), label="normal", site=i % 4, size=SIZE)
        assert n.lesion.max() == 0
    assert np.mean(ys_cov) > 0.55, "covid opacities are lower-zone"
    assert np.mean(ys_tb) < 0.45, "tb lesions are upper-zone"


def test_artefacts_outside_masks_and_class_markers():
    seen_marker = {"covid": 0, "tb": 0, "normal": 0}
    any_artefact = 0
    for i in range(9):
        label = LABELS[i % 3]
        c = render_case(np.random.SeedSequence([3, i]), label=label, site=i % 4, size=SIZE, class_marker_rate=1.0)
        art = c.artefact > 1e-6
        any_artefact += art.any()
        assert not (art & (c.mask > 0)).any(), "artefact inside the lungs"
        seen_marker[label] += bool(c.meta["marker"])
        plain = render_case(np.random.SeedSequence([3, i]), label=label, site=i % 4, size=SIZE)
        assert plain.meta["marker"] == ""
    assert any_artefact >= 5
    assert seen_marker["covid"] >= 2 and seen_marker["tb"] >= 2 and seen_marker["normal"] == 0


def test_artefact_rates_do_not_depend_on_class():
    # with class_marker_rate 0, the artefact draws come from a generator independent of the label
    for i in range(4):
        metas = [render_case(np.random.SeedSequence([9, i]), label=lab, site=1, size=48).meta for lab in LABELS]
        keys = ("letter", "wires", "tube", "tag", "collimated")
        assert all(m[k] == metas[0][k] for m in metas for k in keys)


def _read_manifest(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_generate_dataset_manifest_and_determinism(tmp_path):
    kw = dict(sites=4, per_class=1, seed=3, size=48)
    m1 = generate_dataset(tmp_path / "a", **kw)
    m2 = generate_dataset(tmp_path / "b", workers=2, **kw)
    m3 = generate_dataset(tmp_path / "c", **{**kw, "seed": 4})
    assert m1 == tmp_path / "a" / "manifest.csv"
    rows = _read_manifest(m1)
    assert tuple(rows[0].keys()) == MANIFEST_COLUMNS
    assert len(rows) == 4 * 3
    assert {r["label"] for r in rows} == set(LABELS)
    assert {r["site"] for r in rows} == {s.name for s in SITE_TABLE}
    assert len({r["patient_id"] for r in rows}) == len(rows)
    for r in rows:
        assert r["split"] == "" and r["view"] == "PA" and r["sex"] in ("M", "F") and 18 <= int(r["age"]) <= 90
        for col in ("image", "mask"):
            assert not Path(r[col]).is_absolute() and r[col].startswith(r["site"] + "/")
            assert (m1.parent / r[col]).is_file()
        assert r["label"] not in r["image"] and r["label"] not in r["patient_id"]
        mask = np.asarray(Image.open(m1.parent / r["mask"]))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255} and mask.shape == (48, 48)
    # byte-identical, independent of workers; another seed differs
    assert m1.read_bytes() == m2.read_bytes()
    for r in rows:
        assert (m1.parent / r["image"]).read_bytes() == (m2.parent / r["image"]).read_bytes()
    assert m1.read_bytes() != m3.read_bytes()
    exts = {Path(r["image"]).suffix for r in rows}
    assert exts == {".png", ".dcm"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(sites=0), "sites must be >= 1"),
    (dict(per_class=0), "per_class must be >= 1"),
    (dict(size=16), "size must be >= 32"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(workers=0), "workers must be >= 1"),
    (dict(class_marker_rate=1.5), "class_marker_rate must be in"),
    (dict(lesion_contrast=-1.0), "lesion_contrast must be"),
    (dict(sites=2.5), "sites must be an integer"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path, **{"per_class": 1, "size": 32, **kwargs})
    assert not (tmp_path / "manifest.csv").exists()


def test_render_case_bad_arguments():
    with pytest.raises(ValueError, match="label must be one of"):
        render_case(0, label="pneumonia")
    with pytest.raises(ValueError, match="size must be >= 32"):
        render_case(0, label="normal", size=8)


def test_more_sites_than_table_vary_by_seed():
    a, b = site_styles(6, seed=0), site_styles(6, seed=1)
    assert [s.name for s in a] == ["site_a", "site_b", "site_c", "site_d", "site_e", "site_f"]
    assert a[:4] == list(SITE_TABLE) and a[4] != b[4]
    assert site_styles(6, seed=0) == a


def test_png16_round_trip(tmp_path):
    style = SITE_TABLE[2]
    assert style.fmt == "png" and style.bits == 16
    case = render_case(1, label="normal", site=style, size=64)
    img_rel, _ = write_case(case, style, tmp_path, "PHTEST", 64)
    back = np.asarray(Image.open(tmp_path / img_rel)).astype(np.int64)
    want = quantize(case, style).astype(np.int64)
    assert np.array_equal(back, want)
    assert want.max() > 255, "16-bit values must use the full range"
