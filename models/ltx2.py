"""LTX-2 (diffusers format: LTX2Pipeline, LTX2VideoTransformer3DModel, AutoencoderKLLTX2Video, Gemma 3), video only.

LTX-2 is an audio-video model: one transformer with a video and an audio stream that attend to each other,
text from a Gemma 3 encoder through `connectors` (one text stream per modality), an audio VAE and a vocoder.
reelora trains and samples its video: the LoRA targets the video stream's attention and FFN only (the audio
stream's modules are named `audio_attn1`, `audio_ff`, ... and are not matched), training runs the transformer
with `isolate_modalities` (no audio-to-video or video-to-audio attention) and one silent audio token, and the
loss is the video's. Sampling is LTX2Pipeline's own (it renders audio too; reelora writes the video).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from reelora.models.common import build_tiny, flow_match_noise, load_kwargs, load_pretrained, seeded
from reelora.models.ltx import decode_normalized, encode_normalized
from reelora.models.settings import SampleSettings
from reelora.models.spec import ALL_COMPONENTS, Components

# Tiny shapes: diffusers' LTX2 pipeline tests, with every text width 16 (this diffusers version's connectors keep the
# Gemma hidden size, and the transformer's cross-attention takes the connectors' output) and a VAE that compresses
# time as its decoder expands it (2x: 9 frames <-> 5 latent frames; the tests' encoder keeps time, its decoder doubles it).
TINY_TEXT = dict(vocab_size=384, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=8, max_position_embeddings=128, sliding_window=16, pad_token_id=0,
                 eos_token_id=1, bos_token_id=2)
"""Gemma3TextConfig of the tiny Gemma 3 (ByT5's byte vocabulary: 384 ids, pad 0, eos 1)."""
TINY_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8)
TINY_TRANSFORMER = dict(
    in_channels=4, out_channels=4, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
    cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
    audio_attention_head_dim=8, audio_cross_attention_dim=16, num_layers=2, qk_norm="rms_norm_across_heads",
    caption_channels=16, rope_double_precision=False, rope_type="split",
)
TINY_CONNECTORS = dict(
    caption_channels=16, text_proj_in_factor=3, video_connector_num_attention_heads=2, video_connector_attention_head_dim=8,
    video_connector_num_layers=1, video_connector_num_learnable_registers=None, audio_connector_num_attention_heads=2,
    audio_connector_attention_head_dim=8, audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
    connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False, causal_temporal_positioning=False,
    rope_type="split",
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,), decoder_block_out_channels=(8,),
    layers_per_block=(1,), decoder_layers_per_block=(1, 1), spatio_temporal_scaling=(True,),
    decoder_spatio_temporal_scaling=(True,), decoder_inject_noise=(False, False), downsample_type=("spatiotemporal",),
    upsample_residual=(False,), upsample_factor=(1,), timestep_conditioning=False, patch_size=1, patch_size_t=1,
    encoder_causal=True, decoder_causal=False,
)
TINY_AUDIO_VAE = dict(base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None,
                      in_channels=2, resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height",
                      dropout=0.0, mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True,
                      mel_bins=8)
TINY_VOCODER = dict(in_channels=16, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[4, 4], upsample_factors=[2, 2],
                    resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], leaky_relu_negative_slope=0.1,
                    output_sampling_rate=16000)
TINY_MAX_TEXT_LEN = 32
FRAME_RATE = 24.0
"""LTX2Pipeline's default frame rate (it enters the video RoPE coordinates)."""
EXTRA_MODULES = ("connectors", "audio_vae", "vocoder")
"""LTX2Pipeline components besides the five every family has (kept in Components.extra)."""


