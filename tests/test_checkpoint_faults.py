"""Checkpoint faults: a damaged file is detected and the previous one used; a failed write (disk full)
leaves the old checkpoint intact; loading never unpickles code."""

import errno
import logging
import os
import pickle

import pytest
import torch

from isnet.train import checkpoint as ck


def _state(v: float) -> dict:
    return {"epoch": int(v), "model": {"w": torch.full((4,), v)}}


def _warnings(caplog) -> str:
    """What the library logged as warnings (the isnet command shows them on stderr)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, caplog):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(_state(1), path, keep_previous=True)
    ck.save_checkpoint(_state(2), path, keep_previous=True)
    assert ck.load_checkpoint(path)["epoch"] == 2
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])            # truncated on disk
    with pytest.raises(ck.CheckpointError, match="checksum"):
        ck.load_checkpoint(path)
    state, used = ck.load_latest_checkpoint(path)
    assert used == ck.previous_path(path) and state["epoch"] == 1
    assert "using the previous checkpoint" in _warnings(caplog)


def test_disk_full_while_writing_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(_state(1), path, keep_previous=True)
    real_write = ck._atomic_write

    def full_disk(p, data):
        if p.name.startswith(".last.pt.new"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(p, data)

    monkeypatch.setattr(ck, "_atomic_write", full_disk)
    with pytest.raises(OSError):
        ck.save_checkpoint(_state(2), path, keep_previous=True)
    monkeypatch.undo()
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert not [f for f in os.listdir(tmp_path) if ".new-" in f], "temporary files must be cleaned up"


def test_checkpoints_load_with_weights_only(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(ck.CheckpointError):
        ck.load_checkpoint(path)


def _flip_tensor_byte(path):
    """Damage a byte inside the first tensor record: PyTorch alone loads such a file without a word."""
    import zipfile

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename)
    start = info.header_offset + 30 + int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little") \
        + int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    data[start + info.file_size // 2] ^= 0x55
    path.write_bytes(bytes(data))


def test_damage_is_detected_without_the_sidecar(tmp_path):
    path = tmp_path / "last.pt"
    ck.save_checkpoint(_state(0), path)
    assert torch.load(path, weights_only=True)["epoch"] == 0  # still a plain PyTorch file
    path.with_name("last.pt.sha256").unlink()
    assert ck.load_checkpoint(path)["epoch"] == 0
    _flip_tensor_byte(path)
    with pytest.raises(ck.CheckpointError, match="damaged"):
        ck.load_checkpoint(path)
    with pytest.raises(ck.CheckpointError, match="damaged"):
        ck.load_latest_checkpoint(path)


def test_a_file_without_any_checksum_is_refused_for_resume_and_loaded_with_a_warning_elsewhere(tmp_path, caplog):
    path = tmp_path / "old.pt"
    torch.save(_state(3), path)  # as written before checksums were embedded, sidecar lost
    with pytest.raises(ck.CheckpointError, match="carries no checksum"):
        ck.load_latest_checkpoint(path)
    assert ck.load_checkpoint(path)["epoch"] == 3
    assert "loading it unverified" in _warnings(caplog)
