"""The data caches through the public API (config → build_dataset/build_loader, and ``train``): ``disk`` writes
its folder, a second run reads it without decoding, a changed setting gets a new folder; ``none`` decodes every
epoch; ``memory`` with ``cache_rate`` 0.5 caches half; the cache dtypes round-trip within a level of the float32
pipeline; the per-rank shards are DistributedSampler's partition."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from conftest import CLASSES, make_toy_set, write_manifest
from isnet.config import load_config
from isnet.data.dataset import build_dataset, build_loader, disk_cache_folder
from isnet.data.manifest import load_manifest
from isnet.data.transforms import LoadXrayd, cache_transforms
from isnet.errors import ConfigError
from isnet.train.distributed import shard_records

SIZE = 32


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    """12 8-bit images with masks."""
    return make_toy_set(tmp_path_factory.mktemp("cache") / "toy", n_per_class=4, size=40)


@pytest.fixture(scope="module")
def toy16(tmp_path_factory) -> Path:
    """6 16-bit images (a ramp plus noise over the whole 16-bit range) with masks."""
    folder = tmp_path_factory.mktemp("cache16")
    rng = np.random.default_rng(3)
    rows = []
    for i in range(6):
        ramp = np.linspace(0, 60000, 48)[None, :] + rng.random((48, 48)) * 5000
        Image.fromarray(ramp.astype(np.uint16)).save(folder / f"img{i}.png")
        mask = np.zeros((48, 48), np.uint8)
        mask[8:40, 8:40] = 255
        Image.fromarray(mask).save(folder / f"mask{i}.png")
        rows.append({"image": f"img{i}.png", "mask": f"mask{i}.png", "label": CLASSES[i % 3], "site": "s",
                     "patient_id": f"p{i}", "split": "train"})
    return write_manifest(folder / "manifest.csv", rows)


def _records(manifest: Path) -> list[dict]:
    man = load_manifest(manifest, CLASSES, need_splits=("train",))
    return [r for s in ("train", "val", "test") for r in man.records(s)]


def _cfg(**data):
    data.setdefault("augment.enabled", False)
    return load_config(None, [f"data.image_size={SIZE}", "data.batch_size=4"]
                       + [f"data.{k}={v}" for k, v in data.items()]).data


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every image the pipeline decodes (LoadXrayd), by path; the manifest's own file check is not counted."""
    calls: list[str] = []
    real = LoadXrayd.__call__

    def counting(self, data):
        calls.append(str(data["image"]))
        return real(self, data)

    monkeypatch.setattr(LoadXrayd, "__call__", counting)
    return calls


def _epoch(ds, cfg) -> list[dict]:
    return list(build_loader(ds, cfg, shuffle=True, generator=torch.Generator().manual_seed(0)))


def _tree(folder: Path) -> dict:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


# -- the cache dtypes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["8-bit", "16-bit"])
def test_cache_dtypes_round_trip_within_a_level_of_the_float32_pipeline(toy, toy16, source):
    recs = _records(toy if source == "8-bit" else toy16)
    exact = build_dataset(recs, _cfg(cache="none"), train=False)
    want = [exact[i] for i in range(len(recs))]
    auto = cache_transforms(_cfg(cache_dtype="auto"))(dict(recs[0]))
    assert auto["image"].dtype == (torch.uint8 if source == "8-bit" else torch.uint16)
    assert auto["mask"].dtype == torch.uint8
    for dtype, tol in [("uint8", 0.5 / 255), ("uint16", 0.5 / 65535), ("float16", 2.0 ** -11), ("float32", 0.0)]:
        ds = build_dataset(recs, _cfg(cache="memory", cache_dtype=dtype), train=False)
        for i, w in enumerate(want):
            got = ds[i]
            assert got["image"].dtype == torch.float32 and got["image"].shape == (1, SIZE, SIZE)
            err = float((got["image"] - w["image"]).abs().max())
            assert err <= tol + 1e-7, (dtype, i, err)   # half a level: within the 1/255 and 1/65535 asked
            assert torch.equal(got["mask"], w["mask"])   # masks are exact in every dtype
        if dtype == "float32":
            assert all(torch.equal(ds[i]["image"], w["image"]) for i, w in enumerate(want))


