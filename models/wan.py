"""Wan2.1 text-to-video (diffusers format: WanPipeline, WanTransformer3DModel, AutoencoderKLWan, UMT5)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import torch

from reelora.models.common import TINY_TEXT, build_tiny, flow_match_noise, load_pretrained
from reelora.models.settings import SampleSettings
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
TINY_MAX_TEXT_LEN = 64

# The published Wan2.1 text-to-video transformers (transformer/config.json of Wan-AI/Wan2.1-T2V-{1.3B,14B}-Diffusers),
# so real-size shapes can be built on the meta device offline (tests, `reelora plan`, benchmarks/wan_realsize.py).
WAN_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16, out_channels=16,
               text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
               eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)
WAN_1_3B = {**WAN_14B, "num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}
PUBLISHED_IDS = {"1.3b": "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "14b": "Wan-AI/Wan2.1-T2V-14B-Diffusers"}
PUBLISHED_TRANSFORMER = {"1.3b": WAN_1_3B, "14b": WAN_14B}
"""By size name (`published_transformer`, the benchmark's --size)."""
PUBLISHED_TRANSFORMERS = {PUBLISHED_IDS[size]: config for size, config in PUBLISHED_TRANSFORMER.items()}
"""By hub id (`reelora plan`, the real-config tests)."""
PUBLISHED_VAE = dict(scale_factor_temporal=4, scale_factor_spatial=8, z_dim=16)
"""The Wan2.1 VAE's compression (both sizes share it): 4x in time ((F - 1) / 4 + 1 latent frames), 8x in space, 16 channels."""


@dataclass
class WanSpec:
    family: str = "wan"
    pipeline_class_name: str = "WanPipeline"
    # Attention projections and FFN of every block: what Wan LoRAs in the wild train.
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")
    max_text_len: int = 512

    # What the released checkpoints were tuned for, and small settings for `tiny-wan` (tests and demos).
    sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=81, height=480, width=832, steps=50, guidance=5.0, fps=16.0)
    tiny_sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=9, height=32, width=32, steps=4, guidance=5.0, fps=8.0)
    size_multiple: ClassVar[int] = 16
    """Height/width multiple WanPipeline.check_inputs insists on."""
    blocks: ClassVar[str] = "blocks"
    """The transformer's ModuleList of blocks (FSDP shards block by block, train/parallel.py)."""
    flow_shift: ClassVar[float] = 3.0
    """Timestep shift of Wan's flow-matching scheduler (the 480p checkpoints sample with 3.0)."""
    prompt_embeds_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "negative_prompt_embeds")
    """What WanPipeline.encode_prompt returns, in order: each is a keyword of the pipeline's call."""
    fp32_components: ClassVar[tuple[str, ...]] = ("vae",)
    """Loaded in float32 whatever the dtype: the Wan VAE is numerically fragile in half precision."""
    published: ClassVar[dict[str, str]] = {
        "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": "apache-2.0", "Wan-AI/Wan2.1-T2V-14B-Diffusers": "apache-2.0"}
    """Released diffusers-format checkpoints (hub id -> licence), as the model card names them."""
    published_transformers: ClassVar[dict[str, dict]] = PUBLISHED_TRANSFORMERS
    """Hub id -> transformer config, so real sizes are built offline (`reelora plan`, the real-config tests)."""
    published_vae: ClassVar[dict] = PUBLISHED_VAE
    """The released VAE's compression and channels (what `reelora plan` needs of it)."""
    tiny_transformer: ClassVar[dict] = TINY_TRANSFORMER
    tiny_vae: ClassVar[dict] = TINY_VAE
    """The configs `tiny()` builds from (the Wan2.2 flavours override them)."""

    def load(self, source, *, dtype=torch.float32, device="cpu", components=ALL_COMPONENTS, revision=None):
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
        from transformers import AutoTokenizer, UMT5EncoderModel

        classes = dict(transformer=WanTransformer3DModel, vae=AutoencoderKLWan, text_encoder=UMT5EncoderModel,
                       tokenizer=AutoTokenizer, scheduler=UniPCMultistepScheduler)
        return load_pretrained(self.family, source, classes, dtype=dtype, device=device, components=components,
                               revision=revision, max_text_len=self.max_text_len, fp32=self.fp32_components)

    def tiny(self, seed: int = 0, components=ALL_COMPONENTS, vae: dict | None = None, transformer: dict | None = None, text: dict | None = None) -> Components:
        from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
        from transformers import UMT5Config, UMT5EncoderModel

        builders = dict(
            transformer=lambda: WanTransformer3DModel(**{**TINY_TRANSFORMER, **(transformer or {})}),
            vae=lambda: AutoencoderKLWan(**{**TINY_VAE, **(vae or {})}),
            text_encoder=lambda: UMT5EncoderModel(UMT5Config(**{**TINY_TEXT, **(text or {})})),
            scheduler=lambda: UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                      flow_shift=self.flow_shift, num_train_timesteps=1000),
        )
        return build_tiny(self.family, seed, components, builders, TINY_MAX_TEXT_LEN)

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

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def pipeline(self, comps: Components):
        return self.pipeline_class()(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae,
                                     scheduler=comps.scheduler, transformer=comps.transformer)

    def exports(self, sd: dict[str, torch.Tensor], alpha: float) -> dict[str, tuple[str, dict, str]]:
        """Adapter files besides the diffusers one: key -> (file name, tensors, what the model card says)."""
        return {"comfyui": (COMFYUI_FILE, to_comfyui(sd, alpha),
                            "the same weights under the original Wan module names for ComfyUI")}


