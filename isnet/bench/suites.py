"""The two suites: training-step cost per method, and data-loader throughput against the training step."""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from isnet.bench.memory import measure_cases_subprocess
from isnet.bench.steps import (
    CLASSES,
    DESCRIPTIONS,
    OPT_IN,
    Spec,
    build_case,
    case_names,
)
from isnet.bench.timing import time_interleaved

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def train_step_suite(backbones: list[str], sizes: list[int], batch: int, *, device: str = "cpu",
                     warmup: int = 1, repeats: int = 3, memory: str | None = "fresh", threads: int | None = None,
                     cases: list[str] | None = None, log: Log = _quiet) -> dict:
    """Time every case of every (backbone, size) side by side (interleaved repeats in this process), then
    measure each case's peak memory in fresh subprocesses (``memory``: "fresh", "shared" or None to skip).
    Ratios are to the standard step of the same backbone and size."""
    threads = threads or torch.get_num_threads()
    names, skipped = case_names()
    if cases == ["all"]:
        cases = None
    elif not cases:
        names = [c for c in names if c not in OPT_IN]
    if cases:
        unknown = [c for c in cases if c not in names and c not in skipped]
        if unknown:
            raise ValueError(f"unknown bench case(s) {unknown}; available: {names}")
        names = [c for c in names if c in cases or c == "standard"]
    rows: list[dict] = []
    errors: dict[str, str] = {}
    for backbone in backbones:
        for size in sizes:
            spec = Spec(backbone=backbone, size=size, batch=batch, device=device)
            fns = {}
            for name in names:
                try:
                    fns[name] = build_case(name, spec)
                except Exception as exc:  # noqa: BLE001 - a method that cannot run here is reported, not fatal
                    errors[f"{backbone}/{size}/{name}"] = f"{type(exc).__name__}: {exc}"[:300]
            log(f"[bench] {backbone} {size}px batch {batch}: timing {len(fns)} cases "
                f"({warmup} warm-up + {repeats} interleaved repeats)")

            def on_error(name: str, exc: BaseException, _b=backbone, _s=size) -> None:
                errors[f"{_b}/{_s}/{name}"] = f"{type(exc).__name__}: {exc}"[:300]

            timings = time_interleaved(fns, warmup=warmup, repeats=repeats, device=spec.torch_device,
                                       on_error=on_error)
            del fns
            mem: dict[str, dict] = {}
            if memory:
                log(f"[bench] {backbone} {size}px: peak memory of {len(timings)} cases "
                    f"({'one fresh process per case' if memory == 'fresh' else 'one fresh process for all'})")
                mem = measure_cases_subprocess(list(timings), spec, threads, isolation=memory)
            base_t = timings["standard"].median if "standard" in timings else None
            base_c = timings["standard"].cpu_median if "standard" in timings else None
            base_m = (mem.get("standard") or {}).get("peak_bytes")
            for name, t in timings.items():
                peak = (mem.get(name) or {}).get("peak_bytes")
                rows.append({
                    "backbone": backbone, "size": size, "batch": batch, "device": device, "case": name,
                    "description": DESCRIPTIONS.get(name, f"training step with method '{name}'"),
                    "median_s": t.median, "min_s": t.spread[0], "max_s": t.spread[1], "repeats": len(t.times),
                    "times_s": t.times, "images_per_s": batch / t.median,
                    "time_ratio": t.median / base_t if base_t else None,
                    "cpu_s": t.cpu_median, "cpu_times_s": t.cpu_times,
                    "cpu_ratio": (t.cpu_median / base_c if (base_c and device == "cpu") else None),
                    "peak_mb": None if peak is None else peak / 2**20,
                    "memory_ratio": peak / base_m if (peak is not None and base_m) else None,
                    "memory_kind": (mem.get(name) or {}).get("kind"),
                    "memory_error": (mem.get(name) or {}).get("error"),
                })
    return {"rows": rows, "skipped": skipped, "errors": errors,
            "settings": {"backbones": backbones, "sizes": sizes, "batch": batch, "device": device,
                         "warmup": warmup, "repeats": repeats, "threads": threads, "memory": memory}}


