"""Checkpoints that survive a kill at any moment.

Each file is written to a temporary name, flushed to disk and renamed over the old one, so a crash leaves
either the old or the new file, never half of one. A SHA-256 sidecar detects a file damaged afterwards,
and loading uses ``weights_only=True``: a checkpoint can never execute code.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Serialise ``state`` (tensors, dicts, lists and plain values only) atomically with a checksum."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    _atomic_write(p, data)
    _atomic_write(p.with_name(p.name + ".sha256"), (_digest(data) + "\n").encode())
    return p


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify a checkpoint; a checksum mismatch or unreadable file raises ``CheckpointError``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    data = p.read_bytes()
    side = p.with_name(p.name + ".sha256")
    if side.is_file():
        expected = side.read_text().strip()
        if expected and expected != _digest(data):
            raise CheckpointError(f"checkpoint {p} is damaged (checksum mismatch)")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p} cannot be loaded: {exc}") from None
