"""`isnet bench --suite convergence` and the ISNet recipes it compares: time to the standard model's accuracy is
counted from the run's start (warm-up included), and each recipe fills exactly the keys a config leaves unset."""
from __future__ import annotations

import json

import pytest
from conftest import REPO, make_toy_set, run_isnet

from isnet.bench.convergence import _with_targets, run_config, time_to_target
from isnet.bench.report import convergence_targets
from isnet.config.load import config_to_dict, load_config, validate_config
from isnet.errors import ConfigError
from isnet.methods.isnet import RECIPES

PIPELINE = REPO / "pipelines" / "isnet_covid_tb.yaml"


def _curve(accs, seconds=10.0):
    return [{"epoch": i + 1, "val_accuracy": a, "epoch_seconds": seconds} for i, a in enumerate(accs)]


def test_time_to_target_counts_warmup_and_every_epoch_until_first_reach() -> None:
    curve = _curve([0.5, 0.9, 0.7, 0.95])
    assert time_to_target(curve, 0.9) == (2, 20.0)
    assert time_to_target(curve, 0.9, start_seconds=7.0, extra_epochs=3) == (5, 27.0)
    assert time_to_target(curve, 0.96) == (None, None)
    assert time_to_target(curve, 0.9, from_epoch=3) == (4, 40.0)  # epoch 2 reached it before it counted


def test_targets_and_ratios_are_relative_to_the_standard_run_of_the_group() -> None:
    def row(run, accs, seconds, start=0.0, warm=0, test=0.9):
        return {"run": run, "curve": _curve(accs, seconds), "start_seconds": start, "warmup_epochs": warm,
                "best_val_accuracy": max(accs), "total_seconds": start + seconds * len(accs), "test_accuracy": test,
                "backbone": "b", "seed": 0, "val_bg_share": 0.02}
    group = _with_targets([row("standard", [0.6, 0.92, 1.0], 5.0, test=0.95),
                           row("warm_start", [0.7, 0.99, 0.99], 10.0, start=20.0, warm=2, test=0.94),
                           row("published", [0.5, 0.6, 0.7], 20.0, test=0.7)], tolerance=0.02)
    std, ws, pub = group
    assert std["target_val_accuracy"] == pytest.approx(0.98)
    assert (std["epochs_to_target"], std["seconds_to_target"], std["seconds_ratio"]) == (3, 15.0, 1.0)
    assert (ws["epochs_to_target"], ws["seconds_to_target"]) == (4, 40.0)  # 2 warm-up + 2 epochs; 20 s + 2 x 10 s
    assert ws["seconds_ratio"] == pytest.approx(40 / 15) and ws["total_seconds_ratio"] == pytest.approx(50 / 15)
    assert ws["test_accuracy_gap"] == pytest.approx(-0.01)
    assert pub["epochs_to_target"] is None and pub["seconds_ratio"] is None
    met = {(t["where"].split()[-1], t["target"].split()[0]): t["met"] for t in convergence_targets(group)}
    assert met[("warm_start", "time")] is True and met[("warm_start", "test")] is True
    assert met[("published", "time")] is False and met[("published", "test")] is False


def test_published_recipe_is_the_reference_and_warm_start_fills_only_unset_keys() -> None:
    assert RECIPES["published"] == {}
    pub = load_config(PIPELINE, ["method.isnet.recipe=published", "optim.epochs=12"]).method.isnet
    assert (pub.variant, pub.init_from_warmup, pub.warmup_epochs, pub.P) == ("original", False, 5, 0.7)
    ws = load_config(PIPELINE, ["method.isnet.recipe=warm_start", "optim.epochs=12"]).method.isnet
    assert (ws.variant, ws.init_from_warmup, ws.warmup_epochs, ws.P) == ("selective", True, 4, 0.5)  # a third of 12
    own = load_config(PIPELINE, ["method.isnet.recipe=warm_start", "optim.epochs=12",
                                 "method.isnet.warmup_epochs=2", "method.isnet.variant=original"]).method.isnet
    assert (own.variant, own.init_from_warmup, own.warmup_epochs) == ("original", True, 2)
    # the logged (resolved) config validates to the same values, e.g. on --resume
    again = validate_config(config_to_dict(load_config(PIPELINE, ["optim.epochs=30"])), "logged").method.isnet
    assert again.warmup_epochs == 10 and again.recipe == load_config(PIPELINE).method.isnet.recipe


def test_unknown_recipe_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="recipe"):
        load_config(PIPELINE, ["method.isnet.recipe=fastest"])


def test_bench_run_config_sets_the_recipe_and_turns_per_epoch_diagnostics_off() -> None:
    cfg = run_config(PIPELINE, "warm_start", backbone="small_cnn", size=32, seed=3, epochs=6)
    assert cfg.methods == ["isnet"] and cfg.method.isnet.recipe == "warm_start"
    assert (cfg.train.seed, cfg.data.image_size, cfg.optim.epochs, cfg.train.val_bg_share) == (3, 32, 6, False)
    assert run_config(PIPELINE, "standard", backbone="small_cnn", size=32, seed=0, epochs=6).methods == ["standard"]
    combo = run_config(PIPELINE, "warm_start+bg_swap", backbone="small_cnn", size=32, seed=0, epochs=6)
    assert combo.methods == ["isnet", "bg_swap"] and combo.method.isnet.recipe == "warm_start"


def test_bench_convergence_cli_trains_standard_and_each_recipe_side_by_side(tmp_path) -> None:
    manifest = make_toy_set(tmp_path / "toy", n_per_class=6, size=32)
    out = tmp_path / "conv.json"
    res = run_isnet(["bench", "--suite", "convergence", "--manifest", str(manifest), "--config", str(PIPELINE),
                     "--backbones", "small_cnn", "--sizes", "32", "--seeds", "0", "--epochs", "2,warm_start=3",
                     "--set", "model.width=4", "--set", "data.batch_size=8", "--threads", "1",
                     "--out", str(out)], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Time to accuracy" in res.stdout
    rows = json.loads(out.read_text())["convergence"]["rows"]
    assert [r["run"] for r in rows] == ["standard", *RECIPES]
    by = {r["run"]: r for r in rows}
    assert by["standard"]["seconds_ratio"] == 1.0 and by["standard"]["warmup_epochs"] == 0
    assert len(by["standard"]["curve"]) == 2 and len(by["warm_start"]["curve"]) == 3
    assert by["warm_start"]["warmup_epochs"] == 1 and by["warm_start"]["start_seconds"] > 0
    assert by["published"]["warmup_epochs"] == 5
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["val_bg_share"] <= 1
        assert r["total_seconds"] >= sum(c["epoch_seconds"] for c in r["curve"])


def test_bench_convergence_needs_a_manifest(tmp_path) -> None:
    res = run_isnet(["bench", "--suite", "convergence"], cwd=tmp_path)
    assert res.returncode == 2 and "--manifest" in res.stderr and "Traceback" not in res.stderr
