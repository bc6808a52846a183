"""``model.init``: ImageNet-shaped weight files (built locally, nothing downloaded), state-dict paths and
earlier runs as the starting point; the 1-channel stem and the replaced head."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

from conftest import make_toy_set, run_isnet
from isnet.config.schema import TrainConfig
from isnet.errors import UserError
from isnet.models import build_classifier
from isnet.train.init import apply_init


def _cfg(**model) -> TrainConfig:
    return TrainConfig.model_validate({"model": model, "data": {"classes": ["normal", "covid", "tb"]}})


def test_imagenet_resnet18_stem_summed_and_head_fresh(tmp_path: Path):
    torch.manual_seed(0)
    ref = tvm.resnet18(weights=None)  # ImageNet-shaped: 3-channel stem, 1000-class head
    torch.save(ref.state_dict(), tmp_path / "resnet18-imagenet.pth")
    cfg = _cfg(backbone="resnet18", init="imagenet", init_path=str(tmp_path / "resnet18-imagenet.pth"))
    model = build_classifier("resnet18", 3)
    head_before = model.fc.weight.clone()
    report = apply_init(model, cfg)
    assert torch.equal(model.conv1.weight, ref.conv1.weight.sum(1, keepdim=True))
    assert torch.equal(model.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    assert torch.equal(model.fc.weight, head_before) and model.fc.out_features == 3
    assert report["adapted_to_one_channel"] == ["conv1.weight"]
    assert set(report["skipped"]) == {"fc.weight", "fc.bias"} and set(report["missing"]) == {"fc.weight", "fc.bias"}
    # a grey image gives the pretrained stem's output exactly
    x = torch.rand(1, 1, 32, 32)
    assert torch.allclose(model.conv1(x), ref.conv1(x.expand(1, 3, 32, 32)), atol=1e-5)


def test_densenet_old_style_keys_are_read(tmp_path: Path):
    sd = tvm.densenet121(weights=None).state_dict()
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))(\d)\.", r"\1.\2.", k): v for k, v in sd.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old
    torch.save(old, tmp_path / "d.pth")
    model = build_classifier("densenet121", 3)
    report = apply_init(model, _cfg(backbone="densenet121", init=str(tmp_path / "d.pth")))
    assert torch.equal(model.features.denseblock1.denselayer1.norm1.weight,
                       sd["features.denseblock1.denselayer1.norm1.weight"])
    assert set(report["skipped"]) == {"classifier.weight", "classifier.bias"}


def test_init_errors_name_the_file(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(UserError, match=r"torch_home/hub/checkpoints/resnet18-.*\.pth"):
        apply_init(build_classifier("resnet18", 3), _cfg(backbone="resnet18", init="imagenet"))
    with pytest.raises(UserError, match="weight file not found: .*nope.pt"):
        apply_init(build_classifier("resnet18", 3), _cfg(backbone="resnet18", init=str(tmp_path / "nope.pt")))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="not a PyTorch state dict"):
        apply_init(build_classifier("resnet18", 3), _cfg(backbone="resnet18", init=str(tmp_path / "junk.pt")))
    torch.save(tvm.resnet18(weights=None).state_dict(), tmp_path / "r.pt")
    with pytest.raises(UserError, match="fit no layer"):
        apply_init(build_classifier("small_cnn", 3, width=4), _cfg(backbone="small_cnn", init=str(tmp_path / "r.pt")))
    with pytest.raises(ValueError, match="small_cnn has no ImageNet weights"):
        _cfg(backbone="small_cnn", init="imagenet")


@pytest.mark.slow  # two CLI training runs; the default suite must stay under 15 minutes on 2 cores
def test_finetune_densenet121_from_imagenet_file_with_isnet_then_from_the_run(tmp_path: Path, monkeypatch):
    """One ISNet epoch at 64 px from a local ImageNet-shaped DenseNet121 file; then a run started from it."""
    torch.manual_seed(0)
    sd = tvm.densenet121(weights=None).state_dict()
    torch.save(sd, tmp_path / "densenet121-imagenet.pth")
    manifest = make_toy_set(tmp_path / "toy", n_per_class=3, size=64)
    rows = manifest.read_text().splitlines()
    split = ["train", "val", "test"]
    manifest.write_text("\n".join([rows[0]] + [r[:-1] + split[i // 3] if r.endswith(",") else r
                                              for i, r in enumerate(rows[1:])]) + "\n")
    common = ["--manifest", str(manifest), "--epochs", "1", "--backbone", "densenet121", "--image-size", "64",
              "--batch-size", "3", "--no-progress", "--set", "tracking.log_model=false", "--set", "train.threads=1",
              "--set", "data.augment.enabled=false"]
    proc = run_isnet(["train", *common, "--set", "model.init=imagenet",
                      "--set", f"model.init_path={tmp_path / 'densenet121-imagenet.pth'}",
                      "--set", "methods=[isnet]", "--set", "method.isnet.C1=0.01", "--set", "method.isnet.C2=10"],
                     tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr
    run_id = re.search(r"run ([0-9a-f]{32}) started", proc.stdout).group(1)
    assert "summed to one input channel" in proc.stdout
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert int(run.data.tags["isnet.init_loaded"]) == len(sd) - 2
    assert run.data.params["model.init"] == "imagenet"
    report = json.loads(Path(client.download_artifacts(run_id, "model_init.json", str(tmp_path))).read_text())
    assert report["adapted_to_one_channel"] == ["features.conv0.weight"]
    assert set(report["skipped"]) == {"classifier.weight", "classifier.bias"}

    # fine-tune from that run: every tensor fits (same backbone, same classes)
    from isnet.train.loading import load_best_state

    monkeypatch.chdir(tmp_path)  # the run's checkpoints/ are relative to where it was trained
    model = build_classifier("densenet121", 3)
    report = apply_init(model, _cfg(backbone="densenet121", init=f"run:{run_id}"))
    assert report["skipped"] == {} and report["missing"] == [] and report["source"] == f"run {run_id}"
    assert torch.equal(model.classifier.weight, load_best_state(run_id)["model"]["classifier.weight"])
    with pytest.raises(UserError, match="trained a densenet121"):
        apply_init(build_classifier("resnet18", 3), _cfg(backbone="resnet18", init=f"run:{run_id}"))


def test_run_with_other_classes_gives_no_head(tmp_path: Path, monkeypatch):
    """A run of the same backbone with the same number of classes in another order: the body loads, the
    head stays fresh (it would mean the wrong classes)."""
    from isnet.train.checkpoint import save_checkpoint

    other = build_classifier("small_cnn", 3, width=4)
    cfg_other = TrainConfig.model_validate({"model": {"backbone": "small_cnn", "width": 4},
                                            "data": {"classes": ["tb", "covid", "normal"]}})
    (tmp_path / "checkpoints" / "r1").mkdir(parents=True)
    save_checkpoint({"model": other.state_dict(), "classes": ["tb", "covid", "normal"],
                     "config": cfg_other.model_dump(mode="json")}, tmp_path / "checkpoints" / "r1" / "best.pt")
    monkeypatch.chdir(tmp_path)
    model = build_classifier("small_cnn", 3, width=4)
    head = model[-1].weight.clone()
    report = apply_init(model, _cfg(backbone="small_cnn", width=4, init="run:r1"))
    assert torch.equal(model[-1].weight, head) and torch.equal(model[0].weight, other[0].weight)
    assert "its head is not used" in report["source"] and report["missing"] == ["17.weight", "17.bias"]


XRV_NAME = "densenet121-res224-all"


def test_xrv_weights_switch_the_input_and_refuse_what_does_not_fit():
    cfg = _cfg(backbone="densenet121", init=f"xrv:{XRV_NAME}")
    assert (cfg.data.intensity, cfg.data.crop) == ("xrv", "center")
    with pytest.raises(ValueError, match="expect data.intensity: xrv, this config sets data.intensity: unit"):
        TrainConfig.model_validate({"model": {"backbone": "densenet121", "init": f"xrv:{XRV_NAME}"},
                                    "data": {"intensity": "unit"}})
    with pytest.raises(ValueError, match="holds densenet121 weights; set model.backbone=densenet121"):
        _cfg(backbone="resnet18", init=f"xrv:{XRV_NAME}")
    with pytest.raises(ValueError, match="weight names start with densenet121- or resnet50-"):
        _cfg(backbone="densenet121", init="xrv:chexpert")


def test_xrv_needs_its_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchxrayvision", None)  # import fails as when it is not installed
    with pytest.raises(UserError, match=r"needs torchxrayvision.*pip install 'isnet\[xrv\]'"):
        apply_init(build_classifier("densenet121", 3), _cfg(backbone="densenet121", init=f"xrv:{XRV_NAME}"))


def test_xrv_densenet_file_from_its_cache(tmp_path: Path, monkeypatch):
    """torchxrayvision's own file format (a whole pickled model) in its own cache folder, built locally."""
    xrv = pytest.importorskip("torchxrayvision")
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = _cfg(backbone="densenet121", init=f"xrv:{XRV_NAME}")
    with pytest.raises(UserError, match=r"not in torchxrayvision's cache.*place the file from https://\S+\.pt at "
                                        + re.escape(str(tmp_path / ".torchxrayvision" / "models_data"))):
        apply_init(build_classifier("densenet121", 3), cfg)
    with pytest.raises(UserError, match="has no weights of that name; choose one of .*densenet121-res224-nih"):
        apply_init(build_classifier("densenet121", 3), _cfg(backbone="densenet121", init="xrv:densenet121-res9"))
    torch.manual_seed(0)
    ref = xrv.models.DenseNet()  # the architecture of its chest X-ray weights: 1-channel stem, 18 pathologies
    url = xrv.models.model_urls[XRV_NAME]["weights_url"]
    folder = tmp_path / ".torchxrayvision" / "models_data"
    folder.mkdir(parents=True)
    torch.save(ref, folder / url.rsplit("/", 1)[1])
    model = build_classifier("densenet121", 3)
    report = apply_init(model, cfg)
    assert torch.equal(model.features.conv0.weight, ref.features.conv0.weight)
    assert torch.equal(model.features.denseblock4.denselayer16.conv2.weight,
                       ref.features.denseblock4.denselayer16.conv2.weight)
    assert report["adapted_to_one_channel"] == [] and set(report["missing"]) == {"classifier.weight", "classifier.bias"}
    assert "head of the pretrained task" in report["skipped"]["classifier.weight"]
    assert report["input"] == {"data.intensity": "xrv", "data.crop": "center"}
    # 18 classes of our own: the 18-pathology head still is not taken
    own18 = TrainConfig.model_validate({"model": {"backbone": "densenet121", "init": f"xrv:{XRV_NAME}"},
                                        "data": {"classes": [f"c{i}" for i in range(18)]}})
    model18 = build_classifier("densenet121", 18)
    head = model18.classifier.weight.clone()
    apply_init(model18, own18)
    assert torch.equal(model18.classifier.weight, head)
