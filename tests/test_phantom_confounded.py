"""The confounded phantom scenario: class mix per site, class-correlated markers on the training sites and
not on the external ones, splits, determinism, and its arguments (through the CLI and the public API)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from isnet.cli import main
from isnet.data.manifest import load_manifest
from isnet.data.phantom import LABELS, generate_dataset, render_case
from isnet.data.phantom.generate import CONFOUNDED_COLUMNS, EXTERNAL_MANIFEST, INTERNAL_MANIFEST
from isnet.data.phantom.scenarios import (CLASS_SHAPE, CONFOUNDED, DOMINANT, MARKED_SHARE, MARKER_ON_DOMINANT,
                                          MARKER_ON_OTHERS, class_counts)

PER_CLASS = 4
SIZE = 64
TRAINING = ("site_a", "site_b", "site_c")
EXTERNAL = ("external_clean", "external_unbiased", "external_reversed")
SHAPE_CLASS = {v: k for k, v in CLASS_SHAPE.items()}  # the class each marker stands for on the training sites


def _read(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def confounded(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("confounded")
    rc = main(["phantom", "--scenario", "confounded", "--out", str(out), "--per-class", str(PER_CLASS),
               "--size", str(SIZE), "--seed", "1"])
    assert rc == 0
    return out / "manifest.csv"


def test_class_by_site_table_matches_the_documented_mix(confounded):
    df = _read(confounded)
    assert tuple(df.columns) == CONFOUNDED_COLUMNS
    assert [p.name for p in CONFOUNDED] == list(TRAINING + EXTERNAL)
    table = pd.crosstab(df["site"], df["label"]).reindex(columns=list(LABELS), fill_value=0)
    total = len(LABELS) * PER_CLASS
    dominant = {"site_a": "covid", "site_b": "tb", "site_c": "normal"}
    for plan in CONFOUNDED:
        row = table.loc[plan.name]
        assert row.sum() == total
        assert list(row) == class_counts(plan.mix, total)
        for c in LABELS:
            want = (DOMINANT if dominant.get(plan.name) == c else (1 - DOMINANT) / 2) if plan.name in dominant \
                else 1 / len(LABELS)
            assert abs(row[c] / total - want) <= 1 / total + 1e-9, (plan.name, c)
    # the training sites together are class-balanced: the confound is site <-> class, not a class prior
    train_counts = table.loc[list(TRAINING)].sum()
    assert train_counts.max() - train_counts.min() <= 2


def test_splits_training_sites_train_val_test_external_test_only(confounded):
    df = _read(confounded)
    ext = df[df["site"].isin(EXTERNAL)]
    assert len(ext) == len(EXTERNAL) * len(LABELS) * PER_CLASS and set(ext["split"]) == {"test"}
    internal = df[df["site"].isin(TRAINING)]
    for split in ("train", "val", "test"):
        assert set(internal.loc[internal["split"] == split, "label"]) == set(LABELS), split
    assert (internal["split"] == "train").mean() > 0.6
    # the two subsets partition manifest.csv, rows in the same order
    a, b = _read(confounded.parent / INTERNAL_MANIFEST), _read(confounded.parent / EXTERNAL_MANIFEST)
    assert a.equals(internal.reset_index(drop=True)) and b.equals(ext.reset_index(drop=True))
    # what `isnet train` and `isnet report` read: validated, every split kept as written, masks present
    for path in (confounded, confounded.parent / INTERNAL_MANIFEST):
        m = load_manifest(path, list(LABELS), require_masks=True)
        assert list(m.frame["split"]) == list(_read(path)["split"])
    assert load_manifest(confounded.parent / EXTERNAL_MANIFEST, list(LABELS), need_splits=("test",)).frame[
        "split"].eq("test").all()


def _marker_accuracy(rows: pd.DataFrame) -> float:
    """Share of the marked images whose marker is the training sites' marker of their class."""
    marked = rows[rows["marker"] != ""]
    return float((marked["marker"].map(SHAPE_CLASS) == marked["label"]).mean())


def test_markers_follow_the_class_on_training_sites_only(confounded):
    df = _read(confounded)
    assert set(df["marker"]) <= {"", *CLASS_SHAPE.values()}
    for plan in CONFOUNDED[:3]:
        rows = df[df["site"] == plan.name]
        own = {s for s, _ in plan.markers}
        assert len(own) == 1 and set(rows["marker"]) <= own | {""}, "a training site stamps only its own marker"
    train = df[df["site"].isin(TRAINING)]
    # the marker names the class: circle -> covid, triangle -> tb, square -> normal
    assert _marker_accuracy(train) > 0.85
    # marked share: MARKER_ON_DOMINANT on a site's dominant class, MARKER_ON_OTHERS on its other classes
    dominant = train["label"] == train["site"].map({"site_a": "covid", "site_b": "tb", "site_c": "normal"})
    on, off = (train.loc[dominant, "marker"] != "").mean(), (train.loc[~dominant, "marker"] != "").mean()
    assert on >= MARKER_ON_DOMINANT - 0.25 and off <= MARKER_ON_OTHERS + 0.25, (on, off)
    # external sites: no marker / markers independent of the class / markers of the wrong class
    assert (df.loc[df["site"] == "external_clean", "marker"] == "").all()
    unbiased = df[df["site"] == "external_unbiased"]
    sd = np.sqrt(MARKED_SHARE * (1 - MARKED_SHARE) / len(unbiased))  # binomial sampling error of the share
    assert abs((unbiased["marker"] != "").mean() - MARKED_SHARE) <= 3 * sd
    assert _marker_accuracy(unbiased) < 0.6  # 1/3 expected: each class carries each marker equally often
    reversed_ = df[df["site"] == "external_reversed"]
    assert (reversed_["marker"] != "").mean() > 0.6
    assert _marker_accuracy(reversed_) == 0.0


