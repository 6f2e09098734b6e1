"""`reelora plan` for LTX-2 (video-only LoRA as LTX2Spec.forward trains it): exact counts on the released
architecture, the activation formula against the tensors a small-width LTX-2 really saves, the shipped config's header."""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from reelora.train import plan as P
from reelora.train.config import load_config

ROOT = Path(__file__).parents[2]
CFG = ROOT / "configs" / "ltx2-lora.yaml"

# The released block structure (interleaved RoPE in double precision, gelu-approximate FFN of 4 x dim, no norm affine)
# at a small width: video dim 128 in 2 heads, audio dim 64, text width 48.
SMALL_LTX2 = dict(in_channels=16, out_channels=16, num_attention_heads=2, attention_head_dim=64, cross_attention_dim=128,
                  audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2, audio_attention_head_dim=32,
                  audio_cross_attention_dim=64, num_layers=2, caption_channels=48)


def small_connectors():
    from diffusers.pipelines.ltx2 import LTX2TextConnectors

    from reelora.models.ltx2 import TINY_CONNECTORS

    return LTX2TextConnectors(**{**TINY_CONNECTORS, "caption_channels": 48, "video_connector_num_attention_heads": 2,
                                 "video_connector_attention_head_dim": 24, "audio_connector_num_attention_heads": 2,
                                 "audio_connector_attention_head_dim": 24})


def plan_vs_measured(mixed_precision: str, checkpointing: bool, rank: int = 8, text_len: int = 24):
    """Estimated / measured on LTX2Spec.forward, latents 16 x 3 x 6 x 10 (180 tokens): (saved-tensor bytes of the
    forward vs the plan's stored activations, CPU allocator peak of a training step vs stored + backward)."""
    from diffusers import LTX2VideoTransformer3DModel

    from reelora.models.lora import attach_lora
    from reelora.models.ltx2 import LTX2Spec

    torch.manual_seed(0)
    model = LTX2VideoTransformer3DModel(**SMALL_LTX2)
    half = mixed_precision == "bf16"
    if half:  # as training stores the frozen base (LoRA stays fp32, autocast computes in bf16)
        model.to(torch.bfloat16)
    attach_lora(model, rank=rank, alpha=rank, target_modules=list(LTX2Spec.lora_targets))
    if checkpointing:
        model.enable_gradient_checkpointing()
    # The connectors as loading leaves them (trainable flags on): the spec's forward must keep them out of autograd.
    comps = types.SimpleNamespace(extra={"connectors": small_connectors().eval()})
    latents = torch.randn(1, 16, 3, 6, 10)
    mask = torch.ones(1, text_len, dtype=torch.long)
    mask[:, :5] = 0  # left padding, as Gemma's tokenizer pads
    text = {"prompt_embeds": torch.randn(1, text_len, 48 * 3), "prompt_attention_mask": mask}

    def forward():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=half):
            pred, target = LTX2Spec().forward(comps, model, latents, torch.randn_like(latents), torch.rand(1), text)
            return ((pred - target) ** 2).mean()

    forward().backward()  # the LoRA gradients exist from here on, as in training after its first step
    saved = P.measure_saved_bytes(forward, model)
    peak = P.measure_peak_bytes(lambda: forward().backward())
    arch = P.Architecture("measured", P._with_defaults(LTX2VideoTransformer3DModel, SMALL_LTX2), 8, 32, 16, text_len,
                          (17, 192, 320), family="ltx2", connectors={})
    counts = P.count_parameters(arch, rank, None)
    s = P.tokens(arch, tuple(latents.shape[1:]))
    est = P.activation_bytes(arch, counts, s, latents.numel(), rank, half, checkpointing)
    # With checkpointing the RoPE cos/sin are held as the checkpointed blocks' arguments, not saved by autograd.
    held = 2 * s * arch.dim * 4 if checkpointing else 0
    return (est["stored"] - held) / saved, (est["stored"] + est["backward"]) / peak


if __name__ == "__main__":
    for mp in ("no", "bf16"):
        for ck in (False, True):
            print(mp, ck, plan_vs_measured(mp, ck))
