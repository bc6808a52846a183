"""Wall-clock timing: warm-up calls, then repeats interleaved round-robin over all cases.

Interleaving (case A, B, C, A, B, C, ...) exposes every case to the same background load, so the ratios between
cases stay meaningful on a shared machine even when absolute times drift.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


@dataclass
class Timing:
    times: list[float]
    #: process CPU seconds (all threads) of the same calls: on a shared CPU much less sensitive to other load
    cpu_times: list[float] = field(default_factory=list)

    @property
    def cpu_median(self) -> float | None:
        return statistics.median(self.cpu_times) if self.cpu_times else None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def spread(self) -> tuple[float, float]:
        """(min, max) of the repeats."""
        return min(self.times), max(self.times)

    @property
    def rel_spread(self) -> float:
        """(max - min) / median: how noisy the repeats were."""
        lo, hi = self.spread
        return (hi - lo) / self.median if self.median > 0 else 0.0


def synchronizer(device: torch.device) -> Callable[[], None]:
    """Wait for queued kernels before reading the clock (CUDA launches are asynchronous)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_interleaved(fns: Mapping[str, Callable[[], object]], *, warmup: int, repeats: int,
                     device: torch.device | None = None,
                     on_error: Callable[[str, BaseException], None] | None = None) -> dict[str, Timing]:
    """Call each fn ``warmup`` times, then ``repeats`` rounds of one call each; returns per-case timings.
    A case that raises is dropped (reported through ``on_error``), the others go on."""
    sync = synchronizer(device or torch.device("cpu"))
    live = dict(fns)
    out: dict[str, list[float]] = {k: [] for k in live}
    cpu: dict[str, list[float]] = {k: [] for k in live}

    def call(name: str) -> tuple[float, float] | None:
        try:
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            live[name]()
            sync()
            return time.perf_counter() - t0, time.process_time() - c0
        except Exception as exc:
            live.pop(name)
            out.pop(name, None)
            if on_error is None:
                raise
            on_error(name, exc)
            return None

    for name in list(live):
        for _ in range(warmup):
            if name in live:
                call(name)
    for _ in range(max(1, repeats)):
        for name in list(live):
            dt = call(name)
            if dt is not None:
                out[name].append(dt[0])
                cpu[name].append(dt[1])
    return {k: Timing(v, cpu[k]) for k, v in out.items() if v}