def phantom_manifest(folder: Path, per_class: int = 8, size: int = 256) -> Path:
    """A small phantom set to measure the loader on when no manifest is given."""
    from isnet.data.phantom import generate_dataset

    return generate_dataset(folder, sites=1, per_class=per_class, seed=0, size=size)


def loader_suite(manifest: Path | None, *, size: int, batch: int, backbone: str, device: str = "cpu",
                 epochs: int = 3, warmup: int = 1, repeats: int = 3, threads: int | None = None,
                 classes: list[str] | None = None, log: Log = _quiet) -> dict:
    """Images/s of the training loader: first epoch (decode + normalise + resize into the cache, then
    augmentation), cached epochs, and without cache; against the images/s of the standard and ISNet steps."""
    from isnet.bench.steps import train_config
    from isnet.data.dataset import build_dataset, build_loader
    from isnet.data.manifest import load_manifest

    threads = threads or torch.get_num_threads()
    tmp = None
    if manifest is None:
        tmp = tempfile.TemporaryDirectory(prefix="isnet-bench-")
        log("[bench] no --manifest: generating a small phantom set (1 site x 3 classes x 8 images, 256 px)")
        manifest = phantom_manifest(Path(tmp.name) / "phantom")
    try:
        cfg = train_config(Spec(backbone, size, batch, device), ["standard"])
        cfg.data.classes = list(classes or CLASSES)
        man = load_manifest(manifest, cfg.data.classes)
        records = man.records("train")
        n = len(records)
        rows = []

        def epoch(loader) -> float:
            t0 = time.perf_counter()
            seen = 0
            for b in loader:
                seen += len(b["label"])
            assert seen == n
            return time.perf_counter() - t0

        log(f"[bench] loader: {n} training images of {manifest}, {size} px, batch {batch}")
        t0 = time.perf_counter()
        ds = build_dataset(records, cfg.data, train=True)  # CacheDataset fills its cache here
        loader = build_loader(ds, cfg.data, shuffle=True, generator=torch.Generator().manual_seed(0))
        first = time.perf_counter() - t0 + epoch(loader)
        rows.append({"case": "loader first epoch (cache fill)", "seconds": [first], "images": n})
        cached = [epoch(loader) for _ in range(max(1, epochs - 1))]
        rows.append({"case": "loader cached epoch", "seconds": cached, "images": n})
        cfg.data.cache = "none"
        plain = build_loader(build_dataset(records, cfg.data, train=True), cfg.data, shuffle=True,
                             generator=torch.Generator().manual_seed(0))
        rows.append({"case": "loader without cache", "seconds": [epoch(plain)], "images": n})
        for r in rows:
            s = sorted(r["seconds"])[len(r["seconds"]) // 2]
            r.update(median_s=s, images_per_s=n / s)
        log(f"[bench] loader: training steps at {backbone} {size}px batch {batch} for comparison")
        spec = Spec(backbone=backbone, size=size, batch=batch, device=device)
        steps = {name: build_case(name, spec) for name in ("standard", "isnet-stochastic")}
        timings = time_interleaved(steps, warmup=warmup, repeats=repeats, device=spec.torch_device)
        for name, t in timings.items():
            rows.append({"case": f"train step: {name}", "seconds": t.times, "images": batch,
                         "median_s": t.median, "images_per_s": batch / t.median})
        step_ips = batch / timings["standard"].median
        for r in rows:
            r["ratio_to_standard_step"] = r["images_per_s"] / step_ips
        return {"rows": rows, "settings": {"manifest": str(manifest) if tmp is None else "generated phantom set",
                                           "images": n, "size": size, "batch": batch, "backbone": backbone,
                                           "num_workers": cfg.data.num_workers, "threads": threads}}
    finally:
        if tmp is not None:
            tmp.cleanup()
