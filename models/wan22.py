"""Wan2.2 text-to-video: TI2V-5B (its own 48-channel VAE) and T2V-A14B (two experts split by timestep).

Both are diffusers `WanPipeline`s; model_index.json tells them apart (`registry.resolve` asks `matches`):
- TI2V-5B: `expand_timesteps: true`, one 5B transformer with 48 input channels, AutoencoderKLWan with
  `is_residual`, 2x2 patchify and 16x16 spatial / 4x temporal compression.
- T2V-A14B: `transformer` (the high-noise expert) and `transformer_2` (the low-noise expert), each a Wan2.1-14B
  shaped transformer, and `boundary_ratio` (0.875): WanPipeline runs `transformer` for scheduler timesteps
  t >= boundary_ratio x num_train_timesteps and `transformer_2` below. Training gives each expert its own LoRA
  on its own timestep range (`lora.experts`, train/experts.py); the adapter holds one file per expert.

Both reuse WanSpec's text encoding, latent normalisation, forward and ComfyUI names (models/wan.py): a flavour
differs in configs, defaults and (A14B) in which transformer a timestep goes to.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from reelora.models.common import flow_match_noise, model_index, seeded
from reelora.models.settings import SampleSettings
from reelora.models.spec import ALL_COMPONENTS, Components
from reelora.models.wan import COMFYUI_FILE, TINY_TRANSFORMER, WAN_14B, WanSpec, to_comfyui

# ---------------------------------------------------------------------------------------------------------
# Published configs (diffusers' scripts/convert_wan_to_diffusers.py and the Wan2.2 repo's wan/configs/), so the
# real sizes are built on the meta device offline (tests, `reelora plan`).

WAN22_5B = dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48, out_channels=48,
                text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024)
"""transformer/config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers (dim 3072 = 24 heads x 128)."""
WAN22_A14B = WAN_14B
"""Each expert of Wan-AI/Wan2.2-T2V-A14B-Diffusers (transformer/ and transformer_2/) has Wan2.1-14B's shape."""
WAN22_VAE_5B = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
    scale_factor_temporal=4, scale_factor_spatial=16, clip_output=False,
    latents_mean=[-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
                  0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
                  -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
                  -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667],
    latents_std=[0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901, 0.6885,
                 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659, 0.7069, 0.5338,
                 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458,
                 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744],
)
"""vae/config.json of Wan2.2-TI2V-5B (the Wan2.2 VAE: 48 channels, 16x16 spatial, 4x temporal compression)."""
BOUNDARY_RATIO = 0.875
"""Wan2.2-T2V-A14B's model_index.json `boundary_ratio`: the high-noise expert takes t >= 0.875 x 1000."""

# Tiny flavours: the real structure at toy widths. The 5B VAE keeps the Wan2.2 VAE's residual blocks, 2x2 patchify
# and 16x spatial compression (diffusers' own Wan2.2-5B pipeline test shape, wider): 64x64 frames are 4x4 latents.
TINY_VAE_5B = dict(
    base_dim=8, z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2, dim_mult=[1, 1, 1, 1],
    num_res_blocks=1, temperal_downsample=[False, True, True], scale_factor_spatial=16, scale_factor_temporal=4,
    latents_mean=[0.0] * 48, latents_std=[1.0] * 48,
)
TINY_TRANSFORMER_5B = {**TINY_TRANSFORMER, "in_channels": 48, "out_channels": 48}
TINY_MAX_TEXT_LEN = 64

EXPERTS = {"high": "transformer", "low": "transformer_2"}
"""`lora.experts` choice -> the pipeline component it trains (WanPipeline runs `transformer` at high noise)."""
EXPERT_SUFFIX = {"transformer": "high_noise", "transformer_2": "low_noise"}
"""How each expert's files are named (ComfyUI's Wan2.2 workflows call the two models high_noise and low_noise)."""


# ---------------------------------------------------------------------------------------------------------
# TI2V-5B