def test_site_marker_is_drawn_in_the_background_only():
    plain = render_case(4, label="normal", site=2, size=SIZE)
    marked = render_case(4, label="normal", site=2, size=SIZE, marker="square", marker_rate=1.0)
    assert plain.meta["marker"] == "" and marked.meta["marker"] == "square"
    assert np.array_equal(plain.mask, marked.mask)
    diff = np.abs(marked.image - plain.image) > 1e-6
    assert diff.any() and not (diff & (marked.mask > 0)).any()
    assert render_case(4, label="normal", site=2, size=SIZE, marker="square", marker_rate=0.0).meta["marker"] == ""


def test_same_seed_same_files_whatever_the_workers(tmp_path):
    kw = dict(scenario="confounded", per_class=2, size=32)
    a = generate_dataset(tmp_path / "a", seed=5, **kw)
    b = generate_dataset(tmp_path / "b", seed=5, workers=2, **kw)
    c = generate_dataset(tmp_path / "c", seed=6, **kw)
    files = sorted(p.relative_to(a.parent) for p in a.parent.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b.parent) for p in b.parent.rglob("*") if p.is_file())
    assert len(files) == 3 + 2 * 6 * 3 * 2  # three manifests, an image and a mask per row
    for f in files:
        assert (a.parent / f).read_bytes() == (b.parent / f).read_bytes(), f
    assert a.read_bytes() != c.read_bytes()


@pytest.mark.parametrize("kwargs, message", [
    (dict(scenario="biased"), "scenario must be one of"),
    (dict(scenario="confounded", sites=4), "leave sites at 3"),
    (dict(scenario="confounded", class_marker_rate=0.5), "sets its own markers"),
    (dict(scenario="confounded", per_class=1), "too small for the confounded scenario"),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path, **{"per_class": 2, "size": 32, **kwargs})
    assert not (tmp_path / "manifest.csv").exists()


def test_cli_help_and_errors(tmp_path, capsys):
    with pytest.raises(SystemExit), contextlib.redirect_stdout(io.StringIO()) as buf:
        main(["phantom", "--help"])
    text = " ".join(buf.getvalue().split())
    for needle in ("--scenario {default,confounded}", f"{DOMINANT:.0%} covid/tb/normal",
                   f"{MARKER_ON_DOMINANT:.0%} of that class", f"{MARKER_ON_OTHERS:.0%} of the others",
                   *EXTERNAL, INTERNAL_MANIFEST, EXTERNAL_MANIFEST):
        assert needle in text, needle
    assert main(["phantom", "--scenario", "confounded", "--sites", "4", "--out", str(tmp_path)]) == 2
    assert "leave sites at 3" in capsys.readouterr().err


def _stamp(**marker) -> np.ndarray:
    """Where and how bright a covid image's circle marker is: the image with it minus the same case without it
    (the marker's draws come from their own generator, so nothing else of the case changes)."""
    kw = dict(label="covid", site=0, size=128)
    with_marker = render_case(np.random.SeedSequence(11), marker="circle", marker_rate=1.0, **kw, **marker)
    without = render_case(np.random.SeedSequence(11), marker="circle", marker_rate=0.0, **kw)
    assert with_marker.meta["marker"] == "circle" and without.meta["marker"] == ""
    return with_marker.image - without.image


def test_marker_size_and_contrast_change_only_the_marker():
    small, big = _stamp(marker_size=0.03), _stamp(marker_size=0.08)
    assert (big > 1e-6).sum() > 3 * (small > 1e-6).sum() > 0
    # strokes are drawn as max(image, contrast): a faint marker raises pixels to at most 0.5, a full one to 1
    without = render_case(np.random.SeedSequence(11), label="covid", site=0, size=128, marker="circle",
                          marker_rate=0.0).image
    faint = _stamp(marker_contrast=0.5) + without
    bright = _stamp() + without
    raised_faint, raised_bright = _stamp(marker_contrast=0.5) > 1e-6, _stamp() > 1e-6
    assert raised_faint.any() and faint[raised_faint].max() <= 0.5 + 1e-3
    assert bright[raised_bright].max() == pytest.approx(1.0, abs=1e-3)
    assert raised_faint.sum() <= raised_bright.sum()


def test_high_severity_marks_every_image_of_the_dominant_class_and_no_other(tmp_path):
    rc = main(["phantom", "--scenario", "confounded", "--severity", "high", "--out", str(tmp_path),
               "--per-class", "3", "--size", str(SIZE), "--seed", "2"])
    assert rc == 0
    df = _read(tmp_path / "manifest.csv")
    train = df[df["site"].isin(TRAINING)]
    dominant = train["label"] == train["site"].map({"site_a": "covid", "site_b": "tb", "site_c": "normal"})
    assert (train.loc[dominant, "marker"] != "").mean() >= 0.9  # 1.0 unless a corner had no room
    assert (train.loc[~dominant, "marker"] == "").all()
    reversed_ = df[df["site"] == "external_reversed"]
    assert (reversed_["marker"] != "").mean() >= 0.9 and _marker_accuracy(reversed_) == 0.0


def test_severity_is_refused_outside_the_confounded_scenario_and_out_of_range(tmp_path, capsys):
    assert main(["phantom", "--out", str(tmp_path / "a"), "--severity", "low", "--per-class", "1"]) == 2
    assert "--scenario confounded" in capsys.readouterr().err
    assert main(["phantom", "--scenario", "confounded", "--out", str(tmp_path / "b"), "--marker-rate", "0.3",
                 "--per-class", "2", "--size", "64"]) == 2
    assert "marker rate must be in [0.5, 1]" in capsys.readouterr().err
    assert not (tmp_path / "b" / "manifest.csv").exists()
