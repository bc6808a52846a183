"""`isnet bench` at tiny sizes: every row of both suites has numbers; timing and memory helpers do what they say."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import make_toy_set, run_isnet

from isnet.bench.memory import peak_above_baseline
from isnet.bench.steps import ISNET_VARIANTS, case_names
from isnet.bench.timing import time_interleaved


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


@pytest.mark.slow  # over 25 s on 2 cores; the default suite must stay under 15 minutes
def test_bench_cli_tiny_every_row_has_numbers(tmp_path) -> None:
    manifest = make_toy_set(tmp_path / "toy", n_per_class=4, size=40)
    out = tmp_path / "bench.json"
    res = run_isnet(["bench", "--suite", "all", "--backbones", "small_cnn", "--sizes", "32", "--batch", "2",
                     "--warmup", "0", "--repeats", "1", "--memory", "shared", "--cases", "all",
                     "--manifest", str(manifest), "--threads", "1", "--out", str(out)], cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "isnet-original" in res.stdout and "memory: later epochs" in res.stdout
    data = json.loads(out.read_text())
    rows = data["train_step"]["rows"]
    cases = {r["case"] for r in rows}
    expected, _ = case_names()
    assert {"standard", "inference", "explain", "zennit-naive-stochastic", "zennit-naive-original"} <= cases
    assert {f"isnet-{v}" for v in ISNET_VARIANTS} <= cases
    assert cases == set(expected), (cases, data["train_step"]["errors"])
    for r in rows:
        for key in ("median_s", "min_s", "max_s", "images_per_s", "time_ratio", "cpu_s", "cpu_ratio", "peak_mb",
                    "memory_ratio"):
            assert _finite(r[key]), (r["case"], key, r[key], r.get("memory_error"))
        assert r["median_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"]
    std = next(r for r in rows if r["case"] == "standard")
    assert std["time_ratio"] == 1.0
    loader = data["loader"]["rows"]
    assert {r["case"] for r in loader} >= {"memory: first epoch (cache fill)", "memory: later epochs",
                                           "disk: first epoch (cache fill)", "none: every epoch",
                                           "train step: standard"}
    for r in loader:
        assert _finite(r["images_per_s"]) and r["images_per_s"] > 0 and _finite(r["ratio_to_standard_step"])
    assert data["machine"]["cores"] and data["machine"]["versions"]["torch"]
    assert data["targets"] and all(t["value"] is not None for t in data["targets"])


@pytest.mark.slow  # four fresh processes (one per cache mode, and a second disk run): about 2 min on 2 busy cores
def test_bench_loader_suite_measures_every_cache_mode(tmp_path) -> None:
    """``--suite loader``: rows for memory and disk (first and later epochs), a new run over the filled disk
    cache, and none; each with images/s, time to the first batch and peak RSS; the disk cache is removed."""
    manifest = make_toy_set(tmp_path / "toy", n_per_class=6, size=48)
    out = tmp_path / "bench.json"
    res = run_isnet(["bench", "--suite", "loader", "--backbones", "small_cnn", "--sizes", "32", "--batch", "4",
                     "--warmup", "0", "--repeats", "1", "--manifest", str(manifest), "--threads", "1",
                     "--cache-dtype", "uint8", "--cache-dir", str(tmp_path / "bench-cache"), "--out", str(out)],
                    cwd=tmp_path, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["case"]: r for r in data["loader"]["rows"]}
    assert set(rows) == {"memory: first epoch (cache fill)", "memory: later epochs", "disk: first epoch (cache fill)",
                         "disk: later epochs", "disk: new run, filled cache", "none: every epoch",
                         "train step: standard", "train step: isnet-stochastic"}
    n = data["loader"]["settings"]["images"]
    assert n > 0 and data["loader"]["settings"]["cache_dtype"] == "uint8"
    for name, r in rows.items():
        assert _finite(r["images_per_s"]) and r["images_per_s"] > 0, name
        if not name.startswith("train step"):
            assert r["images"] == n and r["first_batch_s"] > 0 and r["peak_rss_mb"] is not None, name
    assert rows["memory: later epochs"]["cached"] == n and rows["disk: new run, filled cache"]["cached"] == n
    assert rows["none: every epoch"]["cached"] == 0
    assert list((tmp_path / "bench-cache").iterdir()) == []  # the disk cache it wrote is gone


def test_bench_cli_rejects_bad_input(tmp_path) -> None:
    res = run_isnet(["bench", "--backbones", "alexnet"], cwd=tmp_path)
    assert res.returncode == 2 and "alexnet" in res.stderr and "Traceback" not in res.stderr
    res = run_isnet(["bench", "--suite", "loader", "--manifest", str(tmp_path / "nope.csv")], cwd=tmp_path)
    assert res.returncode == 2 and "nope.csv" in res.stderr
    res = run_isnet(["bench", "--suite", "loader", "--cache-modes", "memory,ram"], cwd=tmp_path)
    assert res.returncode == 2 and "ram" in res.stderr and "Traceback" not in res.stderr


def test_time_interleaved_repeats_and_drops_failing_case() -> None:
    calls: list[str] = []
    errors: dict[str, str] = {}

    def bad() -> None:
        raise RuntimeError("boom")

    t = time_interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b"), "bad": bad},
                         warmup=1, repeats=3, on_error=lambda n, e: errors.update({n: str(e)}))
    assert set(t) == {"a", "b"} and errors == {"bad": "boom"}
    assert len(t["a"].times) == 3 and calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then round-robin
    assert t["a"].spread[0] <= t["a"].median <= t["a"].spread[1]


def test_peak_above_baseline_sees_a_transient_allocation() -> None:
    def alloc() -> None:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, freed on return
        x.add_(1)

    rec = peak_above_baseline(alloc, torch.device("cpu"), warmup=0)
    if rec["peak_bytes"] is None:
        pytest.skip("no /proc on this system")
    assert rec["peak_bytes"] >= 60 * 2**20, rec
    small = peak_above_baseline(lambda: torch.ones(16), torch.device("cpu"), warmup=1)
    assert small["peak_bytes"] < 32 * 2**20, small
