"""`reelora plan` for LTX-2 (video-only LoRA as LTX2Spec.forward trains it): exact counts on the released
architecture, the activation formula against the tensors a small-width LTX-2 really saves, the shipped config's header."""
from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from reelora.train import plan as P
from reelora.train.config import load_config
from tests.train.conftest import measure_activations

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

    from reelora.models.ltx2 import LTX2Spec

    def inputs():
        # The connectors as loading leaves them (trainable flags on): the spec's forward must keep them out of autograd.
        comps = types.SimpleNamespace(extra={"connectors": small_connectors().eval()})
        latents = torch.randn(1, 16, 3, 6, 10)
        mask = torch.ones(1, text_len, dtype=torch.long)
        mask[:, :5] = 0  # left padding, as Gemma's tokenizer pads
        return comps, latents, {"prompt_embeds": torch.randn(1, text_len, 48 * 3), "prompt_attention_mask": mask}

    m = measure_activations(LTX2Spec, LTX2VideoTransformer3DModel, SMALL_LTX2, inputs, mixed_precision, checkpointing,
                            rank, dict(vae_temporal=8, vae_spatial=32, latent_channels=16, text_len=text_len,
                                       default_shape=(17, 192, 320), structure="ltx2", connectors={}))
    # With checkpointing the RoPE cos/sin are held as the checkpointed blocks' arguments, not saved by autograd.
    held = 2 * m.tokens * m.arch.dim * 4 if checkpointing else 0
    return (m.stored - held) / m.saved, (m.stored + m.backward) / m.peak


@pytest.mark.parametrize("mixed_precision, checkpointing", [("bf16", False), ("bf16", True), ("no", False)])
def test_activation_estimate_matches_a_real_forward_and_backward(mixed_precision, checkpointing):
    """The formula vs what a small LTX-2 with a video LoRA really saves and peaks at on CPU: within 15%, as for Wan
    (measured: saved 0.97-1.00, peak 0.95-1.03, fp32 with checkpointing included)."""
    saved, peak = plan_vs_measured(mixed_precision, checkpointing)
    assert 0.85 < saved < 1.15 and 0.85 < peak < 1.15, (saved, peak)


def test_parameter_counts_and_shapes_of_the_released_ltx2():
    """Built on the meta device: 18.88e9 base params with the 5.71e9 of the audio stream, 480 video LoRA layers,
    the 1.43e9-param text connectors; 121 x 512 x 768 frames -> 16 x 16 x 24 latents (8x, 32x) = 6,144 tokens."""
    cfg = load_config(CFG)
    arch = P.architecture(cfg.model)
    assert arch.structure == "ltx2" and arch.dim == 4096 and arch.ffn == 16384 and arch.text_len == 1024
    c = P.count_parameters(arch, cfg.lora.rank, cfg.lora.target_modules)
    assert c.base == 18_876_174_592 and c.audio == 5_714_096_256 and c.blocks == 48
    assert c.lora_layers == 480 and c.lora == 48 * (8 * 32 * (4096 + 4096) + 32 * (4096 + 16384) + 32 * (16384 + 4096))
    assert c.connectors == 1_431_475_200
    assert arch.default_shape == (121, 512, 768)
    latent = P.latent_shape(arch, *arch.default_shape)
    assert latent == (128, 16, 16, 24) and P.tokens(arch, latent) == 6144
    plan = P.estimate(cfg, arch=arch, counts=c)
    assert plan.rows["frozen base weights"] == pytest.approx(c.base * 2 / P.GIB)  # the audio stream held with the rest
    assert plan.rows["frozen text connectors"] == pytest.approx(c.connectors * 2 / P.GIB)
    assert plan.rows["optimizer state (adamw)"] == pytest.approx(c.lora * 8 / P.GIB)
    assert plan.total_gib["checkpointing"] < plan.total_gib["no_checkpointing"] / 2
    # tiny-ltx2: its own VAE (2x in time and space), as the tiny pipeline encodes
    tiny = P.architecture("tiny-ltx2")
    assert P.latent_shape(tiny, 9, 32, 32) == (4, 5, 16, 16)


def test_a_local_ltx2_directory_is_read_from_its_config_files(tmp_path):
    """A diffusers LTX-2 directory: the VAE's compression comes from vae/config.json as LTX2Pipeline reads it."""
    import json

    for sub, conf in (("transformer", {"num_layers": 2}), ("vae", {"spatial_compression_ratio": 32, "temporal_compression_ratio": 8}),
                      ("connectors", {"video_connector_num_layers": 1, "audio_connector_num_layers": 1})):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps(conf))
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "LTX2Pipeline"}))
    arch = P.architecture(str(tmp_path))
    assert arch.structure == "ltx2" and arch.latent_channels == 128 and (arch.vae_temporal, arch.vae_spatial) == (8, 32)
    c = P.count_parameters(arch, 8, None)
    assert c.blocks == 2 and c.lora_layers == 20 and 0 < c.connectors < 1_431_475_200
