"""Where a result came from: the machine, the library versions and the commit, recorded beside the numbers so
that a committed result file names what produced it (the benchmark, the stress test)."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch


def _git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when tracked files changed), so that a result names its code."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info() -> dict:
    """The CPU, cores, threads, load, platform, library versions, GPU and commit of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None

    def ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    info = {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
            "commit": _git_commit(),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "load_avg": load,
            "platform": platform.platform(), "python": platform.python_version(),
            "versions": {p: ver(p) for p in ("torch", "torchvision", "zennit", "monai", "isnet")}}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def write_run_info(path: str | Path, command: str, **extra: object) -> Path:
    """``run_info.json``: the command, the machine (with the commit) and ``extra`` settings, beside a result."""
    import json

    from isnet.files import atomic_write_text

    return atomic_write_text(path, json.dumps({"command": command, "machine": machine_info(), **extra}, indent=2,
                                              default=str))


if __name__ == "__main__":  # scripts: python -m isnet.tracking.provenance PATH COMMAND [KEY=VALUE ...]
    import sys

    target, cmd, *pairs = sys.argv[1:]
    write_run_info(target, cmd, **dict(p.split("=", 1) for p in pairs))
