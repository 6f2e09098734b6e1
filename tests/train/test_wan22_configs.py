"""The shipped Wan2.2 configs hold on the published architectures (meta device, no weights), and their headers
(and configs/ltx2-lora.yaml's) carry `reelora plan`'s output for them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reelora.models.registry import family_spec
from reelora.train.config import load_config

ROOT = Path(__file__).parents[2]
CFG_5B = ROOT / "configs" / "wan2.2-ti2v-5b-lora.yaml"
CFG_A14B = ROOT / "configs" / "wan2.2-t2v-a14b-lora.yaml"


def meta_transformer(cfg):
    """The config's denoiser with its LoRA, on the meta device (both A14B experts have this one shape)."""
    from diffusers import WanTransformer3DModel

    from reelora.models.lora import attach_lora
    from reelora.models.registry import resolve_published

    spec, arch = resolve_published(cfg.model)
    with torch.device("meta"):
        t = WanTransformer3DModel(**arch)
        attach_lora(t, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules, seed=None)
    return spec, t


@pytest.mark.parametrize("path, family, experts, base, lora", [
    (CFG_5B, "wan22-5b", 1, 4_999_787_712, 30 * (8 * 32 * (3072 + 3072) + 2 * 32 * (3072 + 14336))),
    (CFG_A14B, "wan22-a14b", 2, 14_288_491_584, 40 * (8 * 32 * (5120 + 5120) + 2 * 32 * (5120 + 13824))),
], ids=["ti2v-5b", "t2v-a14b"])
def test_published_wan22_on_the_meta_device(path, family, experts, base, lora):
    """Base parameters per expert, one LoRA per targeted Linear (10 per block) and its size from dim and FFN width."""
    from reelora.models.lora import lora_state_dict

    cfg = load_config(path)
    spec, t = meta_transformer(cfg)
    assert spec.family == family and len(getattr(spec, "experts", None) or ("transformer",)) == experts
    assert cfg.lora.rank == 32 and cfg.lora.target_modules == list(spec.lora_targets)
    assert sum(p.numel() for n, p in t.named_parameters() if "lora_" not in n) == base
    sd = lora_state_dict(t)
    assert sum(1 for k in sd if "lora_A" in k) == 10 * len(getattr(t, spec.blocks))
    assert sum(v.numel() for v in sd.values()) == lora
    if family == "wan22-5b":
        assert t.config.in_channels == spec.published_vae["z_dim"] == 48
        assert spec.published_vae["scale_factor_spatial"] == 16 and len(spec.published_vae["latents_mean"]) == 48


@pytest.mark.parametrize("path, overrides, gib", [(CFG_5B, [], "22.97"), (CFG_A14B, ["--frames", "33"], "69.17"),
                                                  (ROOT / "configs" / "ltx2-lora.yaml", [], "45.79")],
                         ids=["ti2v-5b", "t2v-a14b", "ltx2"])
def test_config_header_is_the_plan(path, overrides, gib, capsys):
    """The header pastes `reelora plan --config THIS data.cache=CACHE ...`: the same table comes out today."""
    from reelora.cli import main

    assert main(["plan", "--config", str(path), "data.cache=CACHE", *overrides]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    lines = path.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   memory plan for"))
    header = [line.removeprefix("#").removeprefix("   ").rstrip() for line in lines[start:start + len(printed)]]
    assert [line.rstrip() for line in printed] == header
    assert any(line.startswith("  total") and gib in line for line in printed)


def test_a14b_plan_holds_both_experts():
    from reelora.train import plan as P

    cfg = load_config(CFG_A14B)
    arch = P.architecture(cfg.model)
    assert arch.experts == 2
    counts = P.count_parameters(arch, cfg.lora.rank, cfg.lora.target_modules)  # one expert's
    both = P.estimate(cfg, arch=arch, shape=(33, 480, 832), counts=counts)
    one = P.estimate(load_config(CFG_A14B, ["lora.experts=high"]), arch=arch, shape=(33, 480, 832), counts=counts)
    assert one.lora_params == counts.lora
    assert both.params == 2 * 14_288_491_584 == one.params
    assert both.lora_params == 2 * one.lora_params
    assert both.activations == one.activations  # a step runs one expert
    assert family_spec("wan22-a14b").published_transformers[cfg.model]["num_layers"] == 40