@dataclass
class LTX2Spec:
    """LTX-2 video-only: the video stream trains, the audio stream and the cross-modal attention stay frozen."""

    family: str = "ltx2"
    pipeline_class_name: str = "LTX2Pipeline"
    # The video stream's attention (self and text cross-attention) and FFN: suffix matching leaves the audio stream
    # (audio_attn1/2, audio_ff) and the cross-modal attention (audio_to_video_attn, ...) untouched.
    lora_targets: tuple[str, ...] = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q",
                                     "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
    max_text_len: int = 1024

    sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=121, height=512, width=768, steps=30,
                                                               guidance=3.0, fps=24.0)
    """LTX2Pipeline's own example (121 frames at 512x768, 24 fps, guidance 3)."""
    tiny_sample_defaults: ClassVar[SampleSettings] = SampleSettings(num_frames=9, height=32, width=32, steps=4,
                                                                    guidance=3.0, fps=8.0)
    size_multiple: ClassVar[int] = 32
    """Height/width multiple LTX2Pipeline.check_inputs insists on."""
    blocks: ClassVar[str] = "transformer_blocks"
    flow_shift: ClassVar[float] = 1.0
    """The tiny scheduler's shift (FlowMatchEulerDiscreteScheduler's default); released LTX-2 checkpoints shift by
    resolution through their own scheduler config."""
    prompt_embeds_keys: ClassVar[tuple[str, ...]] = ("prompt_embeds", "prompt_attention_mask", "negative_prompt_embeds",
                                                     "negative_prompt_attention_mask")
    fp32_components: ClassVar[tuple[str, ...]] = ()
    published_transformers: ClassVar[dict[str, dict]] = {"Lightricks/LTX-2": {}}
    """Hub id -> transformer config for real-size builds on the meta device: LTX2VideoTransformer3DModel's defaults
    are the released 19B model's (48 blocks, video dim 4096, audio dim 2048, Gemma 3 12B captions of width 3840:
    18.88e9 parameters, 5.71e9 of them the audio stream's)."""
    published: ClassVar[dict[str, str]] = {}
    """Released checkpoints whose licence reelora states: none (LTX-2's own licence; the card points to the base's)."""

    def load(self, source, *, dtype=torch.float32, device="cpu", components=ALL_COMPONENTS, revision=None):
        from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                               LTX2VideoTransformer3DModel)
        from diffusers.pipelines.ltx2 import LTX2TextConnectors
        from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
        from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

        classes = dict(transformer=LTX2VideoTransformer3DModel, vae=AutoencoderKLLTX2Video,
                       text_encoder=Gemma3ForConditionalGeneration, tokenizer=AutoTokenizer,
                       scheduler=FlowMatchEulerDiscreteScheduler)
        c = load_pretrained(self.family, source, classes, dtype=dtype, device=device, components=components,
                            revision=revision, max_text_len=self.max_text_len)
        extra = {"connectors": LTX2TextConnectors, "audio_vae": AutoencoderKLLTX2Audio, "vocoder": LTX2Vocoder}
        for name in self._extras(components):
            kw = {**load_kwargs(source, name, revision), "torch_dtype": dtype}
            c.extra[name] = extra[name].from_pretrained(source, **kw).to(device).eval()
        return c

    @staticmethod
    def _extras(components) -> list[str]:
        # The connectors turn the text encoder's output into the transformer's text (a training forward needs them);
        # the audio VAE and vocoder only finish a sampled clip, with the VAE.
        return [n for n, need in (("connectors", "transformer"), ("audio_vae", "vae"), ("vocoder", "vae")) if need in components]

    def tiny(self, seed: int = 0, components=ALL_COMPONENTS) -> Components:
        from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, FlowMatchEulerDiscreteScheduler,
                               LTX2VideoTransformer3DModel)
        from diffusers.pipelines.ltx2 import LTX2TextConnectors
        from diffusers.pipelines.ltx2.vocoder import LTX2Vocoder
        from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

        def vae():
            v = AutoencoderKLLTX2Video(**TINY_VAE)
            v.use_framewise_encoding = False  # framewise tiling assumes real sizes
            v.use_framewise_decoding = False
            return v

        def text_encoder():
            cfg = Gemma3Config(text_config=Gemma3TextConfig(**TINY_TEXT), vision_config=SiglipVisionConfig(**TINY_VISION),
                               mm_tokens_per_image=4, image_token_index=3, boi_token_index=4, eoi_token_index=5)
            return Gemma3ForConditionalGeneration(cfg)

        builders = dict(transformer=lambda: LTX2VideoTransformer3DModel(**TINY_TRANSFORMER), vae=vae,
                        text_encoder=text_encoder, scheduler=lambda: FlowMatchEulerDiscreteScheduler(shift=self.flow_shift))
        c = build_tiny(self.family, seed, components, builders, TINY_MAX_TEXT_LEN)
        extra = {"connectors": lambda: LTX2TextConnectors(**TINY_CONNECTORS),
                 "audio_vae": lambda: AutoencoderKLLTX2Audio(**TINY_AUDIO_VAE), "vocoder": lambda: LTX2Vocoder(**TINY_VOCODER)}
        for offset, name in enumerate(EXTRA_MODULES, start=11):
            if name in self._extras(components):
                with seeded(seed * 1000 + offset):
                    c.extra[name] = extra[name]().eval()
        if c.tokenizer is not None:
            c.tokenizer.padding_side = "left"  # Gemma's, as LTX2Pipeline sets it
        return c

    # -- latents and text -----------------------------------------------------------------------------------

    def encode_video(self, comps, video, generator=None):
        return encode_normalized(comps.vae, video, generator)

    def decode_latents(self, comps, latents):
        return decode_normalized(comps.vae, latents)

    @torch.no_grad()
    def encode_prompt(self, comps, prompts):
        """LTX2Pipeline._get_gemma_prompt_embeds: left-padded tokens, every Gemma layer's hidden states stacked."""
        max_len = comps.extra.get("max_text_len", self.max_text_len)
        tok = comps.tokenizer
        tok.padding_side = "left"
        ids = tok([p.strip() for p in prompts], padding="max_length", max_length=max_len, truncation=True,
                  add_special_tokens=True, return_tensors="pt")
        enc = comps.text_encoder
        out = enc(input_ids=ids.input_ids.to(enc.device), attention_mask=ids.attention_mask.to(enc.device),
                  output_hidden_states=True)
        hidden = torch.stack(out.hidden_states, dim=-1).flatten(2, 3)
        return {"prompt_embeds": hidden, "prompt_attention_mask": ids.attention_mask.to(enc.device)}

    def forward(self, comps, transformer, latents, noise, sigmas, text):
        """Video flow matching: the video stream with one silent audio token and no cross-modal attention."""
        from diffusers import LTX2Pipeline

        noisy, target = flow_match_noise(latents, noise, sigmas)
        b, _, f, h, w = latents.shape
        cfg = getattr(transformer, "module", transformer).config  # DDP's wrapper has no .config
        dtype = next(transformer.parameters()).dtype
        connectors = comps.extra["connectors"]
        # The connectors are frozen and not trained: without no_grad autograd would keep their activations and give
        # their ~1.4e9 parameters (released widths) gradients that no optimizer ever clears.
        with torch.no_grad():
            video_text, audio_text, mask = connectors(text["prompt_embeds"].to(next(connectors.parameters()).dtype),
                                                      text["prompt_attention_mask"], padding_side="left")
        video_text, audio_text = video_text.to(dtype), audio_text.to(dtype)
        packed = LTX2Pipeline._pack_latents(noisy, cfg.patch_size, cfg.patch_size_t)
        audio = torch.zeros(b, 1, cfg.audio_in_channels, device=latents.device, dtype=dtype)
        t = (sigmas * 1000.0).to(latents.device)
        pred, _ = transformer(
            hidden_states=packed.to(dtype), audio_hidden_states=audio, encoder_hidden_states=video_text,
            audio_encoder_hidden_states=audio_text, timestep=t, sigma=t, encoder_attention_mask=mask,
            audio_encoder_attention_mask=mask, num_frames=f, height=h, width=w, fps=FRAME_RATE, audio_num_frames=1,
            isolate_modalities=True, return_dict=False)
        pred = LTX2Pipeline._unpack_latents(pred, f, h, w, cfg.patch_size, cfg.patch_size_t)
        return pred.float(), target.float()

    def pipeline_class(self):
        import diffusers

        return getattr(diffusers, self.pipeline_class_name)

    def pipeline(self, comps):
        return self.pipeline_class()(scheduler=comps.scheduler, vae=comps.vae, audio_vae=comps.extra.get("audio_vae"),
                                     text_encoder=comps.text_encoder, tokenizer=comps.tokenizer,
                                     connectors=comps.extra.get("connectors"), transformer=comps.transformer,
                                     vocoder=comps.extra.get("vocoder"))

    def exports(self, sd: dict[str, torch.Tensor], alpha: float) -> dict[str, tuple[str, dict, str]]:
        """The diffusers file only: no other LTX-2 LoRA layout is written yet."""
        return {}
