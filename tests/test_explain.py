"""`isnet explain` on a trained run: overlays and a per-image CSV of background relevance share."""

import re
from pathlib import Path

import pandas as pd

from conftest import FAST_TRAIN, run_isnet


def test_explain_writes_overlays_and_csv(toy_manifest: Path, tmp_path: Path):
    proc = run_isnet(["train", "--manifest", str(toy_manifest), "--epochs", "1"] + FAST_TRAIN, tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_id = re.search(r"run ([0-9a-f]{32}) started", proc.stdout).group(1)
    out = tmp_path / "heatmaps"
    proc = run_isnet(["explain", "--run", run_id, "--manifest", str(toy_manifest), "--out", str(out),
                      "--max-images", "5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "relevance.csv")
    assert len(table) == 5 and set(table.columns) >= {"row", "image", "label", "predicted", "probability", "bg_share"}
    assert table["bg_share"].between(0, 1).all()
    assert table["predicted"].isin(["normal", "covid", "tb"]).all()
    for rel in table["overlay"]:
        assert (out / rel).stat().st_size > 1000
    assert "mean background relevance share" in proc.stdout


def test_explain_unknown_run_is_a_clear_error(toy_manifest: Path, tmp_path: Path):
    proc = run_isnet(["explain", "--run", "0" * 32, "--manifest", str(toy_manifest), "--out", str(tmp_path / "o")],
                     tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "run 00000000000000000000000000000000" in proc.stderr
