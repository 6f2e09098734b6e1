"""train.mixed_precision=fp16: GradScaler's overflow-skipped steps are counted and reported, not fatal; the LR
schedule advances with applied updates only; resume carries the loss scale; real non-finite values stay fatal.

On a GPU accelerate creates the GradScaler itself. On CPU it creates none (`Accelerator(mixed_precision="fp16",
cpu=True).scaler is None`: fp16 on CPU trains unscaled), so these tests give the run's Accelerator a CPU
GradScaler, `torch.amp.GradScaler("cpu")`, and fp16 autocast, as accelerate does on CUDA. A huge initial
scale makes the first steps overflow for sure; what stays GPU-only is accelerate building that scaler.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from reelora.train import checkpoint
from reelora.train.loop import run
from tests.train.conftest import tiny_cfg

FP16 = ("train.mixed_precision=fp16", "optim.schedule=linear", "optim.warmup_steps=0", "train.max_steps=5")


def _metrics(out):
    return [json.loads(l) for l in (out / "logs" / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def cpu_grad_scaler(monkeypatch):
    """Make run()'s Accelerator hold a CPU GradScaler under fp16; returns a setter for its init arguments."""
    import accelerate

    kwargs = {"init_scale": 2.0**30, "backoff_factor": 2.0**-8}

    class WithScaler(accelerate.Accelerator):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            if self.mixed_precision == "fp16":
                assert self.scaler is None  # accelerate makes none on CPU: the reason for this fixture
                self.scaler = torch.amp.GradScaler("cpu", **kwargs)
                self.native_amp = True  # fp16 autocast, and clip_grad_norm_ unscales first (as on CUDA)

    monkeypatch.setattr(accelerate, "Accelerator", WithScaler)
    return kwargs


def _inf_gradient_at(monkeypatch, steps: set[int]):
    """From the forward of the given steps on, the backward sends inf into the gradients (the loss stays finite)."""
    from reelora.models.wan import WanSpec

    calls, real = {"n": 0}, WanSpec.forward

    def forward(self, *args):
        calls["n"] += 1
        pred, target = real(self, *args)
        if calls["n"] in steps and pred.requires_grad:
            pred.register_hook(lambda g: g * float("inf"))
        return pred, target

    monkeypatch.setattr(WanSpec, "forward", forward)


@pytest.mark.slow
def test_overflow_steps_are_skipped_counted_and_reported_and_resume_exactly(tmp_path, shards, cache, cpu_grad_scaler, capsys):
    straight = tmp_path / "straight"
    assert run(tiny_cfg(straight, shards, cache, *FP16, "train.checkpoint_every=0")) == 0
    rows = _metrics(straight)
    skipped = [not math.isfinite(r["train/grad_norm"]) for r in rows]
    assert skipped[0] and not all(skipped)  # 2**30 overflows; the scale comes down and steps apply
    assert [r["train/skipped_steps"] for r in rows] == [sum(skipped[: i + 1]) for i in range(len(rows))]
    assert all(math.isfinite(r["train/loss"]) for r in rows)
    scales = [r["train/loss_scale"] for r in rows]
    assert scales[0] == 2.0**30 and scales[1] == 2.0**22  # one backoff of 2**-8 after the first overflow
    # The schedule advances with applied updates only: a skipped step's successor gets the same LR, and the
    # LR of step s is the linear schedule's at (applied updates before s).
    lrs = [r["train/lr"] for r in rows]
    applied = [i - rows[i - 1]["train/skipped_steps"] if i else 0 for i in range(len(rows))]
    assert lrs == pytest.approx([1e-3 * (1 - a / 5) for a in applied])
    out = capsys.readouterr().out
    assert f"fp16 loss scaling: {sum(skipped)} of 5 steps skipped by GradScaler" in out

    # Resume at step 2 carries the loss scale and the schedule position: the same steps skip, same bits.
    split = tmp_path / "split"
    assert run(tiny_cfg(split, shards, cache, *FP16, "train.max_steps=2", "train.checkpoint_every=2")) == 0
    state = json.loads((checkpoint.latest(split) / "state.json").read_text())
    assert state["grad_scaler"]["scale"] == scales[2] and state["scheduler"]["last_epoch"] == applied[2]
    assert run(tiny_cfg(split, shards, cache, *FP16, "train.resume=latest")) == 0
    keys = ("train/loss", "train/lr", "train/skipped_steps", "train/loss_scale")
    assert [[r[k] for k in keys] for r in _metrics(split)[2:]] == [[r[k] for k in keys] for r in rows[2:]]
    a, b = (load_file(p / "adapter" / "pytorch_lora_weights.safetensors") for p in (straight, split))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_nan_in_the_forward_is_still_fatal_under_fp16(tmp_path, shards, cache, cpu_grad_scaler, monkeypatch, capsys):
    from reelora.models.wan import WanSpec

    calls, real = {"n": 0}, WanSpec.forward

    def forward(self, *args):
        calls["n"] += 1
        pred, target = real(self, *args)
        return (pred * float("nan") if calls["n"] == 2 else pred), target

    monkeypatch.setattr(WanSpec, "forward", forward)
    assert run(tiny_cfg(tmp_path / "run", shards, cache, *FP16, "train.checkpoint_every=0")) == 1
    assert "non-finite loss at step 2" in capsys.readouterr().err


@pytest.mark.parametrize("precision, init_scale, fatal", [("fp16", 2.0**10, False), ("fp16", 1.0, True), ("no", None, True)])
def test_inf_gradients_skip_only_while_the_loss_scale_can_come_down(precision, init_scale, fatal, tmp_path, shards,
                                                                     cache, cpu_grad_scaler, monkeypatch, capsys):
    cpu_grad_scaler.update(init_scale=init_scale or 1.0, backoff_factor=0.5)
    _inf_gradient_at(monkeypatch, {2})
    out = tmp_path / "run"
    rc = run(tiny_cfg(out, shards, cache, f"train.mixed_precision='{precision}'", "train.max_steps=3",
                      "train.checkpoint_every=0"))
    if fatal:  # no scaler, or a scale of 1 already: the gradients overflow unscaled
        assert rc == 1
        assert "non-finite gradient norm at step 2" in capsys.readouterr().err
        return
    assert rc == 0
    rows = _metrics(out)
    assert [r["train/skipped_steps"] for r in rows] == [0, 1, 1]
    assert [r["train/loss_scale"] for r in rows] == [2.0**10, 2.0**10, 2.0**9]
