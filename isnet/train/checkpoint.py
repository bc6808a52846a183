"""Checkpoints that survive a kill at any moment.

Each file is written to a temporary name, flushed to disk and renamed over the old one, so a crash leaves
either the old or the new file, never half of one. Loading uses ``weights_only=True``: a checkpoint can
never execute code.

Damage is detected by a SHA-256 checksum carried *inside* the file (a record ``.isnet_sha256`` appended to
PyTorch's zip archive, over the name and bytes of every other record; the file still loads with plain
``torch.load``), so a copy (an MLflow artifact, a file moved without its neighbours) verifies itself; the
``<name>.sha256`` sidecar of the whole file is written too. PyTorch itself does not notice a flipped byte in
a tensor. A file with neither checksum (written before checksums were embedded, sidecar lost) is refused
where a run resumes from it and loaded with a warning elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch

from isnet.files import atomic_write

logger = logging.getLogger(__name__)

CHECKSUM_RECORD = ".isnet_sha256"
#: the file names of a run's checkpoints, in ``<checkpoint_dir>/<run id>/`` and under the MLflow artifact
#: folder ``ARTIFACT_DIR``; nothing else spells them out
BEST_NAME = "best.pt"
LAST_NAME = "last.pt"
ARTIFACT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    pass


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _records_digest(archive: zipfile.ZipFile, skip: str | None = None) -> str:
    """SHA-256 over the name and content of every record but ``skip`` (reading checks each CRC-32 too)."""
    h = hashlib.sha256()
    for info in archive.infolist():
        if info.filename == skip:
            continue
        data = archive.read(info)
        name = info.filename.encode()
        h.update(len(name).to_bytes(8, "little") + name + len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _embed_checksum(data: bytes) -> bytes:
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf) as archive:
        digest = _records_digest(archive)
        prefix = archive.namelist()[0].split("/", 1)[0]
    with zipfile.ZipFile(buf, "a") as archive:
        archive.writestr(f"{prefix}/{CHECKSUM_RECORD}", digest + "\n")
    return buf.getvalue()


def _embedded_checksum_ok(p: Path, data: bytes) -> bool:
    """True when the file carries a checksum and it matches; False when it carries none; raises
    ``CheckpointError`` when it is damaged."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise CheckpointError(f"checkpoint {p} is damaged (not a readable PyTorch archive)") from None
    with archive:
        record = next((n for n in archive.namelist() if n.rsplit("/", 1)[-1] == CHECKSUM_RECORD), None)
        if record is None:
            return False
        try:
            expected = archive.read(record).decode().strip()
            actual = _records_digest(archive, skip=record)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {p} is damaged ({exc})") from None
    if expected != actual:
        raise CheckpointError(f"checkpoint {p} is damaged (embedded checksum mismatch)")
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through :func:`isnet.files.atomic_write`, synced to disk before the rename: a
    checkpoint must survive a power cut, not only a killed process."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


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
    data = _embed_checksum(buf.getvalue())
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    require_checksum: bool = False) -> dict[str, Any]:
    """Load and verify a checkpoint; a checksum mismatch or unreadable file raises ``CheckpointError``.

    A file without any checksum (neither embedded nor a sidecar) raises too with ``require_checksum``,
    else it is loaded with a logged warning (on stderr in the isnet command)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}")
    data = p.read_bytes()
    side = p.with_name(p.name + ".sha256")
    expected = side.read_text().strip() if side.is_file() else ""
    if expected and expected != _digest(data):
        raise CheckpointError(f"checkpoint {p} is damaged (checksum mismatch)")
    if not _embedded_checksum_ok(p, data) and not expected:
        what = (f"checkpoint {p} carries no checksum (it predates embedded checksums and its {side.name} "
                f"sidecar is missing), so damage cannot be detected")
        if require_checksum:
            raise CheckpointError(what + "; restore the sidecar or start a new run")
        logger.warning(f"warning: {what}; loading it unverified")
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"checkpoint {p} cannot be loaded: {exc}") from None


def load_latest_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """Load ``path``, or its ``.prev`` copy when ``path`` is missing, damaged or unverifiable (saying so
    in a logged warning): what a run resumes from must carry a checksum."""
    p = Path(path)
    try:
        return load_checkpoint(p, map_location, require_checksum=True), p
    except CheckpointError as first:
        prev = previous_path(p)
        if not prev.is_file():
            raise
        logger.warning(f"warning: {first}; using the previous checkpoint {prev}")
        return load_checkpoint(prev, map_location, require_checksum=True), prev
