"""reelora.train.bench.time_train_steps, the loop benchmarks/ltx2_memory.py, wan22_memory.py and wan_realsize.py
share: which steps run, which are timed, what comes back (a fake step on a fake clock, so the times are exact)."""
from __future__ import annotations

import pytest
import torch

import reelora.train.step as step_module
from reelora.train import bench


@pytest.fixture
def fake_steps(monkeypatch):
    """train_step replaced by one that takes `step` seconds of a fake clock and reports loss 10 * step."""
    clock, calls = [0.0], []

    def fake_step(ctx, micro_batches, step):
        calls.append((ctx, len(micro_batches), step))
        clock[0] += step
        return {"loss": 10.0 * step}

    monkeypatch.setattr(step_module, "train_step", fake_step)
    monkeypatch.setattr(bench, "perf_counter", lambda: clock[0])
    return calls


def test_warmup_steps_run_untimed_then_the_timed_steps(fake_steps):
    seen = []
    out = bench.time_train_steps("ctx", [{}, {}], 3, torch.device("cpu"), warmup=2,
                                 on_step=lambda *args: seen.append(args))
    assert fake_steps == [("ctx", 2, s) for s in (1, 2, 3, 4, 5)]  # numbered from 1, warm-up first, same micro-batches
    assert out["step_times_s"] == [3.0, 4.0, 5.0]  # steps 1 and 2 (warm-up) not among them
    assert out["step_s"] == 4.0  # the median
    assert out["losses"] == [10.0, 20.0, 30.0, 40.0, 50.0]  # warm-up losses kept
    assert out["metrics"] == {"loss": 50.0}
    assert out["peak_bytes"] is None  # no CUDA peak on a CPU
    assert set(out) == {"step_times_s", "step_s", "losses", "metrics", "peak_bytes"}
    assert [(s, dt, warm) for s, dt, warm, _ in seen] == [(1, 1.0, True), (2, 2.0, True), (3, 3.0, False),
                                                          (4, 4.0, False), (5, 5.0, False)]


def test_default_is_one_warmup_step(fake_steps):
    out = bench.time_train_steps(None, [{}], 2, torch.device("cpu"))
    assert [s for _, _, s in fake_steps] == [1, 2, 3]
    assert out["step_times_s"] == [2.0, 3.0] and out["step_s"] == 2.5
