"""Training end to end through the CLI: MLflow run contents, checkpoints, and resume after SIGKILL."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from isnet.train.checkpoint import load_checkpoint

from conftest import FAST_TRAIN, make_toy_set, run_isnet


def _run_id(text: str) -> str:
    m = re.search(r"run ([0-9a-f]{32}) started", text)
    assert m, text
    return m.group(1)


def test_train_logs_everything_to_mlflow(toy_manifest: Path, tmp_path: Path):
    args = ["train", "--manifest", str(toy_manifest), "--epochs", "2"] + FAST_TRAIN
    args[args.index("tracking.log_model=false")] = "tracking.log_model=true"
    proc = run_isnet(args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    run_id = _run_id(proc.stdout)
    assert "mlflow ui --backend-store-uri sqlite:///mlflow/mlflow.db" in proc.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["optim.epochs"] == "2" and run.data.params["model.backbone"] == "small_cnn"
    assert len(run.data.tags["manifest_sha256"]) == 64
    assert run.data.tags["version.torch"] and run.data.tags["git_commit"]
    for key in ("train_loss", "val_loss", "val_accuracy", "test_accuracy", "test_macro_auc"):
        assert key in run.data.metrics, key
    assert len(client.get_metric_history(run_id, "val_loss")) == 2
    top = {a.path for a in client.list_artifacts(run_id)}
    assert {"config", "checkpoints", "data"} <= top
    best = load_checkpoint(tmp_path / "checkpoints" / run_id / "best.pt")
    assert best["classes"] == ["normal", "covid", "tb"] and "model" in best
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    model = mlflow.pytorch.load_model(f"runs:/{run_id}/model")
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


def _final_weights(ckpt_dir: Path) -> dict:
    return load_checkpoint(ckpt_dir / "last.pt")["model"]


@pytest.mark.slow  # over 25 s on 2 cores; the default suite must stay under 15 minutes
def test_resume_after_sigkill_reaches_the_last_epoch_with_identical_weights(tmp_path: Path):
    manifest = make_toy_set(tmp_path / "data", n_per_class=60, size=64)
    epochs = "6"
    base = ["train", "--manifest", str(manifest), "--epochs", epochs] + FAST_TRAIN + ["--image-size", "64"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "isnet", *base], cwd=killed_dir, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = ""
    run_id = None
    deadline = time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        out += line
        if run_id is None and "started" in line:
            run_id = _run_id(line)
        if line.startswith("epoch 2/"):  # epoch 3 has just begun
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert run_id and proc.returncode == -signal.SIGKILL, out
    ckpt = killed_dir / "checkpoints" / run_id
    assert 2 <= load_checkpoint(ckpt / "last.pt")["epoch"] < int(epochs)

    resumed = run_isnet(base + ["--resume", run_id], killed_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming run" in resumed.stdout and f"epoch {epochs}/{epochs}" in resumed.stdout
    assert f"{epochs} epochs" in resumed.stdout
    assert load_checkpoint(ckpt / "last.pt")["epoch"] == int(epochs)
    client = MlflowClient(f"sqlite:///{killed_dir}/mlflow/mlflow.db")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {int(m.step) for m in client.get_metric_history(run_id, "val_loss")} == set(range(1, int(epochs) + 1))

    clean_dir = tmp_path / "clean"
    clean_dir.mkdir()
    clean = run_isnet(base, clean_dir)
    assert clean.returncode == 0, clean.stderr
    clean_id = _run_id(clean.stdout)
    a = _final_weights(ckpt)
    b = _final_weights(clean_dir / "checkpoints" / clean_id)
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ after resume: {k}"


@pytest.mark.slow  # two CLI training runs; the default suite must stay under 15 minutes on 2 cores
def test_runs_without_a_name_get_different_names_and_identical_results(toy_manifest: Path, tmp_path: Path):
    """The run name MLflow draws must not come from the seeded state; the results must not depend on it."""
    args = ["train", "--manifest", str(toy_manifest), "--epochs", "1"] + FAST_TRAIN
    ids = []
    for _ in range(2):
        r = run_isnet(args, tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        ids.append(_run_id(r.stdout))
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    runs = [client.get_run(i) for i in ids]
    assert runs[0].info.run_name != runs[1].info.run_name
    for key in ("train_loss", "val_loss", "test_accuracy"):
        assert runs[0].data.metrics[key] == runs[1].data.metrics[key], key
