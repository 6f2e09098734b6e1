"""The embedded default backbone: a tiny Wan pipeline pretrained from scratch on the procedural corpus.

A randomly initialised backbone cannot show that an adapter moved anything, and no real checkpoint may be
downloaded at run time, so the demo builds its own base: first the VAE (reconstruction), then its latent
statistics (so normalised latents have unit scale, as Wan's config does for the real VAE), then the
transformer together with the text encoder on flow matching over cached latents and the corpus captions.
The result is a plain diffusers `WanPipeline` directory, loadable with `load_model(DIR)` and `--model DIR`.

Training is time-boxed (`minutes`), so two builds with the same settings may stop at different steps;
the cache makes that irrelevant in practice: a build is keyed by its settings and this recipe's source,
and later runs reuse the first one.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from reelora.demo import cache_root
from reelora.demo.procedural import CorpusSettings, corpus, to_model_input
from reelora.models.common import count_params
from reelora.models.wan import WanSpec

INFO_FILE = "reelora_base.json"
# Part of the cache key: the files whose code decides what a build produces.
_RECIPE_FILES = (Path(__file__), Path(__file__).parent / "procedural.py")


@dataclass(frozen=True)
class BaseSettings:
    """Everything that decides the base model (all of it goes into the cache key)."""

    seed: int = 0
    """Seeds the weights, the corpus and the training noise."""
    minutes: float = 5.0
    """Wall-clock budget for the whole build (VAE + latent stats + transformer + save)."""
    vae_share: float = 0.5
    """Fraction of the budget spent on the VAE (its 3D convs dominate CPU time)."""
    num_frames: int = 5
    height: int = 32
    width: int = 32
    vae_size: int = 16
    """Frame size the VAE trains on. It is convolutional, so small frames teach it the same filters, and
    per-step cost on CPU is mostly overhead: at 16x16 it makes ~2x the steps of 32x32 in the same minutes
    (measured: held-out PSNR at 32x32 18.7 dB vs 17.8 dB after 120 s)."""
    vae_batch: int = 8
    """Batch of the VAE steps (more clips per step did worse in a fixed time: fewer steps)."""
    vae_lr: float = 3e-3
    vae_lowfreq_weight: float = 2.0
    """Extra MSE on 4x4-average-pooled frames: pushes the VAE to get colours right early, which the style
    metric on decoded samples depends on."""
    vae_max_steps: int | None = None
    """Hard cap on VAE steps (tests and reproducible builds); None: train until the time box ends."""
    latent_clips: int = 384
    """Corpus clips encoded once for transformer training (the VAE is frozen by then)."""
    transformer_batch: int = 32
    transformer_lr: float = 1e-3
    transformer_max_steps: int | None = None
    caption_dropout: float = 0.1
    """Share of empty captions, so classifier-free guidance has an unconditional branch."""
    flow_shift: float = WanSpec.flow_shift
    """Timestep shift for training sigmas, matching the sampler's flow_shift."""
    transformer: dict = field(default_factory=lambda: dict(num_attention_heads=4, attention_head_dim=16, ffn_dim=128,
                                                           num_layers=2))
    """Overrides of models/wan.py TINY_TRANSFORMER (tiny-wan shapes, a little wider)."""
    vae: dict = field(default_factory=lambda: dict(dim_mult=[1, 1], temperal_downsample=[True], is_residual=True,
                                                   patch_size=2, in_channels=12, out_channels=12))
    """Overrides of models/wan.py TINY_VAE: the Wan 2.2 VAE layout (2x2 pixel patches in, residual
    average-pool shortcuts around the down/up blocks), same 4x spatial / 2x temporal latents. Measured on
    2 cores in 120 s: 976 steps, held-out PSNR 18.7 dB, and Big Buck Bunny reconstructions at a style
    distance of 2.2 from the originals; the Wan 2.1 layout (TINY_VAE as is) made ~440 steps, 14.6 dB and
    6.8, i.e. it could not yet reproduce the footage's colours, which the style metric needs."""

    def __post_init__(self):
        if self.minutes <= 0:
            raise ValueError(f"base settings: minutes must be > 0 (got {self.minutes})")
        if not 0 < self.vae_share < 1:
            raise ValueError(f"base settings: vae_share must be in (0, 1) (got {self.vae_share})")
        if (self.num_frames - 1) % 2:
            raise ValueError(f"base settings: num_frames must be 1 + 2k for the tiny Wan VAE (got {self.num_frames})")
        if self.vae_size % 4:
            raise ValueError(f"base settings: vae_size must be a multiple of the VAE's 4x downsampling (got {self.vae_size})")
        if self.height % 16 or self.width % 16:
            raise ValueError(f"base settings: height/width must be multiples of 16 (got {self.height}x{self.width})")

    def corpus(self, offset: int = 0) -> CorpusSettings:
        return CorpusSettings(seed=self.seed + offset, num_frames=self.num_frames, height=self.height, width=self.width)

    def key(self) -> str:
        """Cache key: settings + the recipe's source + library versions."""
        import diffusers
        import transformers

        h = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode())
        for f in _RECIPE_FILES:
            h.update(f.read_bytes())
        h.update(f"{torch.__version__} {diffusers.__version__} {transformers.__version__}".encode())
        return h.hexdigest()[:16]


