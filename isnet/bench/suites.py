"""The two suites: training-step cost per method, and data-loader throughput (per data cache) against the
training step."""
from __future__ import annotations

import tempfile
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


#: the cache modes of the loader suite, in the order they run
CACHE_MODES = ("memory", "disk", "none")


def _loader_process(request: dict, threads: int, timeout: float, log: Log) -> list[dict]:
    """One cache mode measured in a fresh process (:mod:`isnet.bench.loader`)."""
    import json
    import subprocess
    import sys

    from isnet.bench.memory import _env

    proc = subprocess.run([sys.executable, "-m", "isnet.bench.loader", json.dumps(request)], capture_output=True,
                          text=True, timeout=timeout, env=_env(threads), check=False)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not rows:
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]
        log(f"[bench] loader, data.cache={request['cache']}: failed ({tail})")
        return [{"case": f"{request['cache']}: {request.get('label') or 'failed'}", "error": tail, "seconds": [],
                 "images": None}]
    return rows


def loader_suite(manifest: Path | None, *, size: int, batch: int, backbone: str, device: str = "cpu",
                 epochs: int = 3, warmup: int = 1, repeats: int = 3, threads: int | None = None,
                 classes: list[str] | None = None, cache_dtype: str = "auto", modes: list[str] | None = None,
                 num_workers: int = 0, cache_dir: Path | None = None, timeout: float = 7200,
                 log: Log = _quiet) -> dict:
    """Images/s of the training loader under each data cache (``data.cache`` memory, disk, none), each in a
    fresh process: memory and disk, the first epoch (decode + normalise + resize into the cache, then
    augmentation) and the later epochs; disk also a new run over the filled folder (what a second training run
    sees); none, one epoch. Per row: median seconds, images/s, time to the first batch and the peak resident
    memory above the process baseline. Against the images/s of the standard and ISNet steps.

    The disk cache is written to a fresh folder inside ``cache_dir`` (default: a temporary folder in the working
    directory, so on the same disk as a run's ``cache/`` would be), removed afterwards."""
    threads = threads or torch.get_num_threads()
    modes = list(modes or CACHE_MODES)
    unknown = [m for m in modes if m not in CACHE_MODES]
    if unknown:
        raise ValueError(f"unknown cache mode(s) {unknown}; choose from {', '.join(CACHE_MODES)}")
    tmp = None
    if manifest is None:
        tmp = tempfile.TemporaryDirectory(prefix="isnet-bench-")
        log("[bench] no --manifest: generating a small phantom set (1 site x 3 classes x 8 images, 256 px)")
        manifest = phantom_manifest(Path(tmp.name) / "phantom")
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
    disk_tmp = tempfile.TemporaryDirectory(prefix=".isnet-bench-cache-", dir=str(cache_dir or Path.cwd()))
    try:
        classes = list(classes or CLASSES)
        request = {"manifest": str(manifest), "classes": classes, "size": size, "batch": batch, "epochs": epochs,
                   "cache_dtype": cache_dtype, "num_workers": num_workers, "threads": threads,
                   "cache_dir": disk_tmp.name, "label": None}
        rows: list[dict] = []
        for mode in modes:
            log(f"[bench] loader, data.cache={mode} (cache dtype {cache_dtype}): a fresh process, "
                f"{epochs if mode != 'none' else 1} epoch(s) of {manifest}, {size} px, batch {batch}")
            rows += _loader_process({**request, "cache": mode}, threads, timeout, log)
            if mode == "disk":
                log("[bench] loader, data.cache=disk: a new process over the filled cache folder")
                rows += _loader_process({**request, "cache": mode, "label": "new run, filled cache"}, threads,
                                        timeout, log)
        for r in rows:
            if r["seconds"]:
                s = sorted(r["seconds"])[len(r["seconds"]) // 2]
                r.update(median_s=s, images_per_s=r["images"] / s)
            else:
                r.update(median_s=None, images_per_s=None)
        n = next((r["images"] for r in rows if r.get("images")), 0)
        log(f"[bench] loader: training steps at {backbone} {size}px batch {batch} for comparison")
        spec = Spec(backbone=backbone, size=size, batch=batch, device=device)
        steps = {name: build_case(name, spec) for name in ("standard", "isnet-stochastic")}
        timings = time_interleaved(steps, warmup=warmup, repeats=repeats, device=spec.torch_device)
        for name, t in timings.items():
            rows.append({"case": f"train step: {name}", "seconds": t.times, "images": batch,
                         "median_s": t.median, "images_per_s": batch / t.median})
        step_ips = batch / timings["standard"].median
        for r in rows:
            r["ratio_to_standard_step"] = None if r["images_per_s"] is None else r["images_per_s"] / step_ips
        return {"rows": rows, "settings": {"manifest": str(manifest) if tmp is None else "generated phantom set",
                                           "images": n, "size": size, "batch": batch, "backbone": backbone,
                                           "num_workers": num_workers, "threads": threads,
                                           "cache_dtype": cache_dtype, "modes": modes, "epochs": epochs,
                                           "cache_dir": str(Path(disk_tmp.name).parent)}}
    finally:
        disk_tmp.cleanup()
        if tmp is not None:
            tmp.cleanup()
