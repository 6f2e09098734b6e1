"""train/step.py's randomness: per-step generators, timestep sampling, the shift, and its quantiles.

A golden-loss failure in test_train.py says only that something moved; these say which piece.
"""
from __future__ import annotations

import math

import pytest
import torch

from reelora.train.config import TrainConfig
from reelora.train.batches import mix_seed
from reelora.train.step import sample_sigmas, shift_sigmas, sigma_quantile, step_generator


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------- generator


def test_step_generator_is_seeded_from_seed_step_rank_and_micro_step():
    g = step_generator(7, 3, 1, 0)
    assert g.initial_seed() == mix_seed(7, 3, 1, 0)
    # Same (seed, step, rank, micro): the same draws in any process, so resume needs no RNG state.
    assert torch.equal(torch.rand(8, generator=g), torch.rand(8, generator=step_generator(7, 3, 1, 0)))
    others = [(8, 3, 1, 0), (7, 4, 1, 0), (7, 3, 0, 0), (7, 3, 1, 1)]
    assert len({step_generator(*parts).initial_seed() for parts in [(7, 3, 1, 0), *others]}) == 5


# --------------------------------------------------------------------------------------------- shift


def test_shift_hand_values():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    # s t / (1 + (s - 1) t) with s = 3: 0, 0.75 / 1.5, 1.5 / 2, 3 / 3
    assert shift_sigmas(t, 3.0).tolist() == [0.0, 0.5, 0.75, 1.0]
    # s = 1/3 mirrors it: 0.5 -> (1/6) / (2/3) = 0.25
    assert shift_sigmas(torch.tensor(0.5, dtype=torch.float64), 1 / 3).item() == pytest.approx(0.25, abs=1e-15)
    assert torch.equal(shift_sigmas(t, 1.0), t)  # no shift


def test_shift_keeps_the_ends_and_order_and_moves_mass_towards_noise():
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (0.5, 2.0, 5.0):
        out = shift_sigmas(t, s)
        assert out[0] == 0 and out[-1] == 1
        assert bool((out[1:] > out[:-1]).all())
    assert bool((shift_sigmas(t[1:-1], 3.0) > t[1:-1]).all())  # s > 1: noisier (higher sigma) everywhere inside
    assert bool((shift_sigmas(t[1:-1], 0.5) < t[1:-1]).all())


# --------------------------------------------------------------------------------------------- sampling


def test_uniform_sampling_is_the_generators_uniform_draws_shifted():
    cfg = TrainConfig(timestep_sampling="uniform", flow_shift=3.0)
    sigmas = sample_sigmas(1000, gen(1), cfg)
    t = torch.rand(1000, generator=gen(1))
    assert torch.equal(sigmas, 3.0 * t / (1.0 + 2.0 * t))
    assert sigmas.shape == (1000,) and sigmas.dtype == torch.float32
    assert 0 <= sigmas.min() and sigmas.max() < 1


def test_logit_normal_sampling_is_sigmoid_of_the_scaled_normal_shifted():
    cfg = TrainConfig(timestep_sampling="logit_normal", logit_mean=0.5, logit_std=2.0, flow_shift=1.0)
    expected = torch.sigmoid(0.5 + 2.0 * torch.randn(1000, generator=gen(2)))
    assert torch.equal(sample_sigmas(1000, gen(2), cfg), expected)
    cfg = TrainConfig(timestep_sampling="logit_normal", logit_mean=0.5, logit_std=2.0, flow_shift=5.0)
    assert torch.equal(sample_sigmas(1000, gen(2), cfg), shift_sigmas(expected, 5.0))


@pytest.mark.parametrize("sampling", ["uniform", "logit_normal"])
def test_sampling_is_deterministic_per_generator_and_inside_zero_one(sampling):
    cfg = TrainConfig(timestep_sampling=sampling, flow_shift=3.0)
    a = sample_sigmas(4096, step_generator(0, 5, 0, 0), cfg)
    assert torch.equal(a, sample_sigmas(4096, step_generator(0, 5, 0, 0), cfg))
    assert not torch.equal(a, sample_sigmas(4096, step_generator(0, 6, 0, 0), cfg))
    assert bool(((a >= 0) & (a <= 1)).all())


def test_logit_normal_defaults_centre_on_one_half():
    s = sample_sigmas(100_000, gen(3), TrainConfig(flow_shift=1.0))  # logit_normal(0, 1), no shift: symmetric about 0.5
    assert s.median().item() == pytest.approx(0.5, abs=0.01)
    assert (s < 0.5).float().mean().item() == pytest.approx(0.5, abs=0.01)


# --------------------------------------------------------------------------------------------- quantiles


def test_quantile_hand_values():
    # Uniform, no shift: the q-quantile is q (computed in float32).
    uniform = TrainConfig(timestep_sampling="uniform", flow_shift=1.0)
    for q in (0.1, 0.25, 0.5, 0.9):
        assert sigma_quantile(q, uniform) == pytest.approx(q, abs=1e-7)
    # Uniform 0.25 shifted by 3: 0.75 / 1.5 = 0.5, exactly.
    assert sigma_quantile(0.25, TrainConfig(timestep_sampling="uniform", flow_shift=3.0)) == 0.5
    # Logit-normal median: sigmoid(mean); with mean 0 that is 0.5, shifted by 3 -> 1.5 / 2 = 0.75, exactly.
    assert sigma_quantile(0.5, TrainConfig(flow_shift=3.0)) == 0.75
    assert sigma_quantile(0.5, TrainConfig(logit_mean=1.0, logit_std=2.0, flow_shift=1.0)) == pytest.approx(1 / (1 + math.exp(-1)), abs=1e-7)
    # The 0.8413 quantile of N(0, 1) is z = 1 (Phi(1) = 0.841345): sigmoid(mean + std).
    q = 0.5 * (1 + math.erf(1 / math.sqrt(2)))
    assert sigma_quantile(q, TrainConfig(logit_mean=-0.5, logit_std=2.0, flow_shift=1.0)) == pytest.approx(1 / (1 + math.exp(-1.5)), abs=1e-6)


@pytest.mark.parametrize("settings", [
    dict(timestep_sampling="uniform", flow_shift=1.0),
    dict(timestep_sampling="uniform", flow_shift=3.0),
    dict(timestep_sampling="logit_normal", flow_shift=1.0),
    dict(timestep_sampling="logit_normal", logit_mean=-0.5, logit_std=1.5, flow_shift=3.0),
])
def test_quantile_matches_the_sampled_distribution_and_is_monotone(settings):
    cfg = TrainConfig(**settings)
    draws = sample_sigmas(200_000, gen(4), cfg).double()
    qs = [0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95]
    analytic = [sigma_quantile(q, cfg) for q in qs]
    empirical = torch.quantile(draws, torch.tensor(qs, dtype=torch.float64)).tolist()
    # 200k draws: the empirical quantile's standard error is below 0.002 everywhere here.
    assert analytic == pytest.approx(empirical, abs=6e-3)
    assert analytic == sorted(analytic) and len(set(analytic)) == len(analytic)
