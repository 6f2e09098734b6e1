"""The shipped real-size configs hold on the published architectures: built on the meta device, no weights."""
from __future__ import annotations

from pathlib import Path

import torch

from reelora.models.wan import WAN_1_3B, WAN_14B  # the published configs (also used by `reelora plan`)
from reelora.train.config import load_config

ROOT = Path(__file__).parents[2]


def test_wan_14b_fsdp_config_on_the_published_architecture():
    """configs/wan2.1-t2v-14b-lora-fsdp.yaml: FSDP over the spec's block list, and the LoRA size its header states
    (rank 32 on attention + FFN: ~150M params in 400 layers)."""
    from diffusers import WanTransformer3DModel

    from reelora.models.lora import attach_lora, lora_state_dict
    from reelora.models.registry import family_spec

    cfg = load_config(ROOT / "configs" / "wan2.1-t2v-14b-lora-fsdp.yaml")
    assert cfg.train.parallel == "fsdp" and cfg.train.gradient_checkpointing and cfg.train.mixed_precision == "bf16"
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**WAN_14B)
        attach_lora(transformer, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules)
    base = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
    assert 14.0e9 < base < 14.5e9  # "14B"
    blocks = getattr(transformer, family_spec("wan").blocks)
    assert len(blocks) == 40  # what train/parallel.py shards, one fully_shard each
    sd = lora_state_dict(transformer)
    assert sum(1 for k in sd if "lora_A" in k) == 40 * 10  # attn1 q/k/v/o, attn2 q/k/v/o, ffn in/out per block
    assert sum(t.numel() for t in sd.values()) == 40 * (8 * 32 * (5120 + 5120) + 2 * 32 * (5120 + 13824))  # 153,354,240


def test_wan_1_3b_config_on_the_published_architecture():
    """configs/wan2.1-t2v-1.3b-lora.yaml: ~1.42e9 base params, 300 LoRA layers, LoRA size from dim 1536 / FFN 8960."""
    from diffusers import WanTransformer3DModel

    from reelora.models.lora import attach_lora, lora_state_dict

    cfg = load_config(ROOT / "configs" / "wan2.1-t2v-1.3b-lora.yaml")
    r = cfg.lora.rank
    with torch.device("meta"):
        transformer = WanTransformer3DModel(**WAN_1_3B)
        attach_lora(transformer, rank=r, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules)
    base = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
    assert 1.40e9 < base < 1.44e9
    sd = lora_state_dict(transformer)
    assert sum(1 for k in sd if "lora_A" in k) == 300
    assert sum(t.numel() for t in sd.values()) == 30 * (8 * r * (1536 + 1536) + 2 * r * (1536 + 8960))
