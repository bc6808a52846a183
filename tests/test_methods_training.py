"""Every method, and ISNet + SGDrop, trains one short epoch on 64 px phantoms and logs its own metrics."""

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from isnet.tracking import store_uri

from isnet.config import load_config
from isnet.data.phantom import generate_dataset
from isnet.train.checkpoint import load_checkpoint
from isnet.train.run import train

CASES = {
    "sgdrop": (["method.sgdrop.ema=true"], ["train_sgdrop_drop_fraction", "train_sgdrop_threshold"]),
    "reldrop": (["method.reldrop.variant=block"], ["train_reldrop_fraction"]),
    "rrr": ([], ["train_rrr_penalty", "train_loss_rrr", "train_ce_weight"]),
    "masked_input": ([], ["train_masked_input_kept"]),
    "isnet,sgdrop": ([], ["train_L_bg", "train_sgdrop_drop_fraction", "train_loss_isnet", "train_ce_weight"]),
    "sgdrop/lrp": (["method.sgdrop.attribution=lrp"], ["train_sgdrop_drop_fraction"]),
    "reldrop/zennit": (["method.reldrop.engine=zennit", "method.reldrop.prob=1"], ["train_reldrop_fraction"]),
    "bg_swap": ([], ["train_bg_swap_swapped"]),
    "bg_swap/noise": (["method.bg_swap.source=noise", "method.bg_swap.prob=0.5"], ["train_bg_swap_swapped"]),
    "bg_consistency": ([], ["train_bg_consistency_kl", "train_loss_bg_consistency"]),
    "group_dro": ([], ["train_group_dro_worst_loss", "train_group_dro_max_q", "train_loss_group_dro"]),
    "isnet,bg_swap": ([], ["train_L_bg", "train_bg_swap_swapped"]),
}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("ph") / "ph", sites=2, per_class=6, seed=1, size=64)


@pytest.mark.parametrize("case", list(CASES))
def test_one_epoch(case, phantoms, tmp_path, monkeypatch):
    extra, keys = CASES[case]
    methods = case.split("/")[0]  # "sgdrop/lrp": the sgdrop method with an option
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, [
        f"methods=[{methods}]", "model.backbone=small_cnn", "model.width=4", "data.image_size=64",
        "data.batch_size=16", "optim.epochs=1", "tracking.log_model=false", "train.threads=2",
        "train.heatmap_every=0", "method.isnet.C1=0.05", "method.isnet.C2=5", *extra])
    result = train(cfg, phantoms, progress=False)
    run = MlflowClient(store_uri()).get_run(result.run_id)
    metrics = run.data.metrics
    for k in keys + ["test_accuracy"]:
        assert k in metrics and metrics[k] == metrics[k], k
    from isnet.methods import LOSS_RULE
    assert run.data.tags["loss.composition"] == LOSS_RULE  # the composition rule is logged with every run
    if methods == "isnet,sgdrop":  # ISNet's (1 − P) weighs the cross-entropy only
        assert metrics["train_ce_weight"] == pytest.approx(0.3)
    state = load_checkpoint(tmp_path / "checkpoints" / result.run_id / "last.pt")
    if case == "sgdrop":  # the EMA state travels with the checkpoint
        from isnet.methods import SGDropMethod
        fresh = SGDropMethod(cfg)
        fresh.load_state_dict(state["methods"]["sgdrop"])
        assert fresh.threshold is not None and fresh.threshold == state["methods"]["sgdrop"]["threshold"]
    if methods == "masked_input":  # the stored config makes test/explain mask their images too
        from isnet.config.schema import TrainConfig
        saved = TrainConfig.model_validate(state["config"])
        assert saved.data.input_mask is not None and saved.data.input_mask.dilation_px == 5
    if methods == "group_dro":  # the group weights travel with the checkpoint; (site, label) groups by default
        groups = state["methods"]["group_dro"]["groups"]
        assert {tuple(g) for g in groups} <= {(s, c) for s in ("site_a", "site_b", "site_c") for c in range(3)}
        assert len(groups) >= 3 and len(state["methods"]["group_dro"]["log_q"]) == len(groups)
    if case == "bg_swap":  # every training image got another's background (p = 1), unless paired with itself
        assert 0.5 < metrics["train_bg_swap_swapped"] <= 1.0
    if "sgdrop" in methods:
        assert 0 < metrics["train_sgdrop_drop_fraction"] <= 0.1 + 1e-6
    assert torch.isfinite(torch.tensor(metrics["train_loss"]))
