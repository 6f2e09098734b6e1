"""One optimizer step: micro-batches forward/backward, accumulate, non-finite guard, clip, AdamW.

Noise, timesteps and caption dropout come from a generator seeded from (seed, step, rank, micro-step):
resume needs no saved RNG state, and the same step sees the same randomness in any process.

fp16 (train.mixed_precision=fp16 on a GPU): accelerate's GradScaler multiplies the loss by a scale before
backward and starts it high (2**16), so the first steps' gradients overflow to inf until the scale has come
down; GradScaler then skips the optimizer step and halves the scale. Such a step is counted (`skipped_steps`),
not fatal. A skipped step still counts towards train.max_steps and consumed its batch (the data position does
not depend on overflows), but the LR schedule does not advance on it (accelerate's prepared scheduler returns
early on `step_was_skipped` too): the schedule is indexed by applied updates, `scheduler.last_epoch`, so the number of
skipped steps so far is `step - scheduler.last_epoch` and resume needs nothing more than the scheduler's and
the scaler's state. A non-finite loss (the forward) stays fatal; so does a non-finite gradient once the scale
is at 1 or below (the gradients overflow unscaled: no smaller scale will help).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from reelora.train import experts
from reelora.train.batches import mix_seed
from reelora.train.parallel import no_sync


class NonFiniteError(RuntimeError):
    """Loss or gradient norm was NaN/inf; raised before the optimizer step, so weights are untouched."""


@dataclass
class StepContext:
    """What a step needs besides the batch (built once by the loop)."""

    cfg: object  # reelora.train.config.Config
    accelerator: object
    spec: object
    comps: object  # Components; VAE/text encoder present only when training without a cache
    model: torch.nn.Module  # the transformer with LoRA: DDP-wrapped, or sharded in place by FSDP
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    params: list[torch.nn.Parameter]
    empty_text: dict[str, torch.Tensor] | None = None  # cached "" embedding for caption dropout


def step_generator(seed: int, step: int, rank: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, step, rank, micro))


def shift_sigmas(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Flow-matching timestep shift: t' = s t / (1 + (s - 1) t)."""
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_sigmas(n: int, generator: torch.Generator, train_cfg) -> torch.Tensor:
    if train_cfg.timestep_sampling == "uniform":
        t = torch.rand(n, generator=generator)
    else:
        t = torch.sigmoid(train_cfg.logit_mean + train_cfg.logit_std * torch.randn(n, generator=generator))
    return shift_sigmas(t, train_cfg.flow_shift)


def sigma_quantile(q: float, train_cfg) -> float:
    """The q-quantile of the training timestep distribution (validation measures loss there)."""
    if train_cfg.timestep_sampling == "uniform":
        t = q
    else:
        z = math.sqrt(2.0) * torch.erfinv(torch.tensor(2.0 * q - 1.0)).item()
        t = 1.0 / (1.0 + math.exp(-(train_cfg.logit_mean + train_cfg.logit_std * z)))
    return float(shift_sigmas(torch.tensor(t), train_cfg.flow_shift))


