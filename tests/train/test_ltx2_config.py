"""configs/ltx2-lora.yaml on the published LTX-2 transformer (meta device): its size and a video-only LoRA."""
from __future__ import annotations

from pathlib import Path

import torch

from reelora.train.config import load_config

ROOT = Path(__file__).parents[2]


def test_ltx2_config_on_the_published_architecture():
    from diffusers import LTX2VideoTransformer3DModel

    from reelora.models.lora import attach_lora, lora_state_dict
    from reelora.models.registry import resolve_published

    cfg = load_config(ROOT / "configs" / "ltx2-lora.yaml")
    spec, arch = resolve_published(cfg.model)
    assert spec.family == "ltx2" and cfg.lora.target_modules == list(spec.lora_targets)
    with torch.device("meta"):
        t = LTX2VideoTransformer3DModel(**arch)
        base = sum(p.numel() for p in t.parameters())
        audio = sum(p.numel() for n, p in t.named_parameters() if "audio" in n)
        attach_lora(t, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules, seed=None)
    assert base == 18_876_174_592 and audio == 5_714_096_256  # the 19B release; the header states both
    sd = lora_state_dict(t)
    assert sum(1 for k in sd if "lora_A" in k) == 10 * len(t.transformer_blocks) == 480 and not any("audio" in k for k in sd)
    assert sum(v.numel() for v in sd.values()) == 163_577_856
    header = (ROOT / "configs" / "ltx2-lora.yaml").read_text()
    assert "18.88e9" in header and "5.71e9" in header and "163.6M" in header and "480 layers" in header
