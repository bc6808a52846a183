"""The training loader under one data cache, measured in a fresh process: time to the first batch, seconds and
images/s per epoch, and the peak resident memory above the process's baseline (taken after the manifest is
read, before the data set is built; the main process only, not DataLoader workers).

Run as ``python -m isnet.bench.loader '<request json>'``; prints one JSON line per row. ``isnet bench --suite
loader`` (:func:`isnet.bench.suites.loader_suite`) runs one process per cache mode.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from isnet.bench.memory import peak_rss_bytes, reset_peak_rss, rss_bytes, trim_heap


def _rows(req: dict) -> list[dict]:
    from isnet.config.schema import DataConfig
    from isnet.data.dataset import build_dataset, build_loader
    from isnet.data.manifest import load_manifest

    cfg = DataConfig(classes=req["classes"], image_size=req["size"], batch_size=req["batch"], cache=req["cache"],
                     cache_dtype=req["cache_dtype"], cache_dir=req.get("cache_dir") or "cache",
                     num_workers=req.get("num_workers", 0))
    records = load_manifest(req["manifest"], cfg.classes).records("train")
    n = len(records)
    label = req["label"]
    trim_heap()
    base = rss_bytes()

    def peak() -> float | None:
        p = peak_rss_bytes()
        return None if p is None or base is None else max(0, p - base) / 2**20

    def epoch(loader, t0: float) -> tuple[float, float]:
        first, seen = None, 0
        for b in loader:
            if first is None:
                first = time.perf_counter() - t0
            seen += len(b["label"])
        assert seen == n, (seen, n)
        return time.perf_counter() - t0, first

    reset_peak_rss()
    t0 = time.perf_counter()
    ds = build_dataset(records, cfg, train=True)
    loader = build_loader(ds, cfg, shuffle=True, generator=torch.Generator().manual_seed(0))
    seconds, first_batch = epoch(loader, t0)
    first_name = {"memory": "first epoch (cache fill)", "disk": "first epoch (cache fill)",
                  "none": "every epoch"}[cfg.cache] if label is None else label
    rows = [{"case": f"{cfg.cache}: {first_name}", "seconds": [seconds], "first_batch_s": first_batch,
             "peak_rss_mb": peak(), "cached": ds.cached_count()}]
    later = int(req.get("epochs", 3)) - 1
    if later > 0 and label is None and cfg.cache != "none":
        reset_peak_rss()
        runs = [epoch(loader, time.perf_counter()) for _ in range(later)]
        rows.append({"case": f"{cfg.cache}: later epochs", "seconds": [s for s, _ in runs],
                     "first_batch_s": sorted(f for _, f in runs)[len(runs) // 2], "peak_rss_mb": peak(),
                     "cached": ds.cached_count()})
    for r in rows:
        r.update(images=n, cache=cfg.cache, cache_dtype=cfg.cache_dtype,
                 baseline_rss_mb=None if base is None else base / 2**20)
    return rows


def _main(argv: list[str]) -> int:
    req = json.loads(argv[0])
    if req.get("threads"):
        torch.set_num_threads(int(req["threads"]))
    for row in _rows(req):  # the result rows, one JSON object a line, for the parent process (bench.suites)
        sys.stdout.write(json.dumps(row) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