@dataclass
class Wan22Spec(WanSpec):
    """Wan2.2-TI2V-5B as text-to-video: WanPipeline with `expand_timesteps`, the Wan2.2 VAE."""

    family: str = "wan22-5b"
    sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=121, height=704, width=1280, steps=50,
                                                               guidance=5.0, fps=24.0)
    tiny_sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=9, height=64, width=64, steps=4,
                                                                    guidance=5.0, fps=8.0)
    size_multiple: ClassVar[int] = 32
    """16x VAE compression then the transformer's 2x2 patches: frames must be multiples of 32 (704x1280 is)."""
    flow_shift: ClassVar[float] = 5.0
    """The TI2V-5B scheduler's shift (diffusers' conversion script; the Wan2.2 repo samples with 5.0)."""
    published: ClassVar[dict[str, str]] = {"Wan-AI/Wan2.2-TI2V-5B-Diffusers": "apache-2.0"}
    published_transformers: ClassVar[dict[str, dict]] = {"Wan-AI/Wan2.2-TI2V-5B-Diffusers": WAN22_5B}
    published_vae: ClassVar[dict] = WAN22_VAE_5B
    tiny_vae: ClassVar[dict] = TINY_VAE_5B
    tiny_transformer: ClassVar[dict] = TINY_TRANSFORMER_5B

    @staticmethod
    def matches(index: dict) -> bool:
        """model_index.json of a TI2V-5B: a WanPipeline whose timesteps are expanded per token."""
        return index.get("_class_name") == "WanPipeline" and bool(index.get("expand_timesteps"))

    def tiny(self, seed: int = 0, components=ALL_COMPONENTS, vae=None, transformer=None, text=None) -> Components:
        return super().tiny(seed, components, vae={**self.tiny_vae, **(vae or {})},
                            transformer={**self.tiny_transformer, **(transformer or {})}, text=text)

    def pipeline(self, comps: Components):
        # expand_timesteps: the pipeline hands the transformer one timestep per token (all equal in text-to-video,
        # so the same maths as the [B] timesteps training passes).
        return self.pipeline_class()(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae,
                                     scheduler=comps.scheduler, transformer=comps.transformer, expand_timesteps=True)


# ---------------------------------------------------------------------------------------------------------
# T2V-A14B: two experts


class Experts(torch.nn.Module):
    """Wan2.2-A14B's two denoisers as the one module training wraps (DDP) and steps.

    `forward(expert=NAME, **kwargs)` runs one of them, so a micro-step's forward and backward go through the
    wrapper (DDP's hooks) whichever expert it trains. `adapted` names the experts that carry a LoRA.
    """

    def __init__(self, transformer: torch.nn.Module, transformer_2: torch.nn.Module, adapted: tuple[str, ...]):
        super().__init__()
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.adapted = tuple(adapted)

    def forward(self, *args, expert: str, **kwargs):
        return getattr(self, expert)(*args, **kwargs)

    def enable_gradient_checkpointing(self, **kwargs) -> None:
        self.transformer.enable_gradient_checkpointing(**kwargs)
        self.transformer_2.enable_gradient_checkpointing(**kwargs)


def expert_of(sigmas: torch.Tensor, boundary: float) -> str:
    """The expert WanPipeline runs at these noise levels (all of a batch must fall on one side of the boundary).

    Raises:
        ValueError: the batch straddles the boundary (training draws each micro-batch on one side).
    """
    high = sigmas >= boundary
    if bool(high.all()):
        return "transformer"
    if not bool(high.any()):
        return "transformer_2"
    raise ValueError(f"sigmas {sigmas.tolist()} straddle the expert boundary {boundary}: each forward runs one expert")


