"""Wan2.1 text-to-video (diffusers format: WanPipeline, WanTransformer3DModel, AutoencoderKLWan, UMT5)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from reelora.models.common import flow_match_noise, load_kwargs, seeded, weights_hash
from reelora.models.spec import ALL_COMPONENTS, Components

# Small shapes for `tiny-wan`: the Wan VAE's 3D convs dominate CPU time, so the VAE is 4x spatial /
# 2x temporal with few channels; the transformer keeps Wan's real block structure.
TINY_VAE = dict(
    base_dim=16, z_dim=16, dim_mult=[1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True],
    scale_factor_spatial=4, scale_factor_temporal=2, latents_mean=[0.0] * 16, latents_std=[1.0] * 16,
)
TINY_TRANSFORMER = dict(
    patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
    text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    rope_max_seq_len=64,
)
TINY_TEXT = dict(
    vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    pad_token_id=0, eos_token_id=1,
)
TINY_MAX_TEXT_LEN = 64


@dataclass
class WanSpec:
    family: str = "wan"
    pipeline_class_name: str = "WanPipeline"
    # Attention projections and FFN of every block: what Wan LoRAs in the wild train.
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
    max_text_len: int = 512

    def load(self, source, *, dtype=torch.float32, device="cpu", components=ALL_COMPONENTS, revision=None):
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        c = Components(family=self.family, source=source, revision=revision or weights_hash(source))
        if "transformer" in components:
            c.transformer = WanTransformer3DModel.from_pretrained(source, torch_dtype=dtype, **load_kwargs(source, "transformer", revision))
        if "vae" in components:  # the Wan VAE is numerically fragile in half precision: keep it fp32
            c.vae = AutoencoderKLWan.from_pretrained(source, torch_dtype=torch.float32, **load_kwargs(source, "vae", revision))
        if "text_encoder" in components:
            c.text_encoder = UMT5EncoderModel.from_pretrained(source, torch_dtype=dtype, **load_kwargs(source, "text_encoder", revision))
        if "tokenizer" in components:
            c.tokenizer = AutoTokenizer.from_pretrained(source, **load_kwargs(source, "tokenizer", revision))
        if "scheduler" in components:
            c.scheduler = UniPCMultistepScheduler.from_pretrained(source, **load_kwargs(source, "scheduler", revision))
        _to(c, device)
        c.extra["max_text_len"] = min(self.max_text_len, getattr(c.tokenizer, "model_max_length", self.max_text_len) or self.max_text_len)
        return c

    def tiny(self, seed: int = 0, components=ALL_COMPONENTS, vae: dict | None = None, transformer: dict | None = None, text: dict | None = None) -> Components:
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
        from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

        c = Components(family=self.family, source="tiny-wan", revision=f"seed{seed}")
        # Each component gets its own derived seed so asking for a subset builds identical weights.
        if "transformer" in components:
            with seeded(seed * 1000 + 1):
                c.transformer = WanTransformer3DModel(**{**TINY_TRANSFORMER, **(transformer or {})}).eval()
        if "vae" in components:
            with seeded(seed * 1000 + 2):
                c.vae = AutoencoderKLWan(**{**TINY_VAE, **(vae or {})}).eval()
        if "text_encoder" in components:
            with seeded(seed * 1000 + 3):
                c.text_encoder = UMT5EncoderModel(UMT5Config(**{**TINY_TEXT, **(text or {})})).eval()
        if "tokenizer" in components:
            # Byte-level tokenizer: needs no vocabulary file, so nothing is fetched from a hub.
            c.tokenizer = ByT5Tokenizer(model_max_length=TINY_MAX_TEXT_LEN)
        if "scheduler" in components:
            c.scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0, num_train_timesteps=1000)
        c.extra["max_text_len"] = TINY_MAX_TEXT_LEN
        return c

    @torch.no_grad()
    def encode_video(self, comps: Components, video: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        vae = comps.vae
        x = video.permute(0, 2, 1, 3, 4).to(device=vae.device, dtype=vae.dtype)  # B F C H W -> B C F H W
        dist = vae.encode(x).latent_dist
        z = dist.sample(generator) if generator is not None else dist.mode()
        mean, inv_std = _latent_stats(vae, z)
        return (z - mean) * inv_std

    @torch.no_grad()
    def decode_latents(self, comps: Components, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents -> video [B, F, C, H, W] in [-1, 1]."""
        vae = comps.vae
        mean, inv_std = _latent_stats(vae, latents)
        x = vae.decode((latents.to(vae.dtype) / inv_std) + mean).sample
        return x.clamp(-1, 1).permute(0, 2, 1, 3, 4)

    @torch.no_grad()
    def encode_prompt(self, comps: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
        # Same recipe as WanPipeline._get_t5_prompt_embeds: pad to a fixed length, zero the padding.
        max_len = comps.extra.get("max_text_len", self.max_text_len)
        tok = comps.tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True,
                              add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        enc = comps.text_encoder
        ids, mask = tok.input_ids.to(enc.device), tok.attention_mask.to(enc.device)
        hidden = enc(ids, mask).last_hidden_state
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)
        return {"prompt_embeds": hidden}

    def forward(self, comps, transformer, latents, noise, sigmas, text):
        noisy, target = flow_match_noise(latents, noise, sigmas)
        dtype = next(transformer.parameters()).dtype
        pred = transformer(
            hidden_states=noisy.to(dtype),
            timestep=(sigmas * 1000.0).to(latents.device),
            encoder_hidden_states=text["prompt_embeds"].to(dtype),
            return_dict=False,
        )[0]
        return pred.float(), target.float()

    def pipeline(self, comps: Components):
        from diffusers import WanPipeline

        return WanPipeline(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae,
                           scheduler=comps.scheduler, transformer=comps.transformer)


def _latent_stats(vae, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, device=ref.device, dtype=ref.dtype).view(1, z, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=ref.device, dtype=ref.dtype).view(1, z, 1, 1, 1)
    return mean, inv_std


def _to(c: Components, device) -> None:
    for m in c.modules().values():
        m.to(device)
        m.eval()
