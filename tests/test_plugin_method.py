"""A training method defined in this file, and nowhere else, is usable from a YAML config, the stress test and
the benchmark: the registry is the only place that says which methods exist."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient
from pydantic import Field

from isnet.cli import main
from isnet.config import load_config
from isnet.config.registry import MethodParams, method_names
from isnet.data.phantom import generate_dataset
from isnet.evaluate.stress import StressTest, parse_method_spec
from isnet.evaluate.stress.config import load_stress_config
from isnet.methods import LossTerms, Method, build_methods, register, unregister

from conftest import FAST_TRAIN, make_toy_set


class SmoothingParams(MethodParams):
    smoothing: float = Field(0.1, ge=0, lt=1, description="weight of the uniform target")


class LabelSmoothing(Method):
    """Label smoothing as a loss term (a test plug-in)."""

    name = "smooth_labels"
    calls = 0

    def __init__(self, cfg):
        self.s = cfg.method.smooth_labels.smoothing

    def loss(self, ce, out, batch, trainer) -> LossTerms:
        type(self).calls += 1
        uniform = -F.log_softmax(out.logits.float(), 1).mean(1).mean()
        return LossTerms(ce_weight=1 - self.s, terms={"smooth": self.s * uniform}, metrics={"smoothing": self.s})


@pytest.fixture
def plugin():
    register("smooth_labels", params=SmoothingParams)(LabelSmoothing)
    LabelSmoothing.calls = 0
    yield LabelSmoothing
    unregister("smooth_labels")


def test_plugin_from_yaml_training_run(plugin, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    manifest = make_toy_set(tmp_path / "toy", n_per_class=4, size=32)
    yaml = tmp_path / "smooth.yaml"
    yaml.write_text("methods: [smooth_labels]\nmethod:\n  smooth_labels:\n    smoothing: 0.2\n"
                    "optim:\n  epochs: 1\ntracking:\n  experiment: plugin\n")
    cfg = load_config(yaml)
    assert cfg.method.smooth_labels.smoothing == 0.2 and "smooth_labels" in method_names()
    assert [type(m) for m in build_methods(cfg.methods, cfg)] == [LabelSmoothing]

    assert main(["train", "--config", str(yaml), "--manifest", str(manifest), *FAST_TRAIN]) == 0
    assert plugin.calls > 0
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db").search_runs(
        [MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db").get_experiment_by_name("plugin").experiment_id])[0]
    assert run.data.params["method.smooth_labels.smoothing"] == "0.2"
    assert run.data.metrics["train_loss_smooth"] > 0

    # the trained model explains like any other while the plug-in is installed; without it, a clear error
    assert main(["explain", "--run", run.info.run_id, "--manifest", str(manifest), "--out", "exp",
                 "--max-images", "2"]) == 0
    unregister("smooth_labels")
    capsys.readouterr()
    assert main(["explain", "--run", run.info.run_id, "--manifest", str(manifest), "--out", "exp2"]) == 2
    assert "install the plug-in methods it was trained with" in capsys.readouterr().err
    assert not Path("exp2").exists()
    register("smooth_labels", params=SmoothingParams)(LabelSmoothing)

    # its parameters are validated like every other block, with the key named
    yaml.write_text("methods: [smooth_labels]\nmethod:\n  smooth_labels:\n    smoothing: 2\n")
    assert main(["train", "--config", str(yaml), "--manifest", str(manifest), *FAST_TRAIN]) == 2
    yaml.write_text("methods: [smooth_labels, standard]\n")
    assert main(["train", "--config", str(yaml), "--manifest", str(manifest), *FAST_TRAIN]) == 2


def test_plugin_in_config_errors_once_unregistered(tmp_path):
    yaml = tmp_path / "c.yaml"
    yaml.write_text("methods: [smooth_labels]\n")
    with pytest.raises(Exception, match="unknown method 'smooth_labels'; registered methods: standard"):
        load_config(yaml)
    yaml.write_text("method:\n  smooth_labels: {smoothing: 0.1}\n")
    with pytest.raises(Exception, match="no method named 'smooth_labels' takes parameters"):
        load_config(yaml)


def test_plugin_in_stress_test_and_bench(plugin, tmp_path, monkeypatch):
    from isnet.bench.suites import train_step_suite

    monkeypatch.chdir(tmp_path)
    assert parse_method_spec("isnet+smooth_labels") == ["isnet", "smooth_labels"]
    phantom = generate_dataset(tmp_path / "ph", sites=1, per_class=6, seed=1, size=64)
    cfg = load_stress_config(None, [
        "train.data.image_size=64", "train.data.batch_size=16", "train.model.backbone=small_cnn",
        "train.model.width=4", "train.optim.epochs=1", "train.data.augment.enabled=false",
        "train.train.threads=1", "train.train.heatmap_every=0", "train.train.val_bg_share=false",
        "train.tracking.log_model=false", "heatmap_examples=0", "train.tracking.experiment=plugin_stress",
        "methods=[smooth_labels]", "strengths=[1.0]", "seeds=[0]", "out_dir=out",
        "train.method.smooth_labels.smoothing=0.3"])
    StressTest(cfg, phantom, log=lambda s: None).run()
    res = pd.read_csv("out/results.csv")
    assert set(res["method"]) == {"smooth_labels"} and plugin.calls > 0
    assert res.loc[res["metric"] == "accuracy", "value"].notna().all()

    torch.manual_seed(0)
    bench = train_step_suite(["small_cnn"], [32], 2, warmup=0, repeats=1, memory=None, threads=1,
                             cases=["smooth_labels"])
    rows = {r["case"]: r for r in bench["rows"]}
    assert set(rows) == {"standard", "smooth_labels"}, bench["errors"]
    assert rows["smooth_labels"]["median_s"] > 0 and rows["smooth_labels"]["time_ratio"] > 0
    assert Path("out/summary.md").is_file()
