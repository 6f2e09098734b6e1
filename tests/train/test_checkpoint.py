"""train/checkpoint.py: a save cut short leaves a temporary folder that the next run removes."""
from __future__ import annotations

import pytest
import torch

from reelora.train import checkpoint
from reelora.train.loop import run
from tests.train.conftest import tiny_cfg


def _save(out, step: int) -> None:
    t = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(t.parameters(), lr=0.1)
    checkpoint.save(out, step, {"w": t.weight.detach()}, opt, {"samples_seen": step}, keep_last=5)


def _leftover(out, step: int):
    """What a save killed mid-write (crash, ENOSPC) leaves: its temporary folder with a torn file."""
    tmp = checkpoint.checkpoint_dir(out) / f".tmp-step-{step:06d}-12345"
    tmp.mkdir(parents=True)
    (tmp / "lora.safetensors").write_bytes(b"torn")
    return tmp


def test_remove_partial_deletes_only_temporary_folders(tmp_path):
    assert checkpoint.remove_partial(tmp_path) == []  # no checkpoints folder yet: nothing to do
    _save(tmp_path, 1)
    _save(tmp_path, 2)
    tmp = _leftover(tmp_path, 3)
    assert checkpoint.remove_partial(tmp_path) == [tmp]
    assert not tmp.exists()
    assert [p.name for p in checkpoint.list_complete(tmp_path)] == ["step-000001", "step-000002"]
    assert sorted(p.name for p in checkpoint.checkpoint_dir(tmp_path).iterdir()) == ["step-000001", "step-000002"]


def test_a_run_removes_a_leftover_save_when_it_starts_and_when_it_resumes(tmp_path, shards, cache):
    out = tmp_path / "run"
    fresh = _leftover(out, 1)  # a crashed earlier attempt that never completed a checkpoint
    assert run(tiny_cfg(out, shards, cache, "train.max_steps=1", "optim.schedule=constant")) == 0
    assert not fresh.exists()
    assert [p.name for p in checkpoint.list_complete(out)] == ["step-000001"]

    again = _leftover(out, 2)
    assert run(tiny_cfg(out, shards, cache, "train.max_steps=2", "optim.schedule=constant",
                    "train.resume=latest")) == 0
    assert not again.exists()
    assert [p.name for p in checkpoint.list_complete(out)] == ["step-000001", "step-000002"]


def test_a_full_disk_at_a_checkpoint_or_export_is_a_clean_error_that_keeps_the_last_checkpoint(
        tmp_path, shards, cache, monkeypatch, capsys):
    import errno

    import safetensors.torch

    out = tmp_path / "run"
    real = checkpoint.save_file

    def full_at_step_2(tensors, path, *args, **kwargs):
        if ".tmp-step-000002" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint, "save_file", full_at_step_2)
    assert run(tiny_cfg(out, shards, cache, "train.max_steps=3", "train.checkpoint_every=1")) == 1
    err = capsys.readouterr().err
    assert f"{checkpoint.checkpoint_dir(out) / 'step-000002'}: no space left on device" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in checkpoint.checkpoint_dir(out).iterdir()) == ["step-000001"]  # no .tmp-step-*
    monkeypatch.undo()

    # the adapter export fails alike (its files are written atomically: none is left torn) ...
    def disk_full(tensors, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    resume = ("train.max_steps=3", "train.checkpoint_every=1", "train.resume=latest")
    assert run(tiny_cfg(out, shards, cache, *resume)) == 1
    printed, err = capsys.readouterr()
    assert f"resumed from {checkpoint.checkpoint_dir(out) / 'step-000001'} at step 1" in printed
    assert f"{out / 'adapter'}: no space left on device" in err and "Traceback" not in err
    assert not list((out / "adapter").glob("*.safetensors*")) and not list((out / "adapter").glob(".*.tmp"))
    monkeypatch.undo()
    # ... and once there is space, resuming from the last complete checkpoint finishes the run
    assert run(tiny_cfg(out, shards, cache, *resume)) == 0
    assert (out / "adapter" / "pytorch_lora_weights.safetensors").is_file()
    assert [p.name for p in checkpoint.list_complete(out)] == ["step-000002", "step-000003"]


def test_optimizer_state_with_nested_dicts_and_python_scalars_round_trips(tmp_path):
    """bitsandbytes' AdamW8bit keeps an int step and its 8-bit state in a nested dict: both come back as they were."""
    p = torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.SGD([p], lr=0.1)
    state = {"state": {0: {"step": 7, "__quant__": {"state1": torch.arange(4, dtype=torch.uint8), "absmax1": torch.ones(1)}}},
             "param_groups": [{**opt.state_dict()["param_groups"][0]}]}
    ck = checkpoint.save(tmp_path, 1, {"w.lora_A.weight": torch.ones(1)}, state, {"samples_seen": 0}, keep_last=1)
    fresh = torch.optim.SGD([p], lr=0.1)
    checkpoint.load(ck, fresh)
    got = fresh.state_dict()["state"][0]
    assert got["step"] == 7 and isinstance(got["step"], int)
    assert torch.equal(got["__quant__"]["state1"], torch.arange(4, dtype=torch.uint8))
    assert torch.equal(got["__quant__"]["absmax1"], torch.ones(1))


def test_adamw8bit_without_bitsandbytes_names_the_key_and_the_extra(tmp_path, monkeypatch):
    import sys

    from reelora.train.config import ConfigError, load_config
    from reelora.train.loop import make_optimizer

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if not installed
    cfg = load_config(None, ["optim.name=adamw8bit"])
    with pytest.raises(ConfigError, match=r"'optim.name': adamw8bit needs bitsandbytes \(pip install 'reelora\[8bit\]'\)"):
        make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