def prepare_inputs(ctx: StepContext, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Latents and text conditioning for a micro-batch, with caption dropout drawn from `generator`."""
    device = ctx.accelerator.device
    drop = torch.rand(len(batch["caption"]), generator=generator) < ctx.cfg.data.caption_dropout
    if "latents" in batch:
        latents = batch["latents"].to(device, torch.float32)
        text = {k: v.to(device) for k, v in batch["text"].items()}
        if drop.any():
            for k, v in text.items():
                text[k] = torch.where(drop.to(device).view(-1, *[1] * (v.ndim - 1)), ctx.empty_text[k].to(device, v.dtype), v)
        return latents, text
    latents = ctx.spec.encode_video(ctx.comps, batch["frames"].to(device)).float()
    prompts = ["" if d else c for c, d in zip(batch["caption"], drop.tolist())]
    return latents, ctx.spec.encode_prompt(ctx.comps, prompts)


def micro_loss(ctx: StepContext, batch: dict, step: int, micro: int) -> torch.Tensor:
    """Per-sample flow-matching MSE [B] for one micro-batch."""
    g = step_generator(ctx.cfg.train.seed, step, ctx.accelerator.process_index, micro)
    # LoRA dropout draws from the global RNG: reseed it per micro-step too, so resume stays exact.
    torch.manual_seed(mix_seed(ctx.cfg.train.seed, step, ctx.accelerator.process_index, micro, "global"))
    latents, text = prepare_inputs(ctx, batch, g)
    # Two-expert backbones: this step's expert and its noise range (train/experts.py); None for the others.
    span = experts.sigma_range(ctx.spec, ctx.comps, ctx.cfg, step)
    sigmas = (sample_sigmas(latents.shape[0], g, ctx.cfg.train) if span is None
              else experts.sample_sigmas_in(latents.shape[0], g, ctx.cfg.train, *span)).to(latents.device)
    noise = torch.randn(latents.shape, generator=g).to(latents.device)
    with ctx.accelerator.autocast():
        pred, target = ctx.spec.forward(ctx.comps, ctx.model, latents, noise, sigmas, text)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


def train_step(ctx: StepContext, micro_batches: list[dict], step: int) -> dict:
    """Run one optimizer step (`step` counts from 1) and return its metrics.

    Raises:
        NonFiniteError: on any rank, before the optimizer touches the weights; names the step and clip keys.
    """
    acc, cfg = ctx.accelerator, ctx.cfg
    t0 = time.perf_counter()
    total, bad_keys = 0.0, []
    for micro, batch in enumerate(micro_batches):
        last = micro == len(micro_batches) - 1
        # Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) until the last micro-batch of the step.
        with no_sync(acc, ctx.model) if not last else _nullcontext():
            per_sample = micro_loss(ctx, batch, step, micro)
            loss = per_sample.mean()
            acc.backward(loss / len(micro_batches))
        finite = torch.isfinite(per_sample.detach()).cpu()
        bad_keys += [k for k, ok in zip(batch["key"], finite.tolist()) if not ok]
        total += loss.detach().item()
    # Every rank must agree to stop, or the healthy ones would hang in the next collective.
    n_bad = acc.reduce(torch.tensor([float(len(bad_keys))], device=acc.device), reduction="sum").item()
    if n_bad:
        ctx.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(_nonfinite_message("loss", step, bad_keys, acc))
    max_norm = cfg.train.max_grad_norm if cfg.train.max_grad_norm is not None else float("inf")
    scaler = getattr(ctx.optimizer, "scaler", None)  # accelerate's GradScaler under fp16 on a GPU, else None
    scale = scaler.get_scale() if scaler is not None else None  # the scale this step's loss was multiplied by
    grad_norm = float(acc.clip_grad_norm_(ctx.params, max_norm))  # unscales the gradients first under fp16
    if not math.isfinite(grad_norm) and (scale is None or scale <= 1.0):
        ctx.optimizer.zero_grad(set_to_none=True)
        raise NonFiniteError(_nonfinite_message("gradient norm", step, [k for b in micro_batches for k in b["key"]], acc)
                             + (f" (fp16 loss scale already {scale:g})" if scale is not None else ""))
    lr = ctx.optimizer.param_groups[0]["lr"]
    ctx.optimizer.step()  # with a GradScaler: skipped when a gradient is inf/NaN, and the scale lowered
    skipped = scaler is not None and ctx.optimizer.step_was_skipped
    if not skipped:  # the schedule advances with applied updates only (see the module docstring)
        ctx.scheduler.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    loss_mean = acc.reduce(torch.tensor([total / len(micro_batches)], device=acc.device), reduction="mean").item()
    metrics = {"loss": loss_mean, "lr": lr, "grad_norm": grad_norm, "step_time": time.perf_counter() - t0}
    if scaler is not None:
        metrics.update(skipped_steps=skipped_steps(ctx.scheduler, step), loss_scale=scale)
    return metrics


def skipped_steps(scheduler, step: int) -> int:
    """Steps up to `step` whose update the fp16 GradScaler skipped: the scheduler counts the applied ones."""
    return step - scheduler.last_epoch


def _nonfinite_message(what: str, step: int, keys: list[str], acc) -> str:
    where = f"clip keys on rank {acc.process_index}: {', '.join(keys)}" if keys else "on another rank"
    return (f"non-finite {what} at step {step} ({where}); stopped before the optimizer step, weights untouched. "
            f"Resume from the last checkpoint with train.resume=latest after checking those clips or lowering optim.lr.")


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
