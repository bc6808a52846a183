"""`isnet compare` on two tiny trained runs (standard and ISNet): the table, the figure, the JSON, and the
errors a user can make (unknown run, missing manifest, a run without a checkpoint)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from isnet.cli import main
from isnet.data.manifest import load_manifest
from isnet.evaluate.compare import pick_images
from isnet.tracking import Tracker

from conftest import CLASSES, FAST_TRAIN, make_toy_set

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> dict:
    """A standard and an ISNet run (1 epoch each) trained through the CLI into a store of their own (from the
    temporary folder: MLflow puts a non-default store's artifacts under ./mlruns)."""
    root = tmp_path_factory.mktemp("compare")
    manifest = make_toy_set(root / "toy")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    ckpt = root / "checkpoints"
    ids = {}
    here = os.getcwd()
    os.chdir(root)
    try:
        for method in ("standard", "isnet"):
            id_file = root / f"{method}.id"
            rc = main(["train", "--manifest", str(manifest), "--epochs", "1", *FAST_TRAIN,
                       "--set", f"methods=[{method}]", "--set", "method.isnet.C1=0.01", "--set", "method.isnet.C2=10",
                       "--set", "train.heatmap_every=0", "--set", f"tracking.tracking_uri={uri}",
                       "--set", f"train.checkpoint_dir={ckpt}", "--run-id-file", str(id_file)])
            assert rc == 0
            ids[method] = id_file.read_text().strip()
            assert len(ids[method]) == 32
    finally:
        os.chdir(here)
    return {"root": root, "manifest": manifest, "uri": uri, "ckpt": ckpt, **ids}


@pytest.fixture
def store(two_runs, monkeypatch) -> dict:
    monkeypatch.chdir(two_runs["root"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", two_runs["uri"])
    return two_runs


def _compare(store: dict, runs: list[str], tmp_path: Path, *extra: str) -> int:
    return main(["compare", "--runs", *runs, "--manifest", str(store["manifest"]), "--out", str(tmp_path / "f.png"),
                 "--checkpoint-dir", str(store["ckpt"]), *extra])


def test_compare_prints_the_table_and_writes_the_figure_and_json(store, tmp_path, capsys):
    rc = _compare(store, [store["standard"], store["isnet"]], tmp_path, "--labels", "standard,ISNet",
                  "--images", "3", "--json", str(tmp_path / "rows.json"))
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["label", "run", "method(s)"] and "test bg share" in lines[0]
    assert lines[1].split()[:4] == ["standard", store["standard"], "standard", "small_cnn"]
    assert lines[2].split()[:4] == ["ISNet", store["isnet"], "isnet", "small_cnn"]
    assert f"heatmap figure (test images): {tmp_path / 'f.png'}" in out
    assert (tmp_path / "f.png").read_bytes()[:8] == PNG_MAGIC
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert [r["label"] for r in rows] == ["standard", "ISNet"]
    assert [r["run_id"] for r in rows] == [store["standard"], store["isnet"]]
    for r in rows:
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["image_size"] == 32 and r["epochs"] == 1
        assert 0.0 <= r["val_bg_share"] <= 1.0 and 0.0 <= r["test_bg_share"] <= 1.0


def test_unknown_run_is_a_one_line_error_naming_it(store, tmp_path, capsys):
    missing = "0" * 32
    rc = _compare(store, [store["standard"], missing], tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"run {missing} not found" in err
    assert not (tmp_path / "f.png").exists()


def test_missing_manifest_and_run_without_checkpoint_are_clean_errors(store, tmp_path, capsys):
    rc = main(["compare", "--runs", store["standard"], "--manifest", str(tmp_path / "nope.csv"),
               "--out", str(tmp_path / "f.png")])
    err = capsys.readouterr().err
    assert rc == 2 and f"manifest not found: {tmp_path / 'nope.csv'}" in err
    tracker = Tracker("covid_tb", store["uri"])  # a run that never reached its first checkpoint
    empty = tracker.start()
    tracker.end("FAILED")
    rc = _compare(store, [store["standard"], empty], tmp_path)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and f"run {empty}: no checkpoint" in err


def test_labels_must_match_the_runs(store, tmp_path, capsys):
    rc = _compare(store, [store["standard"], store["isnet"]], tmp_path, "--labels", "only-one")
    assert rc == 2 and "1 label(s) for 2 run(s)" in capsys.readouterr().err


def test_figure_images_are_deterministic_and_spread_over_the_classes(tmp_path):
    man = load_manifest(make_toy_set(tmp_path / "toy", n_per_class=20), CLASSES)
    picked = pick_images(man, "test", 5)
    assert [r["label"] for r in picked] == [0, 0, 1, 1, 2]
    assert [r["row"] for r in picked] == [r["row"] for r in pick_images(man, "test", 5)]
