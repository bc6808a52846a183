"""Checkpoints that survive a kill at any moment.

Each file is written to a temporary name, flushed to disk and renamed over the old one, so a crash leaves
either the old or the new file, never half of one. A SHA-256 sidecar detects a file damaged afterwards,
and loading uses ``weights_only=True``: a checkpoint can never execute code.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
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


def previous_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(p.stem + ".prev" + p.suffix)


def save_checkpoint(state: dict[str, Any], path: str | Path, keep_previous: bool = False) -> Path:
    """Serialise ``state`` (tensors, dicts, lists and plain values only) atomically with a checksum.

    With ``keep_previous`` the file being replaced is kept as ``<name>.prev.pt``: if the new one is later
    found damaged, :func:`load_latest_checkpoint` falls back to it. Nothing is replaced until the new file
    and its checksum are completely on disk, so a full disk or a kill mid-write leaves the old files intact.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    side = p.with_name(p.name + ".sha256")
    tmp = p.with_name(f".{p.name}.new-{os.getpid()}")
    tmp_side = p.with_name(f".{side.name}.new-{os.getpid()}")
    try:
        _atomic_write(tmp, data)
        _atomic_write(tmp_side, (_digest(data) + "\n").encode())
        if keep_previous and p.exists():
            prev = previous_path(p)
            os.replace(p, prev)
            if side.exists():
                os.replace(side, prev.with_name(prev.name + ".sha256"))
        os.replace(tmp_side, side)
        os.replace(tmp, p)
    finally:
        for t in (tmp, tmp_side):
            if t.exists():
                t.unlink()
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


def load_latest_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """Load ``path``, or its ``.prev`` copy when ``path`` is missing or damaged (saying so on stderr)."""
    p = Path(path)
    try:
        return load_checkpoint(p, map_location), p
    except CheckpointError as first:
        prev = previous_path(p)
        if not prev.is_file():
            raise
        print(f"warning: {first}; using the previous checkpoint {prev}", file=sys.stderr, flush=True)
        return load_checkpoint(prev, map_location), prev