def auto_threads() -> int:
    """All cores on an idle machine, one when others are busy.

    Measured on a shared 2-core box: with other processes running, two OpenMP threads made a Wan 2.1-layout
    VAE step at 32x32 5x *slower* than one (threads wait on each other at every op). The default recipe
    (patchified VAE on 16x16 frames) is overhead-bound: 1 and 2 threads both ran ~11.5 steps/s.
    """
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0]
    except OSError:
        busy = 0.0
    return 1 if busy > 0.5 else cores


def build_base(out: str | Path | None, settings: BaseSettings = BaseSettings(), *, use_cache: bool = True,
               log: Callable[[str], None] = print, threads: int | None = None) -> tuple[Path, dict]:
    """Build (or reuse from the cache) the base pipeline; copy it to `out` when given. Returns (dir, info).

    `threads`: torch intra-op threads while training; None picks `auto_threads()`.
    """
    if out is None and not use_cache:
        raise ValueError("build_base: without the cache an output directory is needed (out=None, use_cache=False)")
    key = settings.key()
    cached = cache_root() / "base" / key
    if use_cache and (cached / INFO_FILE).is_file():
        log(f"base: reusing {cached} (cache key {key})")
        src = cached
    else:
        staging = cache_root() / "base" / f".tmp-{key}-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        previous = torch.get_num_threads()
        torch.set_num_threads(threads or auto_threads())
        try:
            _train(staging, settings, key, log)
        finally:
            torch.set_num_threads(previous)
        if use_cache:
            # Written aside and renamed: a killed build never leaves a directory that looks complete.
            shutil.rmtree(cached, ignore_errors=True)
            try:
                staging.rename(cached)
            except OSError:  # another process finished the same key first: theirs is as good
                shutil.rmtree(staging, ignore_errors=True)
            src = cached
        else:
            src = staging
    if out is None:
        return src, json.loads((src / INFO_FILE).read_text())
    out = Path(out)
    if out.resolve() != src.resolve():
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(src, out)
        if src.name.startswith(".tmp-"):
            shutil.rmtree(src, ignore_errors=True)
    return out, json.loads((out / INFO_FILE).read_text())


def _train(dest: Path, s: BaseSettings, key: str, log: Callable[[str], None]) -> dict:
    t0 = time.monotonic()
    budget = s.minutes * 60.0
    spec = WanSpec()
    comps = spec.tiny(seed=s.seed, vae=s.vae, transformer=s.transformer)
    log(f"base: building {key} in {s.minutes:g} min on {torch.get_num_threads()} thread(s): vae {count_params(comps.vae):,} params, transformer "
        f"{count_params(comps.transformer):,}, text encoder {count_params(comps.text_encoder):,}")

    vae_info = _train_vae(comps.vae, s, deadline=t0 + budget * s.vae_share, log=log)
    latents, captions, stats = _encode_corpus(spec, comps, s)
    # Normalise as the pipeline does: (z - mean) / std, so the transformer sees unit-scale latents.
    comps.vae.register_to_config(latents_mean=stats[0], latents_std=stats[1])
    latents = (latents - torch.tensor(stats[0]).view(1, -1, 1, 1, 1)) / torch.tensor(stats[1]).view(1, -1, 1, 1, 1)
    reserve = min(10.0, 0.05 * budget)  # saving and the final held-out loss
    tr_info = _train_transformer(spec, comps, latents, captions, s, deadline=t0 + budget - reserve, log=log)

    for m in comps.modules().values():
        m.eval()
    spec.pipeline(comps).save_pretrained(dest)
    info = {
        "key": key,
        "settings": asdict(s),
        "vae_psnr_db": vae_info["psnr_db"],
        "vae": vae_info,
        "latents_mean": stats[0],
        "latents_std": stats[1],
        "transformer": tr_info,
        "params": {n: count_params(m) for n, m in comps.modules().items()},
        "build_seconds": round(time.monotonic() - t0, 1),
        "corpus": "reelora.demo.procedural (shapes, gradients, textures, pans, palettes, lighting)",
    }
    (dest / INFO_FILE).write_text(json.dumps(info, indent=2))
    log(f"base: done in {info['build_seconds']:.0f}s: VAE PSNR {info['vae_psnr_db']:.2f} dB after {vae_info['steps']} steps, "
        f"transformer {tr_info['steps']} steps, held-out flow loss {tr_info['heldout_loss']:.4f}")
    return info


