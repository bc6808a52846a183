"""Peak memory of one operation above the process baseline.

CPU: the peak resident set size (VmHWM in /proc/self/status) is reset through /proc/self/clear_refs just
before the measured call, and the baseline is the resident size at that moment (model, optimiser state and a
warm-up call already in place). Each configuration runs in a fresh subprocess so peaks cannot contaminate each
other, with glibc's mmap threshold pinned so that freed tensor buffers go back to the system at once (resident
size then follows live memory). CUDA: the caching allocator's peak (``max_memory_allocated``) above the memory
allocated before the call.

With ``isolation="shared"`` one fresh subprocess measures all cases of a configuration one after the other
(each case's objects are freed and ``malloc_trim`` returns the heap before the next baseline is read), which
saves one interpreter start per case; ``"fresh"`` (one process per case) is the cleaner default for reported
figures. Run as ``python -m isnet.bench.memory '<request json>'``; prints one JSON line per case.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict

import torch

from isnet.bench.steps import Spec, build_case

_KB = 1024


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_bytes() -> int | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb * _KB


def peak_rss_bytes() -> int | None:
    kb = _status_kb("VmHWM")
    return None if kb is None else kb * _KB


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0). False where that is not possible."""
    try:
        fd = os.open("/proc/self/clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"5")
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Collect garbage and give free heap pages back to the system (glibc), so RSS reflects live memory."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_above_baseline(fn: Callable[[], object], device: torch.device, warmup: int = 1) -> dict:
    """Run ``fn`` ``warmup`` times, then once more measuring its peak above the memory in use before it."""
    for _ in range(warmup):
        fn()
    trim_heap()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": peak - base, "baseline_bytes": base, "kind": "cuda max_memory_allocated"}
    base = rss_bytes()
    if base is None:
        return {"peak_bytes": None, "baseline_bytes": None, "kind": "unavailable (no /proc)"}
    exact = reset_peak_rss()
    fn()
    peak = peak_rss_bytes()
    kind = "peak RSS (VmHWM reset)" if exact else "peak RSS (VmHWM not resettable: upper bound)"
    return {"peak_bytes": max(0, peak - base), "baseline_bytes": base, "kind": kind}


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")  # a fixed threshold disables glibc's dynamic raising
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "0")
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def measure_cases_subprocess(names: list[str], spec: Spec, threads: int, isolation: str = "fresh",
                             timeout: float = 1800) -> dict[str, dict]:
    """Peak memory of each case: one fresh Python process per case ("fresh") or one for all ("shared")."""
    groups = [[n] for n in names] if isolation == "fresh" else [list(names)]
    out: dict[str, dict] = {}
    for group in groups:
        payload = json.dumps({"cases": group, "spec": asdict(spec), "threads": threads})
        try:
            proc = subprocess.run([sys.executable, "-m", "isnet.bench.memory", payload], capture_output=True,
                                  text=True, timeout=timeout, env=_env(threads), check=False)
        except subprocess.TimeoutExpired:
            out.update({n: {"peak_bytes": None, "error": f"timed out after {timeout:.0f}s"} for n in group})
            continue
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                out[rec.pop("case")] = rec
        tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300]
        for n in group:
            out.setdefault(n, {"peak_bytes": None, "error": tail})
    return out


def _main(argv: list[str]) -> int:
    req = json.loads(argv[0])
    torch.set_num_threads(int(req.get("threads") or torch.get_num_threads()))
    spec = Spec(**req["spec"])
    for name in req["cases"]:
        try:
            fn = build_case(name, spec)
            rec = peak_above_baseline(fn, spec.torch_device)
        except Exception as exc:  # noqa: BLE001 - report and go on with the next case
            rec = {"peak_bytes": None, "error": f"{type(exc).__name__}: {exc}"[:300]}
        fn = None
        trim_heap()
        sys.stdout.write(json.dumps({"case": name, **rec}) + "\n")  # read by measure_cases_subprocess
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
