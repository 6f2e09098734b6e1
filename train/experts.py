"""Two-expert backbones (Wan2.2-T2V-A14B) in training: which expert each optimizer step trains, and on which noise range.

WanPipeline runs `transformer` (the high-noise expert) while the scheduler's timestep t >= boundary_ratio x 1000,
and `transformer_2` below; training's timestep is sigma x 1000, so an expert's range is sigma >= boundary (high)
or sigma < boundary (low). `lora.experts` picks the experts that get a LoRA (train/config.py). With both, each
optimizer step trains one of them, drawn from a generator that does not depend on the rank (every DDP process
trains the same expert in a step), with the odds the timestep distribution gives each range; the sigmas of the
step's micro-batches are then drawn from that distribution cut to the expert's range (by inverse CDF: exact, one draw
each). One-transformer families take none of this: their sigmas come from train/step.py's `sample_sigmas` as before.
"""
from __future__ import annotations

import math

import torch

from reelora.models.wan22 import EXPERTS
from reelora.train.batches import mix_seed
from reelora.train.config import ConfigError


def trained(spec, cfg) -> tuple[str, ...]:
    """The denoiser components that get a LoRA; () for a one-transformer family.

    Raises:
        ConfigError: lora.experts set to high/low on a backbone with one transformer.
    """
    experts = getattr(spec, "experts", None)
    if not experts:
        if cfg.lora.experts != "both":
            raise ConfigError(f"config key 'lora.experts': {cfg.lora.experts!r} needs a two-expert backbone "
                              f"(Wan2.2-T2V-A14B); {cfg.model} ({spec.family}) has one transformer")
        return ()
    return tuple(experts) if cfg.lora.experts == "both" else (EXPERTS[cfg.lora.experts],)


def training_module(spec, comps, cfg) -> torch.nn.Module:
    """What the loop attaches LoRA to and trains: the transformer, or both experts in one module."""
    experts = trained(spec, cfg)
    if not experts:
        return comps.transformer
    from reelora.models.wan22 import Experts

    return Experts(comps.transformer, comps.transformer_2, adapted=experts)


def adapted_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules that get a LoRA: each trained expert, or the transformer itself."""
    names = getattr(model, "adapted", None)
    return [getattr(model, n) for n in names] if names is not None else [model]


def ddp_kwargs(cfg) -> list:
    """accelerate kwargs handlers for this run: with both experts each step leaves one expert's LoRA without
    gradients, which DDP must be told about (`find_unused_parameters`); nothing otherwise."""
    if cfg.lora.experts != "both":
        return []
    try:
        from reelora.models.registry import resolve

        spec = resolve(cfg.model)
    except (ValueError, OSError):  # reported with the key by the run's own checks
        return []
    if not getattr(spec, "experts", None):
        return []
    from accelerate.utils import DistributedDataParallelKwargs

    return [DistributedDataParallelKwargs(find_unused_parameters=True)]


def sigma_range(spec, comps, cfg, step: int) -> tuple[float, float] | None:
    """The sigma range [lo, hi) optimizer step `step` trains, or None for a one-transformer family.

    One expert per optimizer step, all its micro-batches included: under DDP with gradient accumulation an expert
    used in an early micro-batch but not in the last (synchronising) one would keep its local gradients unreduced.
    """
    experts = trained(spec, cfg)
    if not experts:
        return None
    b = spec.boundary(comps)
    if len(experts) == 2:
        g = torch.Generator().manual_seed(mix_seed(cfg.train.seed, step, "expert"))  # rank-independent
        expert = "transformer" if torch.rand(1, generator=g).item() >= cdf(b, cfg.train) else "transformer_2"
    else:
        expert = experts[0]
    return (b, 1.0) if expert == "transformer" else (0.0, b)


def cdf(sigma: float, train_cfg) -> float:
    """P(training sigma < `sigma`) under train.timestep_sampling and train.flow_shift."""
    s = train_cfg.flow_shift
    t = sigma / (s - (s - 1.0) * sigma)  # undo the shift: sigma = s t / (1 + (s - 1) t)
    if train_cfg.timestep_sampling == "uniform" or t <= 0.0 or t >= 1.0:
        return min(max(t, 0.0), 1.0)
    z = (math.log(t / (1.0 - t)) - train_cfg.logit_mean) / train_cfg.logit_std
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def sample_sigmas_in(n: int, generator: torch.Generator, train_cfg, lo: float, hi: float) -> torch.Tensor:
    """`n` sigmas from the training distribution restricted to [lo, hi) (inverse CDF of a uniform draw)."""
    from reelora.train.step import shift_sigmas

    q_lo, q_hi = cdf(lo, train_cfg), cdf(hi, train_cfg)
    q = (q_lo + (q_hi - q_lo) * torch.rand(n, generator=generator, dtype=torch.float64)).clamp(1e-12, 1 - 1e-12)
    if train_cfg.timestep_sampling == "uniform":
        t = q
    else:
        t = torch.sigmoid(train_cfg.logit_mean + train_cfg.logit_std * math.sqrt(2.0) * torch.erfinv(2.0 * q - 1.0))
    sigmas = shift_sigmas(t, train_cfg.flow_shift).float()
    # Rounding must not carry a sigma across the boundary: the forward routes by sigma >= boundary.
    hi32 = torch.tensor(hi, dtype=torch.float32)
    top = hi32 if hi >= 1.0 else torch.nextafter(hi32, torch.tensor(0.0))  # the largest float32 below the boundary
    return sigmas.clamp(min=lo, max=top.item())
