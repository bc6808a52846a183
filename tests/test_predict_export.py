"""`isnet predict` on new (unlabelled) images and `isnet export` (TorchScript, ONNX, MLflow registry) of a
tiny trained run; every call goes through the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import CLASSES, FAST_TRAIN, make_toy_set, run_isnet, write_manifest


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, Path, Path]:
    """(run id, working directory with mlflow/ and checkpoints/, toy manifest)."""
    work = tmp_path_factory.mktemp("predict")
    manifest = make_toy_set(work / "toy", n_per_class=6)
    proc = run_isnet(["train", "--manifest", str(manifest), "--epochs", "1"] + FAST_TRAIN, work)
    assert proc.returncode == 0, proc.stderr
    return re.search(r"run ([0-9a-f]{32}) started", proc.stdout).group(1), work, manifest


def _phantom_batch(run_id: str, work: Path, n: int = 4) -> tuple[torch.Tensor, np.ndarray]:
    """Phantom radiographs through the run's own pipeline, and PyTorch's probabilities for them."""
    from isnet.data.dataset import build_dataset, build_loader
    from isnet.data.manifest import read_manifest
    from isnet.data.phantom import generate_dataset
    from isnet.train.loading import load_run_model

    model, cfg = load_run_model(run_id, work / "checkpoints")
    m = generate_dataset(work / "phantom", sites=1, per_class=2, size=64)
    df = read_manifest(m).head(n)
    records = [{"image": r.image_path, "mask": r.mask_path, "label": 0, "row": int(r.row), "site": r.site,
                "patient_id": r.patient_id} for r in df.itertuples(index=False)]
    batch = next(iter(build_loader(build_dataset(records, cfg.data.model_copy(update={"cache": "none"}),
                                                 train=False), cfg.data, shuffle=False, batch_size=n)))
    with torch.no_grad():
        ref = torch.softmax(model(batch["image"]), 1).numpy()
    return batch["image"], ref


def test_predict_unlabelled_with_bad_rows(trained, tmp_path: Path):
    run_id, work, manifest = trained
    toy = manifest.parent
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    rows = [{"image": str(toy / f"img{i:03d}.png")} for i in range(5)]
    rows.insert(2, {"image": str(tmp_path / "broken.png")})
    rows.append({"image": str(tmp_path / "missing.png")})
    m = write_manifest(tmp_path / "new.csv", rows)
    out = tmp_path / "predictions.csv"
    proc = run_isnet(["predict", "--run", run_id, "--manifest", str(m), "--out", str(out), "--device", "cpu"], work)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out)
    assert list(table["image"]) == [r["image"] for r in rows if "img" in r["image"]]
    probs = table[[f"prob_{c}" for c in CLASSES]].to_numpy()
    assert np.allclose(probs.sum(1), 1, atol=1e-5) and (probs >= 0).all()
    assert (table["predicted"] == [CLASSES[k] for k in probs.argmax(1)]).all()
    errors = pd.read_csv(tmp_path / "predictions.errors.csv")
    assert list(errors["row"]) == [4, 8]
    assert "not found" in errors["error"][1] and "broken.png" in errors["image"][0]
    assert "row 4" in proc.stderr and "row 8" in proc.stderr and "Traceback" not in proc.stderr


def test_predict_matches_pytorch_with_heatmaps(trained, tmp_path: Path):
    run_id, work, manifest = trained
    df = pd.read_csv(manifest, dtype=str, keep_default_na=False).head(4)
    df["label"] = ["normal", "", "tb", ""]  # labels optional, row by row
    df["mask"] = [df["mask"][0], "", df["mask"][2], df["mask"][3]]
    m = manifest.parent / "some.csv"
    df.to_csv(m, index=False)
    out, heat = tmp_path / "p.csv", tmp_path / "heat"
    proc = run_isnet(["predict", "--run", run_id, "--manifest", str(m), "--out", str(out), "--heatmaps",
                      str(heat), "--batch-size", "3"], work)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out, keep_default_na=False)
    assert len(table) == 4 and not (tmp_path / "p.errors.csv").exists()
    shares = pd.to_numeric(table["bg_share"].replace("", np.nan))
    assert shares[[0, 2, 3]].between(0, 1).all() and np.isnan(shares[1])  # row without a mask: no share
    for p in table["heatmap"]:
        assert Path(p).parent == heat and Path(p).stat().st_size > 1000
    # same probabilities as the run's model on its own pipeline
    from isnet.data.dataset import build_dataset
    from isnet.data.manifest import load_manifest
    from isnet.train.loading import load_run_model

    model, cfg = load_run_model(run_id, work / "checkpoints")
    rec = [{"image": str(manifest.parent / p), "mask": "", "label": 0, "row": 0, "site": "", "patient_id": ""}
           for p in df["image"]]
    ds = build_dataset(rec, cfg.data.model_copy(update={"cache": "none"}), train=False)
    with torch.no_grad():
        ref = torch.softmax(model(torch.stack([ds[i]["image"] for i in range(4)])), 1).numpy()
    assert np.allclose(table[[f"prob_{c}" for c in CLASSES]].to_numpy(), ref, atol=1e-5)
    del load_manifest


def test_predict_bad_inputs_are_one_line(trained, tmp_path: Path, monkeypatch, capsys):
    run_id, work, manifest = trained
    toy = manifest.parent
    wrong = write_manifest(tmp_path / "wrong.csv", [{"image": str(toy / "img000.png"), "label": "normal"},
                                                     {"image": str(toy / "img001.png"), "label": "pneumonia"}])
    proc = run_isnet(["predict", "--run", run_id, "--manifest", str(wrong), "--out", str(tmp_path / "o.csv")], work)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "pneumonia" in proc.stderr and "row(s) [3]" in proc.stderr
    assert not (tmp_path / "o.csv").exists()

    # the other refusals through the same entry point, in process (a subprocess each costs ~10 s of imports)
    from isnet.cli import main

    def cli(args: list[str]) -> tuple[int, str]:
        code = main(args)
        return code, capsys.readouterr().err

    monkeypatch.chdir(work)
    code, err = cli(["predict", "--run", "0" * 32, "--manifest", str(manifest), "--out", str(tmp_path / "o.csv")])
    assert code == 2 and "run 00000000000000000000000000000000" in err

    code, err = cli(["predict", "--run", run_id, "--manifest", str(tmp_path / "nope.csv"), "--out",
                     str(tmp_path / "o.csv")])
    assert code == 2 and "manifest not found" in err

    (tmp_path / "bad.png").write_bytes(b"garbage")
    allbad = write_manifest(tmp_path / "allbad.csv", [{"image": "bad.png"}])
    code, err = cli(["predict", "--run", run_id, "--manifest", str(allbad), "--out", str(tmp_path / "o.csv")])
    assert code == 2 and "no row" in err
    assert (tmp_path / "o.errors.csv").is_file() and not (tmp_path / "o.csv").exists()


def test_export_torchscript_matches_pytorch(trained, tmp_path: Path):
    run_id, work, _ = trained
    out = tmp_path / "model.pt"
    proc = run_isnet(["export", "--run", run_id, "--format", "torchscript", "--out", str(out)], work)
    assert proc.returncode == 0, proc.stderr
    spec = json.loads((tmp_path / "model.preprocessing.json").read_text())
    assert spec["classes"] == CLASSES and spec["image_size"] == 32 and spec["value_range"] == [0.0, 1.0]
    assert spec["crop"] == "none" and spec["percentile_scaling"]["clip"] is True
    x, ref = _phantom_batch(run_id, work)
    loaded = torch.jit.load(str(out))
    with torch.no_grad():
        got = loaded(x).numpy()
        one = loaded(x[:1]).numpy()  # the batch size is free
    assert np.abs(got - ref).max() < 1e-4 and np.abs(one - ref[:1]).max() < 1e-4


def test_export_onnx_matches_pytorch(trained, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    run_id, work, _ = trained
    out = tmp_path / "model.onnx"
    proc = run_isnet(["export", "--run", run_id, "--format", "onnx", "--out", str(out)], work)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "model.preprocessing.json").read_text())["format"] == "onnx"
    x, ref = _phantom_batch(run_id, work)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x.numpy()})[0]
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-4


def test_export_register_in_sqlite_registry(trained, tmp_path: Path):
    import mlflow

    run_id, work, _ = trained
    proc = run_isnet(["export", "--run", run_id, "--out", str(tmp_path / "m.pt"), "--register", "toy-cxr"], work)
    assert proc.returncode == 0, proc.stderr
    assert "registered model 'toy-cxr' version 1" in proc.stdout
    uri = f"sqlite:///{work / 'mlflow' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version("toy-cxr", "1")
    loaded = mlflow.pyfunc.load_model("models:/toy-cxr/1")
    meta = loaded.metadata.metadata["isnet_preprocessing"]
    assert meta["classes"] == CLASSES and meta["run_id"] == run_id and meta["image_size"] == 32
    assert loaded.metadata.get_input_schema() is not None
    x, ref = _phantom_batch(run_id, work)
    got = np.asarray(loaded.predict(x.numpy()))
    assert np.abs(got - ref).max() < 1e-4
    assert client.get_run(version.run_id).data.tags["isnet.source_run"] == run_id


def test_predict_device_names():
    from isnet.errors import UserError
    from isnet.evaluate.predict import _device

    assert _device("cpu").type == "cpu"
    assert _device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not a device"):
        _device("gpu")
    with pytest.raises(UserError, match="no such CUDA device"):
        _device(f"cuda:{torch.cuda.device_count() + 1}")


@pytest.mark.parametrize("backbone", ["resnet18", "densenet121"])
def test_export_real_backbones_any_batch(backbone: str, tmp_path: Path):
    """The backbones users fine-tune export with a free batch size and the same probabilities."""
    from isnet.config.schema import TrainConfig
    from isnet.models import build_classifier
    from isnet.models.export import export_model

    torch.manual_seed(0)
    cfg = TrainConfig.model_validate({"model": {"backbone": backbone}, "data": {"image_size": 64}})
    model = build_classifier(backbone, 3).eval()
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        ref = torch.softmax(model(x), 1).numpy()
        export_model(model, cfg, "torchscript", tmp_path / "m.pt")
        ts = torch.jit.load(str(tmp_path / "m.pt"))
        assert np.abs(ts(x).numpy() - ref).max() < 1e-4 and np.abs(ts(x[:1]).numpy() - ref[:1]).max() < 1e-4
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    export_model(model, cfg, "onnx", tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert np.abs(sess.run(None, {"image": x.numpy()})[0] - ref).max() < 1e-4


def test_preprocessing_sidecar_under_xrv_convention():
    from isnet.config.schema import TrainConfig
    from isnet.models.export import preprocessing_spec

    cfg = TrainConfig.model_validate({"data": {"intensity": "xrv", "crop": "center", "image_size": 224,
                                               "lower_percentile": 0, "upper_percentile": 100}})
    spec = preprocessing_spec(cfg, "abc")
    assert spec["value_range"] == [-1024.0, 1024.0] and spec["intensity"] == "xrv" and spec["crop"] == "center"
    assert spec["percentile_scaling"] == {"lower": 0, "upper": 100, "clip": True}
    assert spec["input"]["shape"] == ["batch", 1, 224, 224]
    assert "centred square" in spec["steps"][2] and "(2*x - 1) * 1024" in spec["steps"][-1]
    assert json.loads(json.dumps(spec)) == spec
