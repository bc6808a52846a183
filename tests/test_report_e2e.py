"""``isnet report`` end to end: two tiny runs trained on one phantom site, reported on the other site, a
site with one class and an empty site; HTML, JSON and the MLflow report run are checked."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from conftest import run_isnet

from isnet.config import load_config
from isnet.train.run import train

TRAIN = ["model.backbone=small_cnn", "model.width=4", "data.image_size=64", "data.batch_size=8", "optim.epochs=2",
         "tracking.log_model=false", "train.threads=1", "train.heatmap_every=0", "train.device=cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from isnet.data.phantom import generate_dataset

    root = tmp_path_factory.mktemp("report")
    manifest = generate_dataset(root / "ph", sites=2, per_class=6, seed=3, size=64)
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    df[df["site"] == "site_a"].to_csv(root / "ph" / "train_a.csv", index=False)
    ext = df[df["site"] == "site_b"].copy()
    ext.loc[ext["label"] == "normal", "site"] = "site_one"       # a site with a single class
    ext.to_csv(root / "ph" / "external.csv", index=False)
    ids = []
    here = os.getcwd()
    os.chdir(root)                      # the default MLflow store and checkpoints land in root
    try:
        for extra in ([], ["methods=[isnet]", "method.isnet.warmup_epochs=1"]):
            cfg = load_config(None, TRAIN + extra)
            ids.append(train(cfg, "ph/train_a.csv", progress=False).run_id)
    finally:
        os.chdir(here)
    return root, ids


@pytest.fixture(scope="module")
def report(trained):
    root, ids = trained
    r = run_isnet(["report", "--runs", ",".join(ids), "--manifest", "ph/external.csv", "--sites",
                   "site_b,site_one,site_z", "--out", "reports/external.html", "--resamples", "100",
                   "--gallery", "2"], cwd=root)
    assert r.returncode == 0, r.stderr[-3000:]
    return root, ids, r


def test_report_html_and_json(report):
    root, ids, r = report
    html = (root / "reports" / "external.html").read_text()
    data = json.loads((root / "reports" / "external.json").read_text())
    assert "wrote reports/external.html" in r.stdout
    # self-contained: figures embedded, nothing fetched from elsewhere
    assert html.count("data:image/png;base64,") >= 6
    assert "http://" not in html and "https://" not in html and "<link" not in html
    assert 'class="sortable"' in html and "addEventListener('click'" in html
    for section in ("Metrics per site and overall", "Paired comparison", "In-distribution → external gap",
                    "Calibration", "Confusion matrices", "Background relevance share", "Heatmap gallery"):
        assert section in html
    assert [m["run_id"] for m in data["methods"]] == ids
    assert data["groups"] == ["overall", "site_b", "site_one", "site_z"]
    assert data["data"]["site_b"]["per_class"] == {"normal": 0, "covid": 6, "tb": 6}
    assert data["data"]["site_one"]["per_class"] == {"normal": 6, "covid": 0, "tb": 0}
    for m in data["methods"]:
        e = data["metrics"][m["name"]]
        # every number checked against scikit-learn on the per-image predictions in the JSON
        preds = pd.DataFrame(data["predictions"][m["name"]])
        probs = np.array(preds["probs"].tolist())
        y = preds["label"].map({c: i for i, c in enumerate(data["classes"])}).to_numpy()
        assert e["overall"]["values"]["macro_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
        assert e["overall"]["values"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == y))
        lo, hi = e["overall"]["ci"]["macro_auc"]
        assert lo <= e["overall"]["values"]["macro_auc"] <= hi
        site_b = preds["site"] == "site_b"
        assert e["site_b"]["values"]["auc"]["covid"] == pytest.approx(
            roc_auc_score(y[site_b] == 1, probs[site_b, 1]))
        assert e["site_b"]["values"]["auc"]["normal"] is None and "no normal" in e["site_b"]["reasons"]["auc.normal"]
        assert 0 <= e["overall"]["values"]["bg_share_mean"] <= 1
        assert e["overall"]["values"]["ece"] >= 0
        assert sum(map(sum, e["overall"]["values"]["confusion_matrix"])) == 18
        # one class: AUC undefined with the reason, accuracy still there
        one = e["site_one"]
        assert one["values"]["macro_auc"] is None and "only one class (normal)" in one["reasons"]["macro_auc"]
        assert one["values"]["accuracy"] == pytest.approx(np.mean(probs.argmax(1)[~site_b] == 0))
        # empty: everything undefined, said so
        assert data["metrics"][m["name"]]["site_z"]["values"]["n_images"] == 0
        assert "no images" in e["site_z"]["reasons"]["macro_auc"]
        gap = data["gap"][m["name"]]
        assert gap["source"].startswith("recomputed") and gap["n_images"] > 0
        assert gap["gap"]["macro_auc"]["difference"] == pytest.approx(
            gap["external"]["macro_auc"] - gap["in_distribution"]["macro_auc"])
        assert set(data["gallery"]["site_b"][m["name"]]) == {"correct", "wrong"}
    pairs = [p for p in data["paired"] if p["group"] == "overall" and p["metric"] == "macro_auc"]
    assert len(pairs) == 1 and 0 < pairs[0]["p_value"] <= 1
    assert any("site 'site_z' has no images" in w for w in data["warnings"])
    assert "only one class (normal)" in html and "no images in this group" in html


def test_report_logged_to_mlflow(report):
    from mlflow.tracking import MlflowClient

    root, ids, _ = report
    data = json.loads((root / "reports" / "external.json").read_text())
    client = MlflowClient(f"sqlite:///{root / 'mlflow' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("reports")
    assert exp is not None
    run = client.get_run(data["report_run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == exp.experiment_id
    assert run.data.params["runs"] == ",".join(ids)
    names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert names == {"report/external.html", "report/external.json"}
    key = f"{ids[0][:8]}.overall.macro_auc"
    first = data["methods"][0]["name"]
    assert run.data.metrics[key] == pytest.approx(data["metrics"][first]["overall"]["values"]["macro_auc"])


def test_report_user_errors(trained, monkeypatch, capsys):
    from isnet.cli import main

    root, ids = trained
    monkeypatch.chdir(root)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["report", "--runs", ids[0], "--manifest", "ph/external.csv", "--sites", "site_q",
                 "--out", "reports/x.html"]) == 2
    err = capsys.readouterr().err
    assert "no rows of site(s) ['site_q']" in err and "site_b" in err
    assert main(["report", "--runs", "0123456789abcdef", "--manifest", "ph/external.csv",
                 "--out", "reports/x.html"]) == 2
    assert "0123456789abcdef" in capsys.readouterr().err
    assert main(["report", "--runs", f"{ids[0]},{ids[0]}", "--manifest", "ph/external.csv",
                 "--out", "reports/x.html"]) == 2
    assert "listed twice" in capsys.readouterr().err
    assert not (root / "reports" / "x.html").exists()