@dataclass
class Wan22ExpertsSpec(WanSpec):
    """Wan2.2-T2V-A14B: WanPipeline with `transformer` (high noise), `transformer_2` (low noise), `boundary_ratio`."""

    family: str = "wan22-a14b"
    sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=81, height=480, width=832, steps=40,
                                                               guidance=4.0, fps=16.0)
    tiny_sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=9, height=32, width=32, steps=4,
                                                                    guidance=4.0, fps=8.0)
    flow_shift: ClassVar[float] = 3.0
    """The A14B diffusers scheduler's shift (diffusers' conversion script)."""
    published: ClassVar[dict[str, str]] = {"Wan-AI/Wan2.2-T2V-A14B-Diffusers": "apache-2.0"}
    published_transformers: ClassVar[dict[str, dict]] = {"Wan-AI/Wan2.2-T2V-A14B-Diffusers": WAN22_A14B}
    experts: ClassVar[tuple[str, ...]] = ("transformer", "transformer_2")
    """The denoisers, in the order WanPipeline runs them (high noise first); each gets its own LoRA."""
    boundary_ratio: ClassVar[float] = BOUNDARY_RATIO
    """Default split when model_index.json does not give one (loaded models record theirs in extra)."""

    @staticmethod
    def matches(index: dict) -> bool:
        """model_index.json of a two-expert Wan2.2: a WanPipeline with a `transformer_2` component."""
        t2 = index.get("transformer_2")
        return index.get("_class_name") == "WanPipeline" and isinstance(t2, list) and t2[0] is not None

    def load(self, source, *, dtype=torch.float32, device="cpu", components=ALL_COMPONENTS, revision=None):
        from diffusers import WanTransformer3DModel

        from reelora.models.common import load_kwargs

        c = super().load(source, dtype=dtype, device=device, components=components, revision=revision)
        if "transformer" in components:  # one backbone, two denoisers: asking for the transformer means both
            kw = {**load_kwargs(source, "transformer_2", revision), "torch_dtype": dtype}
            c.transformer_2 = WanTransformer3DModel.from_pretrained(source, **kw).to(device).eval()
        ratio = model_index(source, revision).get("boundary_ratio")  # the checkpoint's own split
        c.extra["boundary_ratio"] = float(ratio if ratio is not None else self.boundary_ratio)
        return c

    def tiny(self, seed: int = 0, components=ALL_COMPONENTS, vae=None, transformer=None, text=None) -> Components:
        from diffusers import WanTransformer3DModel

        c = super().tiny(seed, components, vae=vae, transformer=transformer, text=text)
        if "transformer" in components:
            with seeded(seed * 1000 + 9):  # its own seed: the experts differ, as the real ones do
                c.transformer_2 = WanTransformer3DModel(**{**TINY_TRANSFORMER, **(transformer or {})}).eval()
        c.extra["boundary_ratio"] = self.boundary_ratio
        return c

    def boundary(self, comps: Components) -> float:
        """The noise level (sigma = t / 1000) where the pipeline switches from `transformer` to `transformer_2`."""
        return float(comps.extra.get("boundary_ratio", self.boundary_ratio))

    def forward(self, comps, transformer, latents, noise, sigmas, text):
        """Flow matching through the expert that owns `sigmas` (training's wrapper, or the loaded components)."""
        expert = expert_of(sigmas, self.boundary(comps))
        inner = getattr(transformer, "module", transformer)  # DDP's wrapper
        if isinstance(inner, Experts):
            run, module, extra = transformer, getattr(inner, expert), {"expert": expert}
        else:  # a bare transformer (not training): take the expert from the components
            run = module = getattr(comps, expert)
            extra = {}
        noisy, target = flow_match_noise(latents, noise, sigmas)
        dtype = next(module.parameters()).dtype
        pred = run(hidden_states=noisy.to(dtype), timestep=(sigmas * 1000.0).to(latents.device),
                   encoder_hidden_states=text["prompt_embeds"].to(dtype), return_dict=False, **extra)[0]
        return pred.float(), target.float()

    def pipeline(self, comps: Components):
        t1, t2 = comps.transformer, comps.transformer_2
        if isinstance(t1, Experts):  # validation samples from the training wrapper
            t1, t2 = t1.transformer, t1.transformer_2
        return self.pipeline_class()(tokenizer=comps.tokenizer, text_encoder=comps.text_encoder, vae=comps.vae,
                                     scheduler=comps.scheduler, transformer=t1, transformer_2=t2,
                                     boundary_ratio=self.boundary(comps))

    def expert_file(self, base: str, component: str) -> str:
        """`pytorch_lora_weights.safetensors` -> the file of `component` (the high-noise expert keeps the plain
        diffusers name, so `pipe.load_lora_weights(folder)` puts it into `transformer` as diffusers expects)."""
        if component == "transformer" and base.startswith("pytorch_lora_weights"):
            return base
        stem, dot, ext = base.rpartition(".")
        return f"{stem}_{EXPERT_SUFFIX[component]}{dot}{ext}"

    def exports(self, sd: dict[str, torch.Tensor], alpha: float, component: str = "transformer") -> dict:
        """One ComfyUI file per expert (load each with its own LoraLoaderModelOnly on that expert's model)."""
        name = f"{COMFYUI_FILE.rsplit('.', 1)[0]}_{EXPERT_SUFFIX[component]}.safetensors"
        return {f"comfyui_{EXPERT_SUFFIX[component]}": (
            name, to_comfyui(sd, alpha),
            f"the {EXPERT_SUFFIX[component].replace('_', '-')} expert under the original Wan module names for ComfyUI")}
