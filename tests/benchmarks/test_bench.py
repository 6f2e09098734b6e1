"""reelora.train.bench.time_train_steps, the loop benchmarks/ltx2_memory.py, wan22_memory.py and wan_realsize.py
share: which steps run, which are timed, what comes back (a fake step on a fake clock, so the times are exact);
and ltx2_memory.py run as the GPU box runs it (`python -P`: only the installed package is importable), shrunk."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_ltx2_memory_runs_under_python_P_on_a_shrunk_model():
    """-P keeps benchmarks/ and the cwd off sys.path: the script must find what it shares in reelora.train.bench.
    1 transformer layer of width 16, text width 16 x 3, a 9x64x64 clip -> 128 x 2 x 2 x 2 latents (8 tokens)."""
    from reelora.models.ltx2 import TINY_CONNECTORS

    arch = dict(num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, audio_num_attention_heads=2,
                audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=1, caption_channels=16)
    root = Path(__file__).parents[2]
    proc = subprocess.run([sys.executable, "-P", "benchmarks/ltx2_memory.py", "--config", "configs/ltx2-lora.yaml",
                           "--frames", "9", "--height", "64", "--width", "64", "--text-len", "16", "--steps", "1",
                           "--arch", json.dumps(arch), "--connectors", json.dumps(TINY_CONNECTORS)],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["device"] == "cpu" and out["peak_gib"] is None  # no CUDA peak on a CPU
    assert out["latents"] == [128, 2, 2, 2] and out["tokens"] == 8
    assert out["step_s"] > 0 and out["loss"] > 0
    # rank 32 on 8 dim->dim projections (attn1, attn2 q/k/v/o) and the FFN's dim->4dim->dim
    assert out["lora_params"] == 32 * (8 * (16 + 16) + 2 * (16 + 64)) == 13312
    assert out["connector_grads"] == 0  # the connectors stay out of autograd
