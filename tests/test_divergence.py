"""A loss that becomes NaN stops training with a clear message and keeps the last good checkpoint."""

import torch

from isnet.config import load_config
import pytest

from isnet.methods.base import LossTerms, Method, register, unregister
from isnet.train.checkpoint import load_checkpoint
from isnet.train.run import train
from isnet.train.trainer import TrainingDiverged


class _NanAfterFirstEpoch(Method):
    """Test-only method: adds NaN to the loss from the second epoch on."""

    name = "nan_after_first_epoch"

    def __init__(self, cfg):
        self.epoch = 0

    def on_epoch_start(self, epoch, trainer):
        self.epoch = epoch

    def loss(self, ce, out, batch, trainer):
        return LossTerms(terms={"nan": ce * float("nan")}) if self.epoch >= 2 else LossTerms()


@pytest.fixture
def nan_method():
    register("nan_after_first_epoch")(_NanAfterFirstEpoch)
    yield
    unregister("nan_after_first_epoch")  # keep the test-only method out of other tests (e.g. bench rows)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(toy_manifest, tmp_path, monkeypatch, nan_method):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["model.backbone=small_cnn", "model.width=4", "data.image_size=32",
                             "optim.epochs=3", "tracking.log_model=false", "train.threads=1"])
    cfg = cfg.model_copy(update={"methods": ["nan_after_first_epoch"]})
    try:
        train(cfg, toy_manifest, progress=False)
    except TrainingDiverged as exc:
        message = str(exc)
    else:  # pragma: no cover - the test must fail if no error is raised
        raise AssertionError("training did not stop on a NaN loss")
    assert "loss became nan at epoch 2" in message and "last good checkpoint" in message
    ckpts = list((tmp_path / "checkpoints").glob("*/last.pt"))
    assert len(ckpts) == 1
    state = load_checkpoint(ckpts[0])
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
