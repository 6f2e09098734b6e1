"""The learning-rate schedule (train/loop.py lr_factor): warmup, then constant, linear or cosine decay.

`lr_factor(cfg, s)` is the multiplier after s optimizer steps, so optimizer step k (from 1) runs at
lr * lr_factor(cfg, k - 1); warmup covers steps 1..warmup_steps, and max_steps ends at min_lr_ratio.
"""
from __future__ import annotations

import math

import pytest
import torch

from reelora.train.config import load_config
from reelora.train.loop import lr_factor


def cfg(schedule: str, warmup: int = 2, max_steps: int = 10, min_lr_ratio: float = 0.1):
    return load_config(None, [f"optim.schedule={schedule}", f"optim.warmup_steps={warmup}",
                              f"train.max_steps={max_steps}", f"optim.min_lr_ratio={min_lr_ratio}"])


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_warmup_is_linear_and_ends_at_the_peak(schedule):
    c = cfg(schedule, warmup=3)
    assert [lr_factor(c, s) for s in range(4)] == [1 / 4, 2 / 4, 3 / 4, 1.0]


def test_constant():
    c = cfg("constant", warmup=2)
    assert [lr_factor(c, s) for s in (0, 1, 2, 5, 10, 50)] == [1 / 3, 2 / 3, 1.0, 1.0, 1.0, 1.0]
    assert lr_factor(cfg("constant", warmup=0), 0) == 1.0


def test_linear_hand_values():
    c = cfg("linear", warmup=2, max_steps=10, min_lr_ratio=0.1)
    # after warmup, progress = (s - 2) / 8 and the factor is 0.1 + 0.9 * (1 - progress)
    assert lr_factor(c, 2) == 1.0
    assert lr_factor(c, 4) == 0.1 + 0.9 * 0.75
    assert lr_factor(c, 6) == 0.1 + 0.9 * 0.5
    assert lr_factor(c, 10) == 0.1  # the end value at max_steps
    assert lr_factor(c, 12) == 0.1  # and it stays there
    assert lr_factor(cfg("linear", warmup=0, max_steps=4, min_lr_ratio=0.0), 1) == 0.75


def test_cosine_hand_values():
    c = cfg("cosine", warmup=2, max_steps=10, min_lr_ratio=0.1)
    assert lr_factor(c, 2) == 1.0
    assert lr_factor(c, 4) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.sqrt(0.5)), abs=1e-15)  # cos(pi / 4)
    assert lr_factor(c, 6) == pytest.approx(0.1 + 0.9 * 0.5, abs=1e-15)  # halfway: cos(pi / 2) = 0
    assert lr_factor(c, 8) == pytest.approx(0.1 + 0.9 * 0.5 * (1 - math.sqrt(0.5)), abs=1e-15)
    assert lr_factor(c, 10) == 0.1
    assert lr_factor(c, 20) == 0.1
    assert lr_factor(cfg("cosine", warmup=0, max_steps=10, min_lr_ratio=0.0), 10) == 0.0


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decay_is_monotone_between_the_peak_and_the_end(schedule):
    c = cfg(schedule, warmup=5, max_steps=50, min_lr_ratio=0.2)
    after = [lr_factor(c, s) for s in range(5, 51)]
    assert after[0] == 1.0 and after[-1] == pytest.approx(0.2, abs=1e-15)
    assert all(a > b for a, b in zip(after, after[1:]))


def test_warmup_as_long_as_training_never_divides_by_zero():
    c = cfg("cosine", warmup=4, max_steps=4, min_lr_ratio=0.0)
    assert [lr_factor(c, s) for s in range(6)] == [1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0, 0.0]


def test_the_optimizer_sees_the_factor_of_the_steps_already_taken():
    # How the loop uses it: LambdaLR evaluates lr_factor(0) for the first step, lr_factor(k) after k steps.
    c = cfg("cosine", warmup=2, max_steps=10)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(c, s))
    seen = []
    for _ in range(11):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == [0.5 * lr_factor(c, s) for s in range(11)]
    assert seen[0] == 0.5 / 3 and seen[2] == 0.5 and seen[10] == pytest.approx(0.05, abs=1e-15)
