"""The stress-test sweep: nested MLflow runs, tidy results, resuming without retraining, CLI errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from isnet.tracking import store_uri

import isnet.train.run as run_module
from isnet.evaluate.stress.config import load_stress_config
from isnet.data.phantom import generate_dataset
from isnet.errors import UserError
from isnet.evaluate.stress import StressTest, parse_method_spec

from conftest import run_isnet

TINY = ["train.data.image_size=64", "train.data.batch_size=16", "train.model.backbone=small_cnn",
        "train.model.width=4", "train.optim.epochs=1", "train.data.augment.enabled=false",
        "train.method.isnet.warmup_epochs=1", "train.train.threads=1", "train.train.heatmap_every=0",
        "train.train.val_bg_share=false", "train.tracking.log_model=false", "heatmap_examples=4",
        "train.tracking.experiment=stress_tiny"]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("stress") / "ph", sites=1, per_class=12, seed=1, size=64)


_REAL_TRAIN = run_module.train


def _sweep(phantom: Path, seeds: str, calls: list, monkeypatch) -> pd.DataFrame:
    def counting(cfg, *a, **k):
        calls.append((cfg.methods, cfg.train.seed))
        return _REAL_TRAIN(cfg, *a, **k)

    monkeypatch.setattr(run_module, "train", counting)
    cfg = load_stress_config(None, TINY + ["methods=[standard, isnet]", "strengths=[1.0]", f"seeds=[{seeds}]",
                                           "out_dir=out"])
    StressTest(cfg, phantom, log=lambda s: None).run()
    return pd.read_csv("out/results.csv")


def test_resumed_sweep_skips_finished_cells(phantom, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls: list = []
    first = _sweep(phantom, "0", calls, monkeypatch)
    assert sorted(calls) == [(["isnet"], 0), (["standard"], 0)]
    assert set(first["test_set"]) >= {"clean", "aligned", "flipped", "biased", "drop"}
    for m in ("accuracy", "balanced_accuracy", "macro_auc"):
        assert {"clean", "aligned", "flipped", "drop"} <= set(first.loc[first["metric"] == m, "test_set"])
    assert {"bg_share", "bias_share"} <= set(first.loc[first["test_set"] == "biased", "metric"])
    effect = first[first["metric"].isin(["token_shift", "target_gap"])]
    assert sorted(set(zip(effect["test_set"], effect["metric"]))) == [("clean", "target_gap"),
                                                                      ("flipped", "token_shift")]
    assert len(effect) == 4 and effect["value"].notna().all()
    assert "token shift" in Path("out/summary.md").read_text()
    shown = first[first["metric"].isin(["logit_shift", "heatmap_shift"])]  # how much of it the heatmap shows
    assert set(shown["test_set"]) == {"flipped"} and len(shown) == 4 and shown["value"].notna().all()
    assert "heatmap shift" in Path("out/summary.md").read_text()
    assert Path("out/drop_vs_strength.png").is_file() and Path("out/summary.md").is_file()
    assert len(list(Path("out/heatmaps").glob("*.png"))) == 2

    # extending the sweep trains only the new cells
    calls.clear()
    second = _sweep(phantom, "0, 1", calls, monkeypatch)
    assert sorted(calls) == [(["isnet"], 1), (["standard"], 1)]
    old_ids = set(first["run_id"])
    assert old_ids <= set(second["run_id"]) and len(set(second["run_id"])) == 4

    # all child runs sit under one parent; a lost CSV is rebuilt from MLflow without training
    client = MlflowClient(store_uri())
    parent = __import__("json").loads(Path("out/sweep.json").read_text())["parent_run_id"]
    exp = client.get_experiment_by_name("stress_tiny")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {r.info.run_id for r in children} == set(second["run_id"])
    Path("out/results.csv").unlink()
    calls.clear()
    third = _sweep(phantom, "0, 1", calls, monkeypatch)
    assert calls == []
    key = ["run_id", "test_set", "metric"]
    merged = second.merge(third, on=key, suffixes=("", "_mlflow"))
    assert len(merged) == len(second)
    assert (merged["value"] - merged["value_mlflow"]).abs().max() < 1e-9


def test_changed_settings_need_a_new_out_dir(phantom, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sweep.json").write_text('{"fingerprint": "0000", "parent_run_id": null}')
    cfg = load_stress_config(None, TINY + ["methods=[standard]", "strengths=[1.0]", "seeds=[0]", "out_dir=out"])
    with pytest.raises(UserError, match="different data, biases or training settings"):
        StressTest(cfg, phantom, log=lambda s: None).run()


def test_method_specs():
    assert parse_method_spec("isnet") == ["isnet"]
    with pytest.raises(UserError, match="unknown method 'nope'.*registered methods: standard, .*isnet"):
        parse_method_spec("isnet+nope")
    with pytest.raises(UserError, match="cannot be combined"):
        parse_method_spec("standard+isnet")
    with pytest.raises(UserError, match="twice"):
        parse_method_spec("isnet+isnet")


@pytest.mark.parametrize("args,msg", [
    (["--bias", "star"], "bad --bias 'star': unknown bias kind"),
    (["--bias", "shape:hexagon"], "unknown shape 'hexagon'"),
    (["--bias", "text:"], "needs the token"),
    (["--methods", "standard,magic"], "unknown method 'magic'"),
    (["--methods", "standard,,isnet"], "bad --methods"),
    (["--strength", "0.5,high"], "bad --strength"),
    (["--strength", "1.5"], "strengths"),
    (["--target-class", "pneumonia"], "target_class 'pneumonia'"),
])
def test_cli_errors(args, msg, tmp_path, phantom, monkeypatch, capsys):
    from isnet.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["stress-test", "--manifest", str(phantom), *args]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.startswith("isnet: error:")
    assert not (tmp_path / "stress_test").exists() and not (tmp_path / "mlflow").exists()


def test_cli_rejects_unknown_method_before_training(tmp_path, phantom):
    res = run_isnet(["stress-test", "--manifest", str(phantom), "--methods", "isnet+bogus"], cwd=tmp_path, timeout=120)
    assert res.returncode == 2 and "unknown method 'bogus'" in res.stderr and "Traceback" not in res.stderr


def test_no_room_for_a_bias_is_one_line_through_the_cli(tmp_path):
    """Lungs reaching the image edge leave no room for a border: MONAI re-raises the transform's error wrapped in a
    RuntimeError; the CLI still prints one line naming the image and row, exit 2, no traceback."""
    import numpy as np
    from PIL import Image

    from conftest import make_toy_set

    manifest = make_toy_set(tmp_path / "toy", n_per_class=4, size=32)
    near_edge = np.zeros((32, 32), np.uint8)
    near_edge[1:-1, 1:-1] = 255  # the dilated mask reaches every edge
    for mask in (tmp_path / "toy").glob("mask*.png"):
        Image.fromarray(near_edge).save(mask)
    res = run_isnet(["stress-test", "--manifest", str(manifest), "--bias", "border", "--target-class", "covid",
                     "--strength", "1.0", "--seeds", "0", "--methods", "standard", "--out", "out",
                     "--set", "train.optim.epochs=1", "--set", "train.data.image_size=32", "--no-progress"],
                    cwd=tmp_path, timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr and "no room for a border bias" in res.stderr
    [line] = [ln for ln in res.stderr.splitlines() if not ln.split(" INFO ")[0].startswith("20")]  # MLflow's log
    assert line.startswith("isnet: error:") and "manifest row" in line
    # the sweep's run_info.json (written before any cell: command, resolved sweep config, machine and commit)
    info = __import__("json").loads((tmp_path / "out" / "run_info.json").read_text())
    assert info["command"].startswith("isnet stress-test --manifest") and "--bias border" in info["command"]
    assert info["stress"]["target_class"] == "covid" and info["stress"]["seeds"] == [0]
    assert {"cpu", "cores", "commit", "date"} <= set(info["machine"])


def test_summary_flags_hidden_shortcuts():
    """A cell whose drop is over 5 points while its heatmaps put under 5 % of relevance on the bias is flagged."""
    from isnet.evaluate.stress.summary import hidden_shortcut, summarise, summary_markdown

    rows = []
    for method, drop, share in [("hidden", 0.20, 0.01), ("shown", 0.20, 0.30), ("clean", 0.01, 0.01)]:
        for seed in (0, 1):
            rows += [{"method": method, "strength": 1.0, "seed": seed, "run_id": f"{method}{seed}", "test_set": t,
                      "metric": m, "value": v}
                     for t, m, v in [("drop", "accuracy", drop), ("biased", "bias_share", share),
                                     ("clean", "accuracy", 0.8)]]
    summary = summarise(pd.DataFrame(rows))
    flags = {r["method"]: hidden_shortcut(r) for _, r in summary.iterrows()}
    assert flags == {"hidden": True, "shown": False, "clean": False}
    cfg = load_stress_config(None, ["strengths=[1.0]"])
    table = summary_markdown(summary, cfg)
    hidden_rows = [line for line in table.splitlines() if line.startswith("| hidden")]
    assert [line.rstrip(" |").endswith("**yes**") for line in hidden_rows] == [True]
    assert "Hidden shortcut" in table
