"""Atomic writes: a failed write leaves the old file and no temporary; a full disk is named as such."""
from __future__ import annotations

import errno

import pytest
import torch

from reelora import files


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "index.json"
    files.write_json_atomic(target, {"v": 1})

    def full(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=f"no space left on device while writing {target}"):
        files.atomic_write(target, full)
    assert target.read_text() == '{\n "v": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]


def test_safetensors_out_of_space_is_named(tmp_path, monkeypatch):
    from safetensors import SafetensorError

    import safetensors.torch

    def full(*a, **k):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull }) os error 28")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="no space left on device while writing .*w.safetensors"):
        files.save_safetensors_atomic({"a": torch.zeros(1)}, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []
