"""Writing result files so that a reader never sees half of one: write beside the target, then rename."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp)`` to fill a temporary file in ``path``'s own folder, then rename it over ``path``.

    The rename (``os.replace``) is atomic on POSIX file systems, and the temporary name is unique (process id and
    a random part), so readers never see a partial file, an interrupted or failing write leaves the previous file
    and no temporary behind, and two writers of the same path both leave a complete one. The folder must exist.
    Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only still there when write or the rename failed
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`atomic_write`, creating the folder if missing; an
    interrupted write leaves the previous file, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