def _lr_at(frac: float, peak: float, warmup: float = 0.05) -> float:
    """Warmup then cosine decay over the fraction of the phase already used (time- or step-based)."""
    if frac < warmup:
        return peak * (0.1 + 0.9 * frac / warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, (frac - warmup) / (1 - warmup)))))


def _progress(start: float, deadline: float, step: int, max_steps: int | None) -> float:
    by_time = (time.monotonic() - start) / max(deadline - start, 1e-6)
    return max(by_time, step / max_steps) if max_steps else by_time


def _reconstruction(vae, clips: torch.Tensor) -> tuple[float, float]:
    """(PSNR in dB on [0, 1] pixels, style distance) of the VAE's reconstruction of [N, C, F, H, W] clips in [-1, 1]."""
    from reelora.demo.style import from_model_output, style_distance

    with torch.no_grad():
        rec = vae.decode(vae.encode(clips).latent_dist.mode()).sample.clamp(-1, 1)
    mse = (((rec - clips) / 2) ** 2).mean().item()
    style = style_distance(from_model_output(clips.permute(0, 2, 1, 3, 4)), from_model_output(rec.permute(0, 2, 1, 3, 4)))
    return float(-10 * math.log10(max(mse, 1e-10))), style


def _train_vae(vae, s: BaseSettings, deadline: float, log) -> dict:
    start = time.monotonic()
    heldout = to_model_input(corpus(s.corpus(offset=10_000), 16)[0]).permute(0, 2, 1, 3, 4)
    small = CorpusSettings(seed=s.seed, num_frames=s.num_frames, height=s.vae_size, width=s.vae_size)
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    step, losses, last_log = 0, [], start
    while True:
        frac = _progress(start, deadline, step, s.vae_max_steps)
        if frac >= 1.0 or (s.vae_max_steps is not None and step >= s.vae_max_steps):
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(frac, s.vae_lr)
        # An endless corpus: every step sees new clips, so there is nothing to overfit.
        x = to_model_input(corpus(small, s.vae_batch, start=step * s.vae_batch)[0]).permute(0, 2, 1, 3, 4)
        post = vae.encode(x).latent_dist
        # The posterior mean is decoded (a deterministic autoencoder converges much faster on 2 cores);
        # the tiny KL term only keeps latents from drifting to huge values.
        rec = vae.decode(post.mode()).sample
        loss = (rec - x).abs().mean() + ((rec - x) ** 2).mean() + 1e-6 * post.kl().mean()
        if s.vae_lowfreq_weight:
            pool = (1, 4, 4)
            loss = loss + s.vae_lowfreq_weight * ((F.avg_pool3d(rec, pool) - F.avg_pool3d(x, pool)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        step += 1
        if time.monotonic() - last_log > 20:
            last_log = time.monotonic()
            log(f"base: vae step {step} loss {loss.item():.4f} ({last_log - start:.0f}s / {deadline - start:.0f}s)")
    vae.eval()
    psnr, style = _reconstruction(vae, heldout)
    log(f"base: vae {step} steps in {time.monotonic() - start:.0f}s, held-out PSNR {psnr:.2f} dB, style distance "
        f"of reconstructions {style:.2f}")
    return {"steps": step, "psnr_db": round(psnr, 3), "style_distance": round(style, 3),
            "seconds": round(time.monotonic() - start, 1), "losses": losses[::10]}


def _encode_corpus(spec: WanSpec, comps, s: BaseSettings):
    """Encode `latent_clips` corpus clips (raw VAE latents) and their per-channel mean/std."""
    frames, captions = corpus(s.corpus(offset=20_000), s.latent_clips)
    video = to_model_input(frames)
    zs = []
    with torch.no_grad():
        for i in range(0, len(video), 32):
            zs.append(comps.vae.encode(video[i:i + 32].permute(0, 2, 1, 3, 4)).latent_dist.mode())
    z = torch.cat(zs)
    mean = z.mean(dim=(0, 2, 3, 4))
    std = z.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    return z, captions, ([round(float(v), 5) for v in mean], [round(float(v), 5) for v in std])


def _train_transformer(spec: WanSpec, comps, latents: torch.Tensor, captions: list[str], s: BaseSettings,
                       deadline: float, log) -> dict:
    start = time.monotonic()
    n_held = max(1, min(64, len(latents) // 8))
    held_z, held_caps = latents[:n_held], captions[:n_held]
    train_z, train_caps = latents[n_held:], captions[n_held:]
    tr, te = comps.transformer, comps.text_encoder
    tr.train(), te.train()
    params = [p for m in (tr, te) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=s.transformer_lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(s.seed + 1)

    def shifted(u: torch.Tensor) -> torch.Tensor:
        return s.flow_shift * u / (1 + (s.flow_shift - 1) * u)

    step, losses, last_log = 0, [], start
    while True:
        frac = _progress(start, deadline, step, s.transformer_max_steps)
        if frac >= 1.0 or (s.transformer_max_steps is not None and step >= s.transformer_max_steps):
            break
        for g in opt.param_groups:
            g["lr"] = _lr_at(frac, s.transformer_lr)
        idx = torch.randint(len(train_z), (s.transformer_batch,), generator=gen)
        drop = torch.rand(s.transformer_batch, generator=gen) < s.caption_dropout
        prompts = ["" if d else train_caps[i] for i, d in zip(idx.tolist(), drop.tolist())]
        z = train_z[idx]
        noise = torch.randn(z.shape, generator=gen)
        sigmas = shifted(torch.sigmoid(torch.randn(s.transformer_batch, generator=gen)))
        text = _encode_prompt_train(spec, comps, prompts)
        pred, target = spec.forward(comps, tr, z, noise, sigmas, text)
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(round(loss.item(), 5))
        step += 1
        if time.monotonic() - last_log > 20:
            last_log = time.monotonic()
            log(f"base: transformer step {step} loss {np.mean(losses[-20:]):.4f} ({last_log - start:.0f}s / {deadline - start:.0f}s)")
    tr.eval(), te.eval()
    heldout = _heldout_loss(spec, comps, held_z, held_caps, s)
    return {"steps": step, "seconds": round(time.monotonic() - start, 1), "heldout_loss": round(heldout, 5),
            "losses": losses[::10], "final_loss": float(np.mean(losses[-20:])) if losses else None}


def _encode_prompt_train(spec: WanSpec, comps, prompts: list[str]) -> dict[str, torch.Tensor]:
    """WanSpec.encode_prompt with gradients (it runs under no_grad for caching), same padding recipe."""
    tok = comps.tokenizer(prompts, padding="max_length", max_length=comps.extra["max_text_len"], truncation=True,
                          add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    hidden = comps.text_encoder(tok.input_ids, tok.attention_mask).last_hidden_state
    return {"prompt_embeds": hidden * tok.attention_mask.unsqueeze(-1).to(hidden.dtype)}


@torch.no_grad()
def _heldout_loss(spec: WanSpec, comps, z: torch.Tensor, captions: list[str], s: BaseSettings) -> float:
    """Flow loss on held-out clips at fixed timesteps 0.1 ... 0.9 with fixed noise."""
    gen = torch.Generator().manual_seed(s.seed + 2)
    text = spec.encode_prompt(comps, captions)
    total = []
    for q in np.linspace(0.1, 0.9, 5):
        noise = torch.randn(z.shape, generator=gen)
        pred, target = spec.forward(comps, comps.transformer, z, noise, torch.full((len(z),), float(q)), text)
        total.append(torch.nn.functional.mse_loss(pred, target).item())
    return float(np.mean(total))


__all__ = ["BaseSettings", "build_base", "cache_root", "auto_threads", "INFO_FILE"]
