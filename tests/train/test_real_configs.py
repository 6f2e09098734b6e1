"""The shipped real-size configs hold on the published architectures: built on the meta device, no weights."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reelora.models.wan import PUBLISHED_TRANSFORMERS, WAN_14B  # the published configs (also used by `reelora plan`)
from reelora.train.config import load_config

ROOT = Path(__file__).parents[2]

PUBLISHED = PUBLISHED_TRANSFORMERS
# (lowest, highest) base parameters: what the names promise.
BASE_PARAMS = {"Wan-AI/Wan2.1-T2V-14B-Diffusers": (14.0e9, 14.5e9), "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": (1.40e9, 1.44e9)}


def real_configs() -> list[Path]:
    """Every shipped training config whose backbone is a hub id (not a built-in tiny name, not a local folder such
    as demo.yaml's runs/demo/base, which the demo builds and tests/demo runs)."""
    import re

    paths = sorted(p for p in (ROOT / "configs").glob("*.yaml"))
    return [p for p in paths if re.fullmatch(r"[\w.-]+/[\w.-]+", load_config(p).model)]


def meta_transformer(cfg):
    """The config's backbone with its LoRA attached, on the meta device (shapes only)."""
    from diffusers import WanTransformer3DModel

    from reelora.models.lora import attach_lora

    with torch.device("meta"):
        transformer = WanTransformer3DModel(**PUBLISHED[cfg.model])
        attach_lora(transformer, rank=cfg.lora.rank, alpha=cfg.lora.alpha, target_modules=cfg.lora.target_modules)
    return transformer


def wan21_configs() -> list[Path]:
    """The real configs of Wan2.1 models (the other families' are checked in their own tests, e.g. test_wan22_configs.py)."""
    return [p for p in real_configs() if load_config(p).model in PUBLISHED]


def test_the_real_configs_are_the_published_wan_checkpoints():
    from reelora.models.registry import FAMILIES, family_spec

    names = {p.name for p in real_configs()}
    assert {"wan2.1-t2v-1.3b-lora.yaml", "wan2.1-t2v-14b-lora.yaml"} <= names
    known = {i for spec in FAMILIES.values() for i in getattr(spec, "published_transformers", {})}  # every family's
    for p in real_configs():  # a new real-size config needs its architecture in its family, so a test checks it
        assert load_config(p).model in known, f"{p.name}: add the published architecture of its model to its family"
    assert set(PUBLISHED) == set(family_spec("wan").published)  # the hub ids the model card names


@pytest.mark.parametrize("path", wan21_configs(), ids=lambda p: p.name)
def test_real_config_on_the_published_architecture(path):
    """Parameter count, one LoRA per targeted Linear (10 per block: attn1/attn2 q,k,v,o, FFN in/out), the LoRA size
    from dim and FFN width, and the block list FSDP shards."""
    from reelora.models.lora import lora_state_dict
    from reelora.models.registry import family_spec

    cfg = load_config(path)
    arch, r = PUBLISHED[cfg.model], cfg.lora.rank
    transformer = meta_transformer(cfg)
    base = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
    lo, hi = BASE_PARAMS[cfg.model]
    assert lo < base < hi
    layers, dim = arch["num_layers"], arch["num_attention_heads"] * arch["attention_head_dim"]
    assert len(getattr(transformer, family_spec("wan").blocks)) == layers  # what train/parallel.py shards, one fully_shard each
    sd = lora_state_dict(transformer)
    assert sum(1 for k in sd if "lora_A" in k) == layers * 10
    assert sum(t.numel() for t in sd.values()) == layers * (8 * r * (dim + dim) + 2 * r * (dim + arch["ffn_dim"]))


def test_wan_14b_config_numbers_its_header_states():
    """configs/wan2.1-t2v-14b-lora.yaml: FSDP in bf16 with checkpointing; 14.29e9 base params (28.6 GB in bf16),
    153.4M LoRA params at rank 32, 351.4M params per block (the ~0.7 GB a GPU gathers at a time)."""
    cfg = load_config(ROOT / "configs" / "wan2.1-t2v-14b-lora.yaml")
    assert cfg.train.parallel == "fsdp" and cfg.train.gradient_checkpointing and cfg.train.mixed_precision == "bf16"
    assert cfg.lora.rank == 32
    transformer = meta_transformer(cfg)
    base = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
    assert base == 14_288_491_584
    assert sum(p.numel() for n, p in transformer.named_parameters() if "lora_" in n) == 153_354_240
    assert sum(p.numel() for n, p in transformer.blocks[0].named_parameters() if "lora_" not in n) == 351_394_304
    header = (ROOT / "configs" / "wan2.1-t2v-14b-lora.yaml").read_text()
    assert "28.6 GB (14.29e9 params)" in header and "153.4M params x 16" in header
    assert "train.parallel=ddp train.base_storage=fp8" in header  # the one-card route (validated by tests/reelora)


def test_wan_14b_fsdp_wrap_units(tmp_path):
    """train/parallel.py's `parallelize` on the 14B (meta device, a one-process gloo group): one FSDP unit per
    block plus the root, every parameter sharded, and a block unit is one block's base + its LoRA."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    from reelora.models.registry import family_spec
    from reelora.train import parallel

    cfg = load_config(ROOT / "configs" / "wan2.1-t2v-14b-lora.yaml")
    transformer = meta_transformer(cfg)
    assert not dist.is_initialized()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        parallel.parallelize(transformer, family_spec("wan"), cfg, parallel.data_parallel_mesh(SimpleNamespace(device=torch.device("cpu"), num_processes=1)))
        units = [name for name, m in transformer.named_modules() if isinstance(m, FSDPModule)]
        assert units == ["", *(f"blocks.{i}" for i in range(40))]
        assert all(isinstance(p, DTensor) for p in transformer.parameters())
        assert sum(p.numel() for p in transformer.blocks[7].parameters()) == 351_394_304 + 153_354_240 // 40
        assert transformer.gradient_checkpointing  # train.gradient_checkpointing, applied before sharding
    finally:
        del transformer
        parallel.end_process_group()  # joins gloo's threads (see train/parallel.py)
