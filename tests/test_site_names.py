"""Site names are data: any text (MLflow refuses ``( ) ' # + , < >`` in metric names) must train, report
and keep its real name next to the escaped metric key. Run and experiment names given by the user are
checked before anything is written, or cleaned on the way to MLflow."""

from __future__ import annotations

import pytest

import json
import re
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.tracking import MlflowClient

from conftest import FAST_TRAIN, run_isnet

from isnet.tracking_names import is_valid_key, key_part, site_keys

SITE = "Hôpital (Nord)"


def _rename_site(manifest: Path, old: str, new: str, name: str) -> Path:
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df.loc[df["site"] == old, "site"] = new
    out = manifest.parent / name
    df.to_csv(out, index=False)
    return out


def _run_id(text: str) -> str:
    m = re.search(r"run ([0-9a-f]{32}) started", text)
    assert m, text
    return m.group(1)


def test_site_name_mlflow_refuses_trains_tests_and_reports(toy_manifest: Path, tmp_path: Path):
    m = _rename_site(toy_manifest, "site_1", SITE, "m.csv")
    v = run_isnet(["manifest", "validate", str(m)], tmp_path)
    assert v.returncode == 0 and "no problems found" in v.stdout
    assert f"'{SITE}' → {key_part(SITE)}" in v.stdout

    args = ["train", "--manifest", str(m), "--epochs", "1"] + FAST_TRAIN
    args[args.index("tracking.log_model=false")] = "tracking.log_model=true"
    r = run_isnet(args, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    run_id = _run_id(r.stdout)
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    client = MlflowClient(uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    key = key_part(SITE)
    assert key != SITE and is_valid_key(f"test_accuracy_{key}")
    assert f"test_accuracy_{key}" in run.data.metrics and "test_accuracy_site_0" in run.data.metrics
    assert "test_accuracy" in run.data.metrics
    assert run.data.tags[f"site.{key}"] == SITE  # the real name beside its key
    mapping = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="data/site_keys.json", tracking_uri=uri)).read_text(encoding="utf-8"))
    assert mapping["site_keys"] == {SITE: key, "site_0": "site_0"}
    assert "best.pt" in {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "checkpoints")}
    mlflow.set_tracking_uri(uri)
    assert mlflow.pytorch.load_model(f"runs:/{run_id}/model") is not None  # the model was logged

    rep = run_isnet(["report", "--runs", run_id, "--manifest", str(m), "--out", "rep/r.html", "--resamples", "10",
                     "--gallery", "1"], tmp_path)
    assert rep.returncode == 0, rep.stderr[-3000:]
    exp = client.get_experiment_by_name("reports")
    [rrun] = client.search_runs([exp.experiment_id])
    assert rrun.info.status == "FINISHED"
    assert f"{run_id[:8]}.{key}.macro_auc" in rrun.data.metrics
    assert rrun.data.tags[f"site.{key}"] == SITE
    assert SITE in json.loads((tmp_path / "rep" / "r.json").read_text())["sites"]


def test_site_keys_are_distinct_and_valid():
    names = ["site_a", "a (1)", "a [1]", "a/../b", "..", "#", "+,<>", "x" * 300, "", " ", "日本", "a\x00b"]
    keys = site_keys(names)
    assert keys["site_a"] == "site_a"  # plain names keep their metric names
    clash = site_keys(names + [keys["a (1)"]])  # a plain name equal to another name's key
    for ks, n in ((keys, len(names)), (clash, len(names) + 1)):
        assert len(set(ks.values())) == n
        for k in ks.values():
            assert is_valid_key(f"test_accuracy_{k}") and is_valid_key(f"site.{k}"), k


@pytest.mark.slow  # over 25 s on 2 cores; the default suite must stay under 15 minutes
def test_run_and_experiment_names_are_checked_or_kept_as_text(toy_manifest: Path, tmp_path: Path):
    bad = run_isnet(["train", "--manifest", str(toy_manifest), "--run-name", "a\x01b"] + FAST_TRAIN, tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert "tracking.run_name" in bad.stderr and "control character" in bad.stderr
    long = run_isnet(["train", "--manifest", str(toy_manifest), "--experiment", "e" * 300] + FAST_TRAIN, tmp_path)
    assert long.returncode == 2 and "tracking.experiment" in long.stderr and "at most 256" in long.stderr
    assert not (tmp_path / "mlflow").exists()
    # text that YAML would read as a comment, a number or a list is still the name the user typed
    r = run_isnet(["train", "--manifest", str(toy_manifest), "--epochs", "1", "--run-name", "#1 (Nord), <b>",
                   "--experiment", "[exp] 2024"] + FAST_TRAIN, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    exp = client.get_experiment_by_name("[exp] 2024")
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "#1 (Nord), <b>"
