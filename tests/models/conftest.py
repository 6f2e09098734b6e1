"""Adapters for sampler tests, made offline with peft on the tiny backbones (never downloaded).

`make_adapter` writes what our training writes: diffusers keys, diffusers' `lora_adapter_metadata`
(rank/alpha/targets) plus lineage entries in the safetensors header. lora_B is random and non-zero
so an adapter visibly changes the output. `to_comfyui` / `to_musubi` re-key the same weights the way
those trainers store Wan LoRAs, so a converted file must sample exactly like the original.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from reelora.models.registry import load_model

RANK, ALPHA = 4, 8  # scaling alpha / rank = 2: a loader that drops the metadata gets it wrong
LINEAGE = {
    "reelora.base_model": "tiny-wan",
    "reelora.base_revision": "seed0",
    "reelora.config": json.dumps({"lora": {"rank": RANK, "alpha": ALPHA}, "train": {"max_steps": 3}}),
    "reelora.shard_index_sha256": "ab" * 32,
    "reelora.titles": json.dumps(["title-001", "title-002"]),
}
# diffusers module names -> original Wan names (the inverse of diffusers' Wan LoRA converters)
_WAN_NAMES = {"attn1": "self_attn", "attn2": "cross_attn", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "o",
              "ffn.net.0.proj": "ffn.0", "ffn.net.2": "ffn.2"}


def lora_state_dict(model: str, seed: int, rank: int = RANK, alpha: int = ALPHA) -> tuple[dict, dict]:
    """(diffusers-keyed LoRA tensors, LoraConfig dict) for the tiny `model`, lora_B ~ N(0, 0.5)."""
    from peft import LoraConfig, get_peft_model_state_dict

    spec, comps = load_model(model, components=("transformer",))
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(spec.lora_targets))
    comps.transformer.add_adapter(cfg)
    g = torch.Generator().manual_seed(seed)
    for name, p in comps.transformer.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    sd = {f"transformer.{k}": v.contiguous() for k, v in get_peft_model_state_dict(comps.transformer).items()}
    return sd, cfg.to_dict()


def write_diffusers(path: Path, sd: dict, config: dict | None, lineage: dict | None = None) -> Path:
    """Same header layout as diffusers' save_lora_weights (+ lineage entries)."""
    meta = {"format": "pt"}
    if config is not None:
        cfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
        meta["lora_adapter_metadata"] = json.dumps({f"transformer.{k}": v for k, v in cfg.items()}, sort_keys=True)
    meta.update(lineage or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=meta)
    return path


def write_expert_adapter(out: Path, model: str = "tiny-wan22-a14b") -> dict:
    """A two-expert adapter folder as training writes it (save_adapter: one file per expert and format), with
    random non-zero lora_B per expert; returns save_adapter's paths."""
    from reelora.models.lora import attach_lora, lora_state_dict as trained_state_dict, save_adapter
    from reelora.models.wan22 import Experts

    spec, comps = load_model(model, components=("transformer",))
    both = Experts(comps.transformer, comps.transformer_2, adapted=("transformer", "transformer_2"))
    g = torch.Generator().manual_seed(0)
    for m in (both.transformer, both.transformer_2):
        attach_lora(m, rank=4, alpha=4.0, target_modules=list(spec.lora_targets))
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.data = torch.randn(p.shape, generator=g) * 0.5
    return save_adapter(out, trained_state_dict(both), rank=4, alpha=4.0, target_modules=list(spec.lora_targets),
                        family=spec.family, lineage={"base_model": model})


def _wan_original(module: str) -> str:
    # blocks.0.attn1.to_q -> blocks.0.self_attn.q ; blocks.0.ffn.net.0.proj -> blocks.0.ffn.0
    block, rest = module.split(".", 2)[:2], module.split(".", 2)[2]
    for ours, theirs in _WAN_NAMES.items():
        rest = rest.replace(ours, theirs)
    return ".".join(block + [rest])


def to_comfyui(sd: dict, alpha: float) -> dict:
    out = {}
    for k, v in sd.items():
        module, part = k.removeprefix("transformer.").rsplit(".", 2)[0], k.rsplit(".", 2)[1]
        name = "diffusion_model." + _wan_original(module)
        out[f"{name}.{part}.weight"] = v
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def to_musubi(sd: dict, alpha: float) -> dict:
    out = {}
    for k, v in sd.items():
        module, part = k.removeprefix("transformer.").rsplit(".", 2)[0], k.rsplit(".", 2)[1]
        name = "lora_unet_" + _wan_original(module).replace(".", "_")
        out[f"{name}.{'lora_down' if part == 'lora_A' else 'lora_up'}.weight"] = v
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


@pytest.fixture(scope="session")
def adapters(tmp_path_factory) -> dict[str, Path]:
    """Adapter files by role: wan (+lineage), wan2 (another seed), comfyui, musubi, ltx."""
    d = tmp_path_factory.mktemp("adapters")
    sd, cfg = lora_state_dict("tiny-wan", seed=1)
    sd2, cfg2 = lora_state_dict("tiny-wan", seed=2)
    ltx, ltx_cfg = lora_state_dict("tiny-ltx", seed=3)
    return {
        "wan": write_diffusers(d / "wan" / "pytorch_lora_weights.safetensors", sd, cfg, LINEAGE),
        "wan2": write_diffusers(d / "wan2.safetensors", sd2, cfg2),
        "comfyui": write_diffusers(d / "wan_comfyui.safetensors", to_comfyui(sd, ALPHA), None),
        "musubi": write_diffusers(d / "wan_musubi.safetensors", to_musubi(sd, ALPHA), None),
        "ltx": write_diffusers(d / "ltx.safetensors", ltx, ltx_cfg),
    }


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """The adapter folder of a 3-step tiny-wan training run (train/loop.py export), shared by the models tests."""
    from tests.models.test_trained_adapter import train_adapter

    return train_adapter(tmp_path_factory.mktemp("trained"), "tiny-wan")
