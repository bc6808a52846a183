"""Tracking faults: a real ``mlflow server`` (trained against, killed mid-run, restarted, synced), two runs
started at once into one SQLite store, and the Tracker's buffer/flush and lock-retry logic."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import requests
from mlflow.tracking import MlflowClient

from conftest import FAST_TRAIN, run_isnet

import isnet.tracking as tracking
from isnet.tracking import Tracker, flush_buffer, read_buffer, with_lock_retry


# -- a real server ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``mlflow server`` on 127.0.0.1:``port`` (its own process group) with its store in ``root``: SQLite and
    artifacts written by the clients by default; ``backend`` (e.g. a PostgreSQL URI) and ``serve_artifacts``
    (artifacts sent through the server) for a team's setup."""

    def __init__(self, root: Path, port: int, backend: str = "sqlite:///mlflow/server.db",
                 serve_artifacts: bool = False):
        self.root, self.port, self.proc = root, port, None
        self.backend, self.serve_artifacts = backend, serve_artifacts
        self.uri = f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 120) -> "Server":
        (self.root / "mlflow").mkdir(parents=True, exist_ok=True)
        log = open(self.root / "server.log", "a")
        artifacts = (["--serve-artifacts", "--artifacts-destination", "./mlflow/server-artifacts"]
                     if self.serve_artifacts else ["--default-artifact-root", "./mlflow/server-artifacts"])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend, *artifacts,
             "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            cwd=self.root, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, "OMP_NUM_THREADS": "1"})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path, _free_port())
    yield s
    s.stop()


def _runs(uri: str, experiment: str = "isnet"):
    client = MlflowClient(uri)
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


@pytest.mark.slow  # over 25 s on 2 cores; the default suite must stay under 15 minutes
def test_train_against_a_real_mlflow_server(toy_manifest, tmp_path, server):
    server.start()
    r = run_isnet(["train", "--manifest", str(toy_manifest), "--epochs", "2", *FAST_TRAIN], tmp_path,
                  env={"MLFLOW_TRACKING_URI": server.uri})
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "mlflow" / "mlflow.db").exists()  # nothing went to the local default store
    client, runs = _runs(server.uri)
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    assert run.data.params["optim.epochs"] == "2"
    assert "test_accuracy" in run.data.metrics
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"checkpoints", "config", "data"}