def published_transformer(size: str = "1.3b", *, device="meta", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A Wan2.1 transformer of a published size ("1.3b", "14b") with random weights, nothing downloaded.

    Built on the meta device (no memory, no init time); with a real `device` its weights are then drawn
    there in `dtype` (models.common.materialize: normal(0, 0.02), fixed seed), the modules diffusers keeps in
    float32 when loading in half precision (`_keep_in_fp32_modules`) in float32 as `from_pretrained` does.
    """
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from reelora.models.common import materialize

    if size not in PUBLISHED_TRANSFORMER:
        raise ValueError(f"unknown Wan2.1 size {size!r}; published: {', '.join(PUBLISHED_TRANSFORMER)}")
    with init_empty_weights(include_buffers=False):  # rotary tables stay real: they are computed, not loaded
        transformer = WanTransformer3DModel(**PUBLISHED_TRANSFORMER[size])
    if torch.device(device).type != "meta":
        keep = tuple(transformer._keep_in_fp32_modules or ()) if dtype != torch.float32 else ()
        materialize(transformer, device=device, dtype=dtype, seed=seed, keep_fp32=keep)
    return transformer.eval()


def _latent_stats(vae, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean, device=ref.device, dtype=ref.dtype).view(1, z, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std, device=ref.device, dtype=ref.dtype).view(1, z, 1, 1, 1)
    return mean, inv_std


# ---------------------------------------------------------------------------------------------------------
# Export under the original Wan2.1 module names (what ComfyUI and the Wan repo load)

COMFYUI_FILE = "comfyui_lora.safetensors"
# diffusers WanTransformer3DModel module -> original Wan2.1 module (wan/modules/model.py), as in diffusers'
# scripts/convert_wan_to_diffusers.py, read in reverse.
_BLOCK_RENAMES = [
    ("attn1.to_q", "self_attn.q"), ("attn1.to_k", "self_attn.k"), ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"), ("attn2.to_q", "cross_attn.q"), ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"), ("attn2.to_out.0", "cross_attn.o"), ("attn2.add_k_proj", "cross_attn.k_img"),
    ("attn2.add_v_proj", "cross_attn.v_img"), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
]
_TOP_RENAMES = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",
}


def original_name(module: str) -> str:
    """diffusers Wan module name -> original Wan2.1 name ('blocks.3.attn1.to_q' -> 'blocks.3.self_attn.q').

    Raises:
        KeyError: a module with no original counterpart (the adapter cannot be written for ComfyUI).
    """
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if m:
        for ours, theirs in _BLOCK_RENAMES:
            if m.group(2) == ours:
                return f"blocks.{m.group(1)}.{theirs}"
    elif module in _TOP_RENAMES:
        return _TOP_RENAMES[module]
    raise KeyError(f"no original Wan name for diffusers module {module!r}")


def to_comfyui(sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft-named Wan LoRA weights -> ComfyUI keys with a per-module `.alpha`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, _, rest = key.partition(".lora_")
        name = f"diffusion_model.{original_name(module)}"
        out[f"{name}.lora_{rest}"] = value
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out
