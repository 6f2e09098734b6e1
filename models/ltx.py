"""LTX-Video (diffusers format: LTXPipeline, LTXVideoTransformer3DModel, AutoencoderKLLTXVideo, T5)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from reelora.models.common import TINY_TEXT, build_tiny, flow_match_noise, load_pretrained
from reelora.models.settings import SampleSettings
from reelora.models.spec import ALL_COMPONENTS, Components

# Shapes follow diffusers' own LTX pipeline tests, which are the smallest configs known to run.
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
    decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, False, False),
    decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False, False, False, False, False),
    upsample_residual=(False, False, False, False), upsample_factor=(1, 1, 1, 1), timestep_conditioning=False,
    patch_size=1, patch_size_t=1, encoder_causal=True, decoder_causal=False,
)
TINY_TRANSFORMER = dict(
    in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=4, attention_head_dim=8,
    cross_attention_dim=32, num_layers=2, caption_channels=32,
)
TINY_MAX_TEXT_LEN = 32
FRAME_RATE = 25  # LTXPipeline's default; the RoPE interpolation scale depends on it


@dataclass
class LTXSpec:
    family: str = "ltx"
    pipeline_class_name: str = "LTXPipeline"
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    max_text_len: int = 128

    # What the released checkpoints were tuned for, and small settings for `tiny-ltx` (tests and demos).
    sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=121, height=480, width=704, steps=50, guidance=3.0, fps=24.0)
    tiny_sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=9, height=32, width=32, steps=4, guidance=3.0, fps=8.0)
    size_multiple: ClassVar[int] = 32
    """Height/width multiple LTXPipeline.check_inputs insists on."""
    blocks: ClassVar[str] = "transformer_blocks"
    """The transformer's ModuleList of blocks (FSDP shards block by block, train/parallel.py)."""
    flow_shift: ClassVar[float] = 1.0
    """Shift of the tiny scheduler (FlowMatchEulerDiscreteScheduler's default); released LTX checkpoints
    shift by resolution through their own scheduler config."""
    prompt_embeds_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                                                     "negative_prompt_attention_mask")
    """What LTXPipeline.encode_prompt returns, in order: each is a keyword of the pipeline's call."""
    fp32_components: ClassVar[tuple[str, ...]] = ()
    """Components loaded in float32 whatever the dtype: none."""
    published: ClassVar[dict[str, str]] = {}
    """Released checkpoints whose licence reelora states (hub id -> licence): none; the card points to the base's own."""

    def load(self, source, *, dtype=torch.float32, device="cpu", components=ALL_COMPONENTS, revision=None):
        from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
        from transformers import AutoTokenizer, T5EncoderModel

        classes = dict(transformer=LTXVideoTransformer3DModel, vae=AutoencoderKLLTXVideo, text_encoder=T5EncoderModel,
                       tokenizer=AutoTokenizer, scheduler=FlowMatchEulerDiscreteScheduler)
        c = load_pretrained(self.family, source, classes, dtype=dtype, device=device, components=components,
                            revision=revision, max_text_len=self.max_text_len)
        _record_ratios(c)
        return c

    def tiny(self, seed: int = 0, components=ALL_COMPONENTS) -> Components:
        from diffusers import AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXVideoTransformer3DModel
        from transformers import T5Config, T5EncoderModel

        def vae():
            v = AutoencoderKLLTXVideo(**TINY_VAE)
            # Framewise tiling paths assume real sizes; the tiny VAE encodes whole clips at once.
            v.use_framewise_encoding = False
            v.use_framewise_decoding = False
            return v

        builders = dict(
            transformer=lambda: LTXVideoTransformer3DModel(**TINY_TRANSFORMER), vae=vae,
            text_encoder=lambda: T5EncoderModel(T5Config(**TINY_TEXT)),
            scheduler=lambda: FlowMatchEulerDiscreteScheduler(shift=self.flow_shift),
        )
        c = build_tiny(self.family, seed, components, builders, TINY_MAX_TEXT_LEN)
        _record_ratios(c)
        return c

    def encode_video(self, comps, video, generator=None):
        return encode_normalized(comps.vae, video, generator)

    def decode_latents(self, comps, latents):
        return decode_normalized(comps.vae, latents)

    @torch.no_grad()
    def encode_prompt(self, comps, prompts):
        max_len = comps.extra.get("max_text_len", self.max_text_len)
        tok = comps.tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True,
                              add_special_tokens=True, return_tensors="pt")
        enc = comps.text_encoder
        hidden = enc(tok.input_ids.to(enc.device))[0]
        return {"prompt_embeds": hidden, "prompt_attention_mask": tok.attention_mask.to(enc.device)}

    def forward(self, comps, transformer, latents, noise, sigmas, text):
        from diffusers import LTXPipeline

        noisy, target = flow_match_noise(latents, noise, sigmas)
        b, _, f, h, w = latents.shape
        cfg = getattr(transformer, "module", transformer).config  # DDP's wrapper has no .config
        packed = LTXPipeline._pack_latents(noisy, cfg.patch_size, cfg.patch_size_t)
        dtype = next(transformer.parameters()).dtype
        # The VAE compression ratios enter LTX's RoPE (as in LTXPipeline); recorded when loaded.
        rt, rs = comps.extra.get("vae_ratios", (8, 32))
        pred = transformer(
            hidden_states=packed.to(dtype),
            encoder_hidden_states=text["prompt_embeds"].to(dtype),
            timestep=(sigmas * 1000.0).to(latents.device),
            encoder_attention_mask=text["prompt_attention_mask"],
            num_frames=f, height=h, width=w,
            rope_interpolation_scale=(rt / FRAME_RATE, rs, rs),
            return_dict=False,
        )[0]
        # Unpack tokens [B, S, C] back to [B, C, F, H, W] to compare with the unpacked target.
        pred = pred.reshape(b, f, h, w, -1).permute(0, 4, 1, 2, 3)
        return pred.float(), target.float()

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def pipeline(self, comps):
        return self.pipeline_class()(scheduler=comps.scheduler, vae=comps.vae, text_encoder=comps.text_encoder,
                                     tokenizer=comps.tokenizer, transformer=comps.transformer)

    def exports(self, sd: dict[str, torch.Tensor], alpha: float) -> dict[str, tuple[str, dict, str]]:
        """No LTX format besides diffusers' is in common use: the diffusers file is the only one."""
        return {}