@pytest.mark.slow
def test_server_outage_mid_run_buffers_and_sync_loses_nothing(toy_manifest, tmp_path, server):
    """Kill the server after epoch 1: training finishes, says so once, buffers; restart on the same store
    and ``isnet tracking sync``: every epoch's metrics and the final status are in the run."""
    server.start()
    stdout, _ = _outage_during(["train", "--manifest", str(toy_manifest), "--epochs", "4", *FAST_TRAIN],
                               "epoch 1/4", server, tmp_path)  # also: said once
    assert "epoch 4/4" in stdout and "finished run" in stdout
    [ckpt] = list((tmp_path / "checkpoints").iterdir())
    buffer = ckpt / tracking.BUFFER_NAME
    ops = [r["op"] for r in read_buffer(buffer)]
    assert ops.count("metrics") >= 3 and ops[-1] == "terminate"

    server.start()  # same store
    r = run_isnet(["tracking", "sync"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "records sent" in r.stdout and not buffer.exists()
    client, [run] = _runs(server.uri)
    assert run.info.run_id == ckpt.name and run.info.status == "FINISHED"
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2, 3, 4], key
    assert "test_accuracy" in run.data.metrics
    assert "best.pt" in {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert run_isnet(["tracking", "sync"], tmp_path).stdout.startswith("nothing to send")


# -- two runs at once into one SQLite store -----------------------------------------------------------
def test_two_runs_started_at_once_into_one_sqlite_store(toy_manifest, tmp_path):
    e = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    e.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    procs = [subprocess.Popen([sys.executable, "-m", "isnet", "train", "--manifest", str(toy_manifest),
                               "--epochs", "2", *FAST_TRAIN, "--seed", str(seed), "--run-name", f"run{seed}"],
                              cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for seed in (1, 2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    client, runs = _runs(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    assert sorted(r.info.run_name for r in runs) == ["run1", "run2"]
    assert all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
        assert r.data.params["train.seed"] == r.info.run_name[-1]
        assert (tmp_path / "checkpoints" / r.info.run_id / "last.pt").is_file()
    losses = [client.get_metric_history(r.info.run_id, "train_loss")[0].value for r in runs]
    assert losses[0] != losses[1]  # each run logged its own metrics


# -- the Tracker's logic, in process --------------------------------------------------------------------
def _down(*_a, **_k):
    raise requests.exceptions.ConnectionError("connection refused")


def test_tracker_buffers_while_unreachable_and_flushes_in_order(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/store.db"
    t = Tracker("buf", uri)
    run_id = t.start(run_name="r")
    t.buffer_path = tmp_path / "ck" / tracking.BUFFER_NAME
    t.log_metrics({"a": 1.0}, step=1)
    real = tracking.send_record
    monkeypatch.setattr(tracking.buffer, "send_record", _down)
    t.log_metrics({"a": 2.0}, step=2)
    t.log_metrics({"a": 3.0}, step=3)
    (tmp_path / "f.txt").write_text("x")
    t.log_artifact(tmp_path / "f.txt", "files")
    (tmp_path / "f.txt").unlink()  # a temporary file: the buffer kept a copy
    # the Tracker's logged warnings (on stderr in the isnet command)
    err = "\n".join(r.getMessage() for r in caplog.records
                    if r.name.startswith("isnet.") and r.levelno == logging.WARNING)
    assert err.count("unreachable") == 1
    assert [r["op"] for r in read_buffer(t.buffer_path)] == ["metrics", "metrics", "artifact"]
    monkeypatch.setattr(tracking.buffer, "send_record", real)  # the server is back
    t.log_metrics({"a": 4.0}, step=4)  # before the retry time: queued behind the buffer
    assert t._buffered and len(read_buffer(t.buffer_path)) == 4
    t._retry_at = 0.0
    t.log_metrics({"a": 5.0}, step=5)  # retry time passed: the buffer goes first, then this one
    t.end("FINISHED")
    assert not t.buffer_path.exists()
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "a")] == [(i, float(i)) for i in range(1, 6)]
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run_id, "files")] == ["files/f.txt"]


def test_flush_buffer_keeps_what_was_not_sent(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/store.db"
    t = Tracker("buf", uri)
    run_id = t.start()
    t.end()
    buf = tmp_path / "b.jsonl"
    import json

    buf.write_text("".join(json.dumps({"op": "metrics", "run_id": run_id, "uri": uri, "timestamp": 1000 + i,
                                       "step": i, "metrics": {"m": float(i)}}) + "\n" for i in range(3))
                   + '{"op": "metr')  # a line cut by a crash
    real, calls = tracking.send_record, []

    def flaky(client, rec):
        calls.append(rec["step"])
        if len(calls) == 2:
            _down()
        real(client, rec)

    monkeypatch.setattr(tracking.buffer, "send_record", flaky)
    with pytest.raises(requests.exceptions.ConnectionError):
        flush_buffer(buf)
    assert [r["step"] for r in read_buffer(buf)] == [1, 2]
    assert flush_buffer(buf) == (2, 0) and not buf.exists()
    steps = [m.step for m in MlflowClient(uri).get_metric_history(run_id, "m")]
    assert steps == [0, 1, 2]  # each exactly once


def test_unreachable_server_at_start_is_a_user_error(tmp_path):
    from isnet.errors import UserError

    with pytest.raises(UserError, match="unreachable"):
        Tracker("x", f"http://127.0.0.1:{_free_port()}").start()


def test_lock_retry_backs_off_on_locked_store_only():
    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert with_lock_retry(locked_twice) == "ok" and len(calls) == 3
    with pytest.raises(ValueError):
        with_lock_retry(lambda: (_ for _ in ()).throw(ValueError("other")))


# -- every command that writes to MLflow survives an outage --------------------------------------------
# train: test_server_outage_mid_run_buffers_and_sync_loses_nothing above (and test_tracking_postgres.py);
# segmenter train, report and stress-test below. `isnet explain` and `isnet segmenter predict` only read a
# run's best checkpoint (the local copy first, else the MLflow artifact) and write no MLflow record, so an
# outage cannot lose anything of theirs: without a local checkpoint they stop with one line naming the run
# (test_reading_commands_say_so_when_the_server_is_down). `isnet manifest`, `phantom` and `bench` write none.
def _outage_during(args: list[str], trigger: str, server: Server, cwd: Path, runs: int = 1) -> tuple[str, str]:
    """Run ``isnet ARGS`` against ``server``; stop the server when a stdout line starts with ``trigger``;
    the command must still succeed, saying once per run it writes (``runs``) that the server is
    unreachable. Returns (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update({"MLFLOW_TRACKING_URI": server.uri, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen([sys.executable, "-m", "isnet", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, stopped = [], False
    for line in proc.stdout:
        out.append(line)
        if line.startswith(trigger) and not stopped:
            server.stop()
            stopped = True
    stderr = proc.stderr.read()
    assert proc.wait(timeout=600) == 0, stderr[-3000:]
    assert stopped, "".join(out)
    assert stderr.count("unreachable (") == runs, stderr[-3000:]
    return "".join(out), stderr


def _restart_and_sync(server: Server, cwd: Path) -> None:
    server.start()
    r = run_isnet(["tracking", "sync"], cwd)
    assert r.returncode == 0 and "records sent" in r.stdout, r.stdout + r.stderr
    assert run_isnet(["tracking", "sync"], cwd).stdout.startswith("nothing to send")


def _each_step_once(client: MlflowClient, run_id: str) -> None:
    for key in client.get_run(run_id).data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)


@pytest.mark.slow
def test_segmenter_train_outage_loses_nothing(toy_manifest, tmp_path, server):
    server.start()
    _outage_during(["segmenter", "train", "--manifest", str(toy_manifest), "--image-size", "32", "--epochs", "3",
                    "--batch-size", "8", "--threads", "1", "--set", "decoder_channels=[16,16,8,8,8]"],
                   "epoch 1/3", server, tmp_path)
    _restart_and_sync(server, tmp_path)
    client, [run] = _runs(server.uri, "isnet-segmenter")
    assert run.info.status == "FINISHED"
    _each_step_once(client, run.info.run_id)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_dice")] == [1, 2, 3]
    assert "best_val_dice" in run.data.metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == ["checkpoints/best.pt"]


@pytest.mark.slow
def test_report_outage_loses_nothing(toy_manifest, tmp_path, server):
    server.start()
    r = run_isnet(["train", "--manifest", str(toy_manifest), "--epochs", "1", *FAST_TRAIN], tmp_path,
                  env={"MLFLOW_TRACKING_URI": server.uri})
    assert r.returncode == 0, r.stderr[-3000:]
    _, [trained] = _runs(server.uri)
    out, _ = _outage_during(["report", "--runs", trained.info.run_id, "--manifest", str(toy_manifest), "--out",
                             "rep/r.html", "--resamples", "10", "--gallery", "1"], "scoring run", server, tmp_path)
    assert (tmp_path / "rep" / "r.html").is_file() and (tmp_path / "rep" / "r.json").is_file()
    _restart_and_sync(server, tmp_path)
    client, [rep] = _runs(server.uri, "reports")
    assert rep.info.status == "FINISHED" and rep.info.run_id in out
    _each_step_once(client, rep.info.run_id)
    assert f"{trained.info.run_id[:8]}.overall.macro_auc" in rep.data.metrics
    assert {a.path for a in client.list_artifacts(rep.info.run_id, "report")} == {"report/r.html", "report/r.json"}
    assert rep.data.params["runs"] == trained.info.run_id


@pytest.mark.slow
def test_stress_test_outage_loses_nothing(tmp_path, server):
    from isnet.data.phantom import generate_dataset

    phantom = generate_dataset(tmp_path / "ph", sites=1, per_class=12, seed=1, size=64)
    tiny = ["train.data.image_size=64", "train.data.batch_size=16", "train.model.backbone=small_cnn",
            "train.model.width=4", "train.optim.epochs=2", "train.data.augment.enabled=false",
            "train.train.threads=1", "train.train.heatmap_every=0", "train.train.val_bg_share=false",
            "train.tracking.log_model=false", "heatmap_examples=2", "train.tracking.experiment=stress_outage"]
    server.start()
    _outage_during(["stress-test", "--manifest", str(phantom), "--methods", "standard", "--strength", "1.0",
                    "--seeds", "0", "--out", "out", "--no-progress", *[a for t in tiny for a in ("--set", t)]],
                   "epoch 1/2", server, tmp_path, runs=2)  # the cell's run, then the parent run
    assert (tmp_path / "out" / "results.csv").is_file()
    _restart_and_sync(server, tmp_path)
    client, runs = _runs(server.uri, "stress_outage")
    [parent] = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    [child] = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    for r in (parent, child):
        _each_step_once(client, r.info.run_id)
    assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [1, 2]
    assert child.data.tags["stress.evaluated"] == "1" and "stress.drop.accuracy" in child.data.metrics
    assert "stress/results.csv" in {a.path for a in client.list_artifacts(parent.info.run_id, "stress")}


def test_reading_commands_say_so_when_the_server_is_down(toy_manifest, tmp_path):
    down = f"http://127.0.0.1:{_free_port()}"
    for args in (["explain", "--run", "0" * 32, "--manifest", str(toy_manifest), "--out", "x"],
                 ["segmenter", "predict", "--run", "0" * 32, "--manifest", str(toy_manifest), "--out", "y.csv"]):
        r = run_isnet(args, tmp_path, env={"MLFLOW_TRACKING_URI": down})
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert r.stderr.startswith(f"isnet: error: run {'0' * 32}: no checkpoint at ")
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow").exists()
