"""Validation: denoising loss at fixed timestep quantiles with fixed noise, and sample clips from fixed prompts.

Both are split across ranks and combined with collectives every rank joins (so none waits forever);
samples run one prompt at a time. With a cache the VAE and text encoder are loaded once per run, in the
training weight dtype (the Wan VAE stays fp32), kept on the CPU, and moved to the accelerator once per
validation, for all of this rank's prompts, then back.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from reelora.models.spec import Components
from reelora.data.shards import decode_frames
from reelora.train.batches import mix_seed
from reelora.train.parallel import sharded
from reelora.train.step import sigma_quantile


class Validator:
    def __init__(self, cfg, accelerator, spec, comps, clips: list, cache, output_dir: Path):
        self.cfg, self.acc, self.spec, self.comps, self.clips, self.cache = cfg, accelerator, spec, comps, clips, cache
        self.out = Path(output_dir)
        self._aux: Components | None = None  # VAE/text encoder on CPU when training from a cache

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
        noise as `reelora sample`), on a pipeline over the training transformer.
        """
        from accelerate.utils import gather_object

        from reelora.models import media
        from reelora.models.registry import sample_defaults
        from reelora.models.sample import ClipRequest, SampleError, render, resolve_request

        v, acc = self.cfg.validation, self.acc
        folder = self.out / "samples" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        aux = self._aux_components()
        comps = Components(family=self.comps.family, source=self.comps.source, transformer=acc.unwrap_model(model),
                           vae=aux.vae, text_encoder=aux.text_encoder, tokenizer=aux.tokenizer,
                           scheduler=self.comps.scheduler, revision=self.comps.revision, extra=self.comps.extra)
        offload = aux is not self.comps
        mine_prompts = self._share(len(v.prompts))
        mine = []
        if offload and len(mine_prompts):
            aux.vae.to(acc.device), aux.text_encoder.to(acc.device)
        try:
            pipe = self.spec.pipeline(comps)
            pipe.set_progress_bar_config(disable=True)
            for i in mine_prompts:
                req = resolve_request(ClipRequest(prompt=v.prompts[i], seed=v.seed + i, **vars(v.sample)),
                                      defaults=sample_defaults(self.cfg.model, self.spec), pipe=pipe,
                                      size_multiple=self.spec.size_multiple, model=self.cfg.model)
                try:
                    with acc.autocast():
                        frames = render(pipe, req, comps.extra.get("max_text_len", 512))
                except SampleError as exc:  # say so and write nothing: a black clip would pass for a sample
                    print(f"[rank {acc.process_index}] warning: validation sample {i} ({req.prompt[:40]!r}) at step "
                          f"{step}: {exc}; not written", file=sys.stderr, flush=True)
                    continue
                if sharded(self.cfg, acc) and not acc.is_main_process:
                    continue  # every rank rendered it (the sharded forward is collective); the main process writes
                path = folder / f"prompt-{i:02d}.mp4"
                media.write_mp4(path, frames, req.fps, provenance={"prompt": req.prompt, "seed": req.seed, "step": step})
                mine.append(str(path))
        finally:
            if offload:
                aux.vae.to("cpu"), aux.text_encoder.to("cpu")
                if acc.device.type == "cuda":
                    torch.cuda.empty_cache()
        paths = gather_object(mine) if acc.num_processes > 1 else mine
        return [Path(p) for p in sorted(paths)]

    def _share(self, n: int) -> range:
        """Indices of this rank's clips or prompts: every world-th, or all of them when the model is sharded."""
        return range(n) if sharded(self.cfg, self.acc) else range(self.acc.process_index, n, self.acc.num_processes)

    def _aux_components(self) -> Components:
        if self.comps.vae is not None and self.comps.text_encoder is not None:
            return self.comps
        if self._aux is None:
            from reelora.dtypes import parse_dtype
            from reelora.models.registry import load_model

            mp = self.cfg.train.mixed_precision  # accelerate's "no" means fp32 weights
            dtype = parse_dtype("fp32" if mp == "no" else mp, "train.mixed_precision")
            _, self._aux = load_model(self.cfg.model, dtype=dtype, device="cpu",
                                      components=("vae", "text_encoder", "tokenizer"))
        return self._aux
