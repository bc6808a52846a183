"""Checkpoint faults: a damaged file is detected and the previous one used; a failed write (disk full)
leaves the old checkpoint intact; loading never unpickles code."""

import errno
import os
import pickle

import pytest
import torch

from isnet.train import checkpoint as ck


def _state(v: float) -> dict:
    return {"epoch": int(v), "model": {"w": torch.full((4,), v)}}


def test_truncated_checkpoint_falls_back_to_previous(tmp_path, capsys):
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
    assert "using the previous checkpoint" in capsys.readouterr().err


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
