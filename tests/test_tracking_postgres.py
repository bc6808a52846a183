"""A real PostgreSQL tracking backend: ``mlflow server`` on a PostgreSQL database (started from Python by the
``pgserver`` package, no system install), artifacts served by the server. Training is pointed at it, the
server is killed mid-run and restarted, and nothing is lost: every (metric, step) once, the final status,
the artifacts, Unicode site and run names.

Needs the ``postgres`` extra (``pip install -e .[postgres]``: pgserver, psycopg2-binary); skipped only when
those are not installed or PostgreSQL cannot start here."""

from __future__ import annotations


import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import FAST_TRAIN, run_isnet
from test_tracking_faults import Server, _free_port, _outage_during

import isnet.tracking as tracking
from isnet.tracking import read_buffer
from isnet.tracking_names import key_part

SITE = "Hôpital (Nord)"
RUN_NAME = "Hôpital (Nord) — nuit #1"


@pytest.fixture
def postgres(tmp_path):
    """A PostgreSQL server in ``tmp_path`` and the URI of an empty database ``mlflow`` on it."""
    pgserver = pytest.importorskip("pgserver", reason="the postgres extra is not installed")
    pytest.importorskip("psycopg2", reason="the postgres extra is not installed")
    try:
        srv = pgserver.get_server(tmp_path / "pgdata", cleanup_mode="stop")
        srv.psql("CREATE DATABASE mlflow;")
    except Exception as exc:  # no shared memory, no user to run it as, ...
        pytest.skip(f"PostgreSQL cannot start here: {type(exc).__name__}: {str(exc)[:300]}")
    try:  # the driver named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, the extra has psycopg2
        yield srv.get_uri("mlflow").replace("postgresql://", "postgresql+psycopg2://", 1)
    finally:
        srv.cleanup()


@pytest.fixture
def pg_server(tmp_path, postgres):
    s = Server(tmp_path / "server", _free_port(), backend=postgres, serve_artifacts=True)
    yield s
    s.stop()


@pytest.mark.slow
def test_postgres_backend_outage_mid_run_loses_nothing(toy_manifest, tmp_path, pg_server):
    df = pd.read_csv(toy_manifest, dtype=str, keep_default_na=False)
    df.loc[df["site"] == "site_1", "site"] = SITE
    manifest = toy_manifest.parent / "m.csv"
    df.to_csv(manifest, index=False)
    pg_server.start(timeout=300)  # the first start creates MLflow's tables in PostgreSQL
    stdout, _ = _outage_during(["train", "--manifest", str(manifest), "--epochs", "4", "--run-name", RUN_NAME,
                                *FAST_TRAIN], "epoch 1/4", pg_server, tmp_path)  # also: said once
    assert "epoch 4/4" in stdout
    [ckpt] = list((tmp_path / "checkpoints").iterdir())
    buffer = ckpt / tracking.BUFFER_NAME
    assert [r["op"] for r in read_buffer(buffer)][-1] == "terminate"

    pg_server.start(timeout=300)  # same database
    r = run_isnet(["tracking", "sync"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "records sent" in r.stdout and not buffer.exists()

    client = MlflowClient(pg_server.uri)
    [run] = client.search_runs([client.get_experiment_by_name("isnet").experiment_id])
    run_id = run.info.run_id
    assert run_id == ckpt.name and run.info.status == "FINISHED" and run.info.run_name == RUN_NAME
    for key in run.data.metrics:
        steps = [m.step for m in client.get_metric_history(run_id, key)]
        assert len(steps) == len(set(steps)), (key, steps)
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [1, 2, 3, 4], key
    assert {"test_accuracy", f"test_accuracy_{key_part(SITE)}", "best_epoch"} <= set(run.data.metrics)
    assert run.data.tags[f"site.{key_part(SITE)}"] == SITE and run.data.params["optim.epochs"] == "4"
    names = {a.path for a in client.list_artifacts(run_id, "checkpoints")} | \
        {a.path for a in client.list_artifacts(run_id, "data")}
    assert {"checkpoints/best.pt", "data/splits.csv", "data/site_keys.json"} <= names
    # the artifacts went through the server into its own folder, not to a path of the client's
    assert list((pg_server.root / "mlflow" / "server-artifacts").rglob("best.pt"))
    assert run_isnet(["tracking", "sync"], tmp_path).stdout.startswith("nothing to send")
