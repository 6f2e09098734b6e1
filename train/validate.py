"""Validation: denoising loss at fixed timestep quantiles with fixed noise, and sample clips from fixed prompts.

Both are split across ranks and combined with collectives every rank joins (so none waits forever).
Samples are made to fit beside training:
- the prompts are encoded once, when the Validator is built (before the first step), by the pipeline's own
  `encode_prompt`; with a cache the text encoder is loaded for that alone and freed right after, so it is
  never held during training (UMT5-XXL is ~11 GB in bf16);
- with a cache the VAE is loaded at the first validation that draws samples, in the training weight dtype
  (a family's fp32 components, the Wan VAE, stay fp32), and kept on the CPU between validations: it is
  small (Wan2.1's: 127M parameters, 0.5 GB in fp32), so reading it from disk at each validation would cost
  time for no memory that matters. It moves to the accelerator for this rank's samples, then back;
- decoding runs under the training autocast (bf16 compute with train.mixed_precision=bf16) with the VAE's
  tiling and slicing on, one prompt at a time; the accelerator's cache is emptied after.
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from reelora.models.credentials import CredentialsError, resolve_signing_key
from reelora.models.spec import Components
from reelora.data.shards import decode_frames
from reelora.train.batches import mix_seed
from reelora.train.config import ConfigError
from reelora.train.parallel import sharded
from reelora.train.step import sigma_quantile


class Validator:
    def __init__(self, cfg, accelerator, spec, comps, clips: list, cache, output_dir: Path):
        self.cfg, self.acc, self.spec, self.comps, self.clips, self.cache = cfg, accelerator, spec, comps, clips, cache
        self.out = Path(output_dir)
        self._vae = None  # training from a cache: the sampling VAE, on the CPU between validations
        self.prompt_text = self._encode_prompts()
        # Checked now, before training: a certificate that cannot sign fails the run at setup, not at step N.
        v, self.signing = cfg.validation, None
        if v.prompts:
            try:
                self.signing = resolve_signing_key(v.sign_cert, v.sign_key)
            except CredentialsError as exc:
                raise ConfigError(f"config key 'validation.sign_cert': {exc}") from None

    def due(self, step: int) -> bool:
        every = self.cfg.validation.every
        return bool(every) and (step % every == 0 or step == self.cfg.train.max_steps)

    def run(self, model, step: int) -> dict:
        model.eval()
        try:
            result = self.loss(model)
            if self.cfg.validation.prompts:
                result["samples"] = self.samples(model, step)
        finally:
            model.train()
        return result

    @torch.no_grad()
    def loss(self, model) -> dict:
        """Mean flow-matching loss per timestep quantile over the validation clips (fixed noise per clip)."""
        acc, v = self.acc, self.cfg.validation
        sigmas = [sigma_quantile(q, self.cfg.train) for q in v.quantiles]
        sums = torch.zeros(len(sigmas) + 1, dtype=torch.float64)
        for i in self._share(len(self.clips)):  # under FSDP every rank runs every clip: sums and count scale alike
            clip = self.clips[i]
            latents, text = self._inputs(clip)
            g = torch.Generator().manual_seed(mix_seed(self.cfg.train.seed, "validation", clip.key))
            noise = torch.randn(latents.shape, generator=g).to(latents.device)
            for j, s in enumerate(sigmas):
                with acc.autocast():
                    pred, target = self.spec.forward(self.comps, model, latents, noise,
                                                     torch.tensor([s], device=latents.device), text)
                sums[j] += (pred.float() - target.float()).pow(2).mean().item()
            sums[-1] += 1
        sums = acc.reduce(sums.to(acc.device), reduction="sum").cpu() if acc.num_processes > 1 else sums
        n = max(sums[-1].item(), 1.0)
        result = {f"val/loss_q{q:g}": (sums[j] / n).item() for j, q in enumerate(v.quantiles)}
        result["val/loss"] = sum(result.values()) / len(v.quantiles)
        return result

    def _inputs(self, clip) -> tuple[torch.Tensor, dict]:
        device = self.acc.device
        if self.cache is not None:
            text = {k: t[None].to(device) for k, t in self.cache.load_text(clip.caption).items()}
            return self.cache.load_latents(clip)[None].to(device, torch.float32), text
        latents = self.spec.encode_video(self.comps, decode_frames(clip)[None].to(device)).float()
        return latents, self.spec.encode_prompt(self.comps, [clip.caption])

    def samples(self, model, step: int) -> list[Path]:
        """Sample this rank's share of the prompts (prompt i on rank i % world); every rank gets all paths.

        Each clip goes through the sampler's own `resolve_request` and `render` (same defaults, checks and
        noise as `reelora sample --vae-tiling --vae-slicing`), on a pipeline over the training transformer,
        from the prompt embeddings encoded at start: the pipeline has no text encoder.
        """
        from accelerate.utils import gather_object

        from reelora.models import media
        from reelora.models.sample import SampleError, render, resolve_request

        acc = self.acc
        folder = self.out / "samples" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        mine = []
        if self.prompt_text:
            vae = self._sampling_vae()
            comps = Components(family=self.comps.family, source=self.comps.source, transformer=acc.unwrap_model(model),
                               vae=vae, scheduler=self.comps.scheduler, revision=self.comps.revision, extra=self.comps.extra)
            offload = vae is not self.comps.vae  # the cached run's VAE waits on the CPU; the training one stays put
            try:
                if offload:
                    vae.to(acc.device)
                with decode_in_pieces(vae):
                    pipe = self.spec.pipeline(comps)
                    pipe.set_progress_bar_config(disable=True)
                    for i, text in self.prompt_text.items():
                        req = resolve_request(self._request(i), defaults=self._defaults(), pipe=pipe,
                                              size_multiple=self.spec.size_multiple, model=self.cfg.model)
                        try:
                            with acc.autocast():
                                frames = render(pipe, req, comps.extra.get("max_text_len", 512),
                                                text={k: t.to(acc.device) for k, t in text.items()})
                        except SampleError as exc:  # say so and write nothing: a black clip would pass for a sample
                            print(f"[rank {acc.process_index}] warning: validation sample {i} ({req.prompt[:40]!r}) at step "
                                  f"{step}: {exc}; not written", file=sys.stderr, flush=True)
                            continue
                        if sharded(self.cfg, acc) and not acc.is_main_process:
                            continue  # every rank rendered it (the sharded forward is collective); the main process writes
                        path = folder / f"prompt-{i:02d}.mp4"
                        # signed like every sampled clip (C2PA, models/credentials.py); the adapter is mid-training
                        media.write_mp4(path, frames, req.fps, provenance={"prompt": req.prompt, "seed": req.seed, "step": step,
                                                                          "base_model": {"id": self.cfg.model}},
                                        sign=self.signing)
                        mine.append(str(path))
            finally:
                if offload:
                    vae.to("cpu")
                release_memory(acc.device)
        paths = gather_object(mine) if acc.num_processes > 1 else mine
        return [Path(p) for p in sorted(paths)]

    def _request(self, i: int):
        from reelora.models.sample import ClipRequest

        v = self.cfg.validation
        return ClipRequest(prompt=v.prompts[i], seed=v.seed + i, **vars(v.sample))

    def _defaults(self):
        from reelora.models.registry import sample_defaults

        return sample_defaults(self.cfg.model, self.spec)

    def _share(self, n: int) -> range:
        """Indices of this rank's clips or prompts: every world-th, or all of them when the model is sharded."""
        return range(n) if sharded(self.cfg, self.acc) else range(self.acc.process_index, n, self.acc.num_processes)

    def _encode_prompts(self) -> dict[int, dict[str, torch.Tensor]]:
        """This rank's prompts (index -> the pipeline's prompt-embedding keywords, on the CPU), encoded once.

        Without a cache training holds the text encoder anyway and it encodes them where it is. With a cache it
        is loaded here alone (training weight dtype), encodes on the accelerator when it fits in its free memory
        (at start nothing but the base weights is there) or else on the CPU, and is freed before training starts.
        """
        from dataclasses import replace

        from reelora.models.sample import encode_request

        v = self.cfg.validation
        mine = self._share(len(v.prompts)) if v.every else range(0)
        if not len(mine):
            return {}
        owner = self.comps if self.comps.text_encoder is not None else self._load("text_encoder", "tokenizer")
        encoder, device, pipe = owner.text_encoder, owner.text_encoder.device, None
        if owner is not self.comps and fits(encoder, self.acc.device):
            device = self.acc.device
            encoder.to(device)
        try:
            pipe = self.spec.pipeline(Components(family=owner.family, source=owner.source, text_encoder=encoder,
                                                 tokenizer=owner.tokenizer, scheduler=self.comps.scheduler))
            max_len = owner.extra.get("max_text_len", 512)
            text = {}
            for i in mine:
                req = self._request(i)
                req = replace(req, **req.filled(self._defaults()))  # the family's negative prompt and guidance
                text[i] = encode_request(pipe, req, max_len, self.spec.prompt_embeds_keys, device)
            return text
        finally:  # drop every reference to a text encoder loaded here, then give its memory back
            pipe = encoder = owner = None
            release_memory(device)

    def _sampling_vae(self):
        """The VAE samples decode with: training's own, or (cached training) one loaded once and kept on the CPU."""
        if self.comps.vae is not None:
            return self.comps.vae
        if self._vae is None:
            self._vae = self._load("vae").vae
        return self._vae

    def _load(self, *components: str) -> Components:
        """Components training did not load, on the CPU, in the training weight dtype (the family's fp32 ones fp32)."""
        from reelora.dtypes import parse_dtype
        from reelora.models.registry import load_model

        mp = self.cfg.train.mixed_precision  # accelerate's "no" means fp32 weights
        dtype = parse_dtype("fp32" if mp == "no" else mp, "train.mixed_precision")
        return load_model(self.cfg.model, dtype=dtype, device="cpu", components=components)[1]


def fits(module: torch.nn.Module, device: torch.device, margin: float = 1.25) -> bool:
    """Whether `module` fits in the free memory of CUDA `device` with room to run (never for a CPU device)."""
    if device.type != "cuda":
        return False
    need = sum(p.numel() * p.element_size() for p in module.parameters())
    return need * margin + (256 << 20) < torch.cuda.mem_get_info(device)[0]


def release_memory(device: torch.device) -> None:
    """Collect what was just dropped and give its memory back: freed heap pages to the OS (glibc keeps them for
    reuse, so a text encoder's activations would stay in the RSS of every later step) and, on CUDA, the caching
    allocator's free blocks to the device."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextmanager
def decode_in_pieces(vae):
    """diffusers' VAE tiling (large frames tile by tile) and slicing (a batch one item at a time) on, then as
    they were: without a cache the same VAE encodes the training clips, which must stay untiled."""
    tiling, slicing = vae.use_tiling, vae.use_slicing
    vae.enable_tiling()
    vae.enable_slicing()
    try:
        yield vae
    finally:
        if not tiling:
            vae.disable_tiling()
        if not slicing:
            vae.disable_slicing()
