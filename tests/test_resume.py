"""``--resume`` keeps MLflow exact: a finished run is left alone, a re-run epoch (after a kill or a checkpoint
fallback) is not recorded twice, and a damaged checkpoint is never resumed from silently."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from conftest import FAST_TRAIN, run_isnet
from test_checkpoint_faults import _flip_tensor_byte


def _run_id(text: str) -> str:
    m = re.search(r"run ([0-9a-f]{32}) started", text)
    assert m, text
    return m.group(1)


def _killed_after(epoch: int, manifest: Path, cwd: Path, epochs: int = 3) -> str:
    """Start a run and SIGKILL it right after it reports epoch ``epoch`` (checkpoint written)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "isnet", "train", "--manifest", str(manifest), "--epochs",
                             str(epochs), *FAST_TRAIN], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out, run_id, deadline = "", None, time.time() + 240
    while time.time() < deadline:
        line = proc.stdout.readline()
        out += line
        if run_id is None and " started;" in line:
            run_id = _run_id(line)
        if line.startswith(f"epoch {epoch}/") or not line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=30)
    assert run_id and proc.returncode == -signal.SIGKILL, out
    return run_id


def _each_step_once(client: MlflowClient, run_id: str) -> dict[str, list[int]]:
    run = client.get_run(run_id)
    steps = {k: sorted(m.step for m in client.get_metric_history(run_id, k)) for k in run.data.metrics}
    for k, s in steps.items():
        assert len(s) == len(set(s)), f"{k} logged more than once per step: {s}"
    return steps


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_resume_of_a_finished_run_says_so_and_writes_nothing(toy_manifest: Path, tmp_path: Path):
    base = ["train", "--manifest", str(toy_manifest), "--epochs", "1"] + FAST_TRAIN
    first = run_isnet(base, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = _run_id(first.stdout)
    before = _snapshot(tmp_path / "mlflow") | _snapshot(tmp_path / "checkpoints")
    again = run_isnet(base + ["--resume", run_id], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run {run_id} had already finished" in again.stdout and "nothing to do" in again.stdout
    assert _snapshot(tmp_path / "mlflow") | _snapshot(tmp_path / "checkpoints") == before
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    steps = _each_step_once(client, run_id)
    assert steps["test_accuracy"] == [0] and steps["epochs_run"] == [0] and steps["val_loss"] == [1]


def test_checkpoint_fallback_rerun_records_each_metric_step_once(toy_manifest: Path, tmp_path: Path):
    """last.pt damaged after epoch 2: resume falls back to last.prev.pt (epoch 1) and trains epoch 2 again;
    MLflow keeps one record per (metric, step), and the run ends with every epoch and its test metrics."""
    run_id = _killed_after(2, toy_manifest, tmp_path)
    ckpt = tmp_path / "checkpoints" / run_id
    assert (ckpt / "last.prev.pt").is_file()
    _flip_tensor_byte(ckpt / "last.pt")
    r = run_isnet(["train", "--manifest", str(toy_manifest), "--resume", run_id] + FAST_TRAIN, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "using the previous checkpoint" in r.stderr and "resuming run" in r.stdout
    assert "epoch 2/3" in r.stdout and "epoch 3/3" in r.stdout
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    assert client.get_run(run_id).info.status == "FINISHED"
    steps = _each_step_once(client, run_id)
    for key in ("train_loss", "val_loss", "val_accuracy", "lr"):
        assert steps[key] == [1, 2, 3], key
    assert steps["test_accuracy"] == [0] and steps["best_epoch"] == [0]


def test_damaged_checkpoint_without_its_sidecar_is_not_resumed(toy_manifest: Path, tmp_path: Path):
    run_id = _killed_after(1, toy_manifest, tmp_path)
    ckpt = tmp_path / "checkpoints" / run_id
    assert not (ckpt / "last.prev.pt").exists()
    _flip_tensor_byte(ckpt / "last.pt")
    (ckpt / "last.pt.sha256").unlink()
    r = run_isnet(["train", "--manifest", str(toy_manifest), "--resume", run_id] + FAST_TRAIN, tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith(f"isnet: error: cannot resume run {run_id}: checkpoint ")
    assert "last.pt is damaged" in r.stderr