def test_cache_settings_are_validated():
    with pytest.raises(ConfigError, match="cache_rate"):
        _cfg(cache="disk", cache_rate=0.5)
    with pytest.raises(ConfigError, match="cache_dtype"):
        _cfg(cache_dtype="int8")
    with pytest.raises(ConfigError, match="cache_rate"):
        _cfg(cache_rate=0)


# -- the three modes ----------------------------------------------------------------------------------
def test_disk_cache_is_written_once_reused_and_keyed_by_the_settings(toy, tmp_path, decodes, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recs = _records(toy)
    n = len(recs)
    cfg = _cfg(cache="disk", cache_dtype="uint8")  # data.cache_dir: the default "cache" under the working directory
    ds = build_dataset(recs, cfg, train=True)
    folder = ds.folder
    assert folder == disk_cache_folder(cfg) and folder.parent == tmp_path / "cache"
    assert ds.cached_count() == 0 and not decodes
    first = _epoch(ds, cfg)
    assert sum(len(b["label"]) for b in first) == n and len(decodes) == n
    files = _tree(folder)
    assert len([f for f in files if f.endswith(".pt")]) == n and "key.json" in files
    assert not [f for f in files if f.endswith(".tmp")]

    decodes.clear()  # a second run (a new data set over the same folder): nothing decoded, nothing written
    again = build_dataset(recs, cfg, train=True)
    assert again.folder == folder and again.cached_count() == n
    _epoch(again, cfg)
    _epoch(again, cfg)
    assert decodes == [] and _tree(folder) == files

    # record fields come from the current records, not from the file: a relabelled manifest reuses the pixels
    relabelled = [{**r, "label": (r["label"] + 1) % 3} for r in recs]
    ds2 = build_dataset(relabelled, cfg, train=False)
    assert [ds2[i]["label"] for i in range(n)] == [r["label"] for r in relabelled] and decodes == []

    # settings that change the cached arrays get their own folder; the ones applied after the cache do not
    for change in ({"image_size": 24}, {"lower_percentile": 1.0}, {"crop": "center"}, {"cache_dtype": "float16"}):
        other = _cfg(cache="disk", **{"cache_dtype": "uint8", **change})
        assert disk_cache_folder(other) != folder, change
    for same in ({"intensity": "xrv"}, {"augment.enabled": True}, {"batch_size": 2}):
        assert disk_cache_folder(_cfg(cache="disk", cache_dtype="uint8", **same)) == folder, same
    bigger = build_dataset(recs, _cfg(cache="disk", cache_dtype="uint8", image_size=24), train=False)
    assert bigger.folder != folder and bigger[0]["image"].shape == (1, 24, 24) and len(decodes) == 1

    # an edited image (new mtime) is decoded again
    decodes.clear()
    path = recs[0]["image"]
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    build_dataset(recs, cfg, train=False)[0]
    assert decodes == [path]


def _fill(args):
    """One of two processes filling the same disk cache at once (in opposite orders)."""
    records, cfg, reverse = args
    ds = build_dataset(records, cfg, train=False)
    order = range(len(records) - 1, -1, -1) if reverse else range(len(records))
    return [float(ds[i]["image"].sum()) for i in order]


def test_two_processes_fill_one_disk_cache_at_once(toy, tmp_path):
    recs = _records(toy)
    cfg = _cfg(cache="disk", cache_dir=str(tmp_path / "shared"))
    with mp.get_context("fork").Pool(2) as pool:
        a, b = pool.map(_fill, [(recs, cfg, False), (recs, cfg, True)])
    assert a == b[::-1]
    folder = disk_cache_folder(cfg)
    pt = sorted(folder.glob("*.pt"))
    assert len(pt) == len(recs) and not list(folder.glob(".*.tmp"))
    for p in pt:
        assert set(torch.load(p, weights_only=True)) == {"image", "mask", "has_mask"}


def test_none_decodes_every_image_every_epoch(toy, decodes):
    recs = _records(toy)
    cfg = _cfg(cache="none")
    ds = build_dataset(recs, cfg, train=True)
    _epoch(ds, cfg)
    _epoch(ds, cfg)
    assert len(decodes) == 2 * len(recs) and ds.cached_count() == 0


def test_memory_cache_rate_half_caches_half(toy, decodes):
    recs = _records(toy)
    n = len(recs)
    cfg = _cfg(cache="memory", cache_rate=0.5)
    ds = build_dataset(recs, cfg, train=True)
    assert ds.cached_count() == n // 2 and len(decodes) == n // 2   # filled when built
    _epoch(ds, cfg)
    _epoch(ds, cfg)
    assert len(decodes) == n // 2 + 2 * (n - n // 2)                # the other half: every epoch


def test_memory_cache_max_gb_sets_the_rate_from_one_cached_image(toy):
    recs = _records(toy)
    one = SIZE * SIZE * 2   # a uint8 image and a uint8 mask
    cfg = _cfg(cache="memory", cache_dtype="uint8", cache_max_gb=4.5 * one / 2**30)
    assert build_dataset(recs, cfg, train=False).cached_count() == 4
    assert build_dataset(recs, _cfg(cache="memory", cache_dtype="uint8", cache_max_gb=1.0),
                         train=False).cached_count() == len(recs)


# -- distributed shards ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(12, 2), (11, 2), (10, 3)])
def test_shards_are_distributed_samplers_epoch_zero_partition(n, world):
    from torch.utils.data import DistributedSampler

    records = [{"row": i} for i in range(n)]
    shards = [shard_records(records, world, r, seed=7) for r in range(world)]
    for r, shard in enumerate(shards):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=True, seed=7)
        assert [x["row"] for x in shard] == list(sampler)
        assert len(shard) == -(-n // world)
    assert {x["row"] for s in shards for x in s} == set(range(n))
    assert shard_records(records, 1, 0, seed=7) == records


# -- a training run -----------------------------------------------------------------------------------------
def test_training_with_a_disk_cache_logs_its_folder_and_a_second_run_reuses_it(toy, tmp_path, decodes, monkeypatch):
    from isnet.train.run import train

    monkeypatch.chdir(tmp_path)
    overrides = ["model.backbone=small_cnn", "model.width=4", f"data.image_size={SIZE}", "data.batch_size=8",
                 "optim.epochs=1", "train.threads=1", "train.device=cpu", "tracking.log_model=false",
                 "train.val_bg_share=false", "train.heatmap_every=0",
                 "data.cache=disk", "data.cache_dtype=uint8",
                 f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    cfg = load_config(None, overrides)
    first = train(cfg, toy, progress=False)
    folder = disk_cache_folder(cfg.data)
    assert folder.parent == tmp_path / "cache"
    run = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(first.run_id)
    assert run.data.params["data.cache"] == "disk" and run.data.params["data.cache_folder"] == str(folder)
    n_train_val = len(load_manifest(toy, CLASSES).records("train")) + len(load_manifest(toy, CLASSES).records("val"))
    assert len(list(folder.glob("*.pt"))) == n_train_val   # the test split is scored once, uncached
    files = _tree(folder)
    decodes.clear()
    second = train(load_config(None, overrides), toy, progress=False)
    assert second.run_id != first.run_id
    n_test = len(load_manifest(toy, CLASSES).records("test"))
    assert len(decodes) == n_test and _tree(folder) == files   # training and validation read the cache


_FAILING_FILL = """
import sys, torch
from monai.transforms import Compose, Lambda
from isnet.data.dataset import MemoryCache

def decode(record):
    if record["i"] == 0:
        raise ValueError("unreadable image")
    x = torch.randn(1, 1, 128, 128)
    for _ in range(20):  # keep the other threads busy in torch while the error travels up
        x = torch.nn.functional.conv2d(x, torch.randn(1, 1, 9, 9), padding=4)
    return record

try:
    MemoryCache([{"i": i} for i in range(32)], transform=Compose([Lambda(decode)]), num_workers=4)
except Exception as exc:
    print("isnet: error:", exc, file=sys.stderr)
    sys.exit(2)
"""


def test_a_failing_image_in_the_memory_cache_fill_exits_with_its_code(tmp_path):
    """MONAI's own fill leaves its threads decoding while the error ends the process, and the interpreter's
    shutdown under them aborted it (exit 134) instead of the user error's exit 2."""
    import subprocess
    import sys

    script = tmp_path / "fill.py"
    script.write_text(_FAILING_FILL)
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]  # MONAI's CacheDataset: -6 (abort) in 8 of 8 tries
    assert "isnet: error: applying transform" in res.stderr and "terminate called" not in res.stderr