def _record_ratios(c: Components) -> None:
    if c.vae is not None:
        c.extra["vae_ratios"] = (c.vae.temporal_compression_ratio, c.vae.spatial_compression_ratio)
    elif "vae_ratios" not in c.extra:
        # Cached training loads no VAE: read the ratios from its config instead.
        from diffusers import AutoencoderKLLTXVideo

        if c.source == "tiny-ltx":
            cfg = TINY_VAE
        else:
            cfg = AutoencoderKLLTXVideo.load_config(c.source, subfolder="vae")
        st = cfg.get("spatio_temporal_scaling", (True, True, True, False))
        patch, patch_t = cfg.get("patch_size", 4), cfg.get("patch_size_t", 1)
        c.extra["vae_ratios"] = (patch_t * 2 ** sum(st), patch * 2 ** sum(st))


def _latent_stats(vae, ref):
    mean = vae.latents_mean.view(1, -1, 1, 1, 1).to(ref.device, ref.dtype)
    std = vae.latents_std.view(1, -1, 1, 1, 1).to(ref.device, ref.dtype)
    return mean, std, float(vae.config.scaling_factor)


@torch.no_grad()
def encode_normalized(vae, video, generator=None):
    """Video [B, F, 3, H, W] in [-1, 1] -> normalized latents, as LTXPipeline / LTX2Pipeline._normalize_latents."""
    x = video.permute(0, 2, 1, 3, 4).to(device=vae.device, dtype=vae.dtype)
    dist = vae.encode(x).latent_dist
    z = dist.sample(generator) if generator is not None else dist.mode()
    mean, std, scale = _latent_stats(vae, z)
    return (z - mean) * scale / std


@torch.no_grad()
def decode_normalized(vae, latents):
    """The inverse of `encode_normalized`: latents -> video [B, F, 3, H, W] in [-1, 1]."""
    mean, std, scale = _latent_stats(vae, latents)
    x = vae.decode(latents.to(vae.dtype) * std / scale + mean, return_dict=False)[0]
    return x.clamp(-1, 1).permute(0, 2, 1, 3, 4)
