"""LoRA on diffusers transformers with peft: attach, state dicts, and export in diffusers and ComfyUI formats.

API (used by train/ and by the sampler):
    attach_lora(transformer, rank=, alpha=, target_modules=, dropout=, init=, seed=) -> peft LoraConfig
    lora_state_dict(transformer) -> {"blocks.0.attn1.to_q.lora_A.weight": tensor, ...}  (peft names)
    load_lora_state_dict(transformer, sd)           # exact copy into an attached adapter (resume)
    adapter_metadata(rank, alpha, target_modules)   # what diffusers needs to rebuild the LoraConfig
    save_adapter(out_dir, sd, rank=, alpha=, target_modules=, family=, lineage=) -> {"diffusers": path, ...}
    to_comfyui(sd, alpha) / wan_original_name(name)  # diffusers Wan names -> original Wan names

Files written by `save_adapter` (in out_dir):
    pytorch_lora_weights.safetensors  keys `transformer.<module>.lora_A.weight` / `.lora_B.weight`; metadata
        `lora_adapter_metadata` (JSON: transformer.r, transformer.lora_alpha, transformer.target_modules, ...,
        read by `WanPipeline.load_lora_weights`) and `reelora.*` lineage keys (JSON strings).
    comfyui_lora.safetensors          (Wan only) keys `diffusion_model.<original Wan module>.lora_A.weight`,
        `.lora_B.weight` and `.alpha` (a scalar tensor).
    README.md                         model card.
Only safetensors are written or read: never pickle.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
COMFYUI_FILE = "comfyui_lora.safetensors"
LINEAGE_PREFIX = "reelora."
INITS = {"default": True, "gaussian": "gaussian", "orthogonal": "orthogonal"}


def attach_lora(transformer: torch.nn.Module, *, rank: int, alpha: float, target_modules, dropout: float = 0.0,
                init: str = "default", seed: int | None = 0, adapter_name: str = "default"):
    """Freeze `transformer` and add a trainable LoRA adapter to it in place (diffusers `add_adapter`).

    Args:
        target_modules: list of module-name suffixes (["to_q", "ffn.net.2"]) or one regex string matched
            against full module names (peft semantics).
        init: "default" (Kaiming A, zero B: the adapter starts as a no-op), "gaussian" or "orthogonal".
        seed: seeds the LoRA init without touching the caller's RNG (None: use the global RNG).
    Returns:
        The peft LoraConfig used.
    Raises:
        ValueError: nothing matched `target_modules` or an unknown init (message names both).
    """
    from peft import LoraConfig

    if init not in INITS:
        raise ValueError(f"lora init {init!r} not supported; choose one of {', '.join(INITS)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        init_lora_weights=INITS[init])
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        try:
            transformer.add_adapter(config, adapter_name=adapter_name)
        except ValueError as exc:
            names = sorted({n.rsplit(".", 1)[-1] for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)})
            raise ValueError(f"lora.target_modules={target_modules!r} matched no module of "
                             f"{type(transformer).__name__} ({exc}); Linear layer names include: {', '.join(names)}") from exc
    # LoRA weights train in fp32 even when the frozen base is bf16/fp16.
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    return config


def lora_state_dict(transformer: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's weights with peft's names, adapter name removed (`blocks.0.attn1.to_q.lora_A.weight`)."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(transformer).items()}


def load_lora_state_dict(transformer: torch.nn.Module, sd: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy `sd` (names as from `lora_state_dict`) into the attached adapter exactly; every key must match."""
    params = {}
    suffix = f".{adapter_name}.weight"
    for name, p in transformer.named_parameters():
        if "lora_" in name and name.endswith(suffix):
            params[name[: -len(suffix)] + ".weight"] = p
    if set(params) != set(sd):
        extra, missing = sorted(set(sd) - set(params))[:3], sorted(set(params) - set(sd))[:3]
        raise ValueError(f"LoRA weights do not fit this adapter: unexpected {extra}, missing {missing}")
    with torch.no_grad():
        for k, p in params.items():
            if p.shape != sd[k].shape:
                raise ValueError(f"LoRA weight {k}: shape {tuple(sd[k].shape)} != adapter's {tuple(p.shape)}")
            p.copy_(sd[k])


def adapter_metadata(rank: int, alpha: float, target_modules) -> dict:
    """The LoraConfig fields diffusers' `load_lora_weights` rebuilds the adapter from (so alpha/rank scaling holds)."""
    return {"r": rank, "lora_alpha": alpha, "target_modules": target_modules, "lora_dropout": 0.0,
            "bias": "none", "use_dora": False, "init_lora_weights": True}


# ---------------------------------------------------------------------------------------------------------
# ComfyUI / original Wan names

# diffusers WanTransformer3DModel module -> original Wan2.1 module (wan/modules/model.py), as in diffusers'
# scripts/convert_wan_to_diffusers.py, read in reverse.
_WAN_BLOCK_RENAMES = [
    ("attn1.to_q", "self_attn.q"), ("attn1.to_k", "self_attn.k"), ("attn1.to_v", "self_attn.v"),
    ("attn1.to_out.0", "self_attn.o"), ("attn2.to_q", "cross_attn.q"), ("attn2.to_k", "cross_attn.k"),
    ("attn2.to_v", "cross_attn.v"), ("attn2.to_out.0", "cross_attn.o"), ("attn2.add_k_proj", "cross_attn.k_img"),
    ("attn2.add_v_proj", "cross_attn.v_img"), ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"),
]
_WAN_TOP_RENAMES = {
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
    "patch_embedding": "patch_embedding",
}


def wan_original_name(module: str) -> str:
    """diffusers Wan module name -> original Wan2.1 name ('blocks.3.attn1.to_q' -> 'blocks.3.self_attn.q').

    Raises:
        KeyError: a module with no original counterpart (the adapter cannot be written for ComfyUI).
    """
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if m:
        for ours, theirs in _WAN_BLOCK_RENAMES:
            if m.group(2) == ours:
                return f"blocks.{m.group(1)}.{theirs}"
    elif module in _WAN_TOP_RENAMES:
        return _WAN_TOP_RENAMES[module]
    raise KeyError(f"no original Wan name for diffusers module {module!r}")


def to_comfyui(sd: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """peft-named Wan LoRA weights -> ComfyUI keys with a per-module `.alpha`."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, _, rest = key.partition(".lora_")
        name = f"diffusion_model.{wan_original_name(module)}"
        out[f"{name}.lora_{rest}"] = value
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


# ---------------------------------------------------------------------------------------------------------
# Export


def save_adapter(out_dir: str | Path, sd: dict[str, torch.Tensor], *, rank: int, alpha: float, target_modules,
                 family: str, lineage: dict | None = None) -> dict[str, Path]:
    """Write the diffusers file, the ComfyUI file (Wan) and a model card into `out_dir`; returns their paths.

    `lineage` values are JSON-encoded into safetensors metadata under `reelora.<key>`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    lineage = lineage or {}
    meta = {"format": "pt"}
    packed = {f"transformer.{k}": v for k, v in adapter_metadata(rank, alpha, target_modules).items()}
    meta["lora_adapter_metadata"] = json.dumps(packed, indent=2, sort_keys=True)
    meta.update({LINEAGE_PREFIX + k: json.dumps(v, sort_keys=True) for k, v in lineage.items()})
    paths = {"diffusers": out / DIFFUSERS_FILE}
    _atomic_save({f"transformer.{k}": v for k, v in sd.items()}, paths["diffusers"], meta)
    if family == "wan":
        paths["comfyui"] = out / COMFYUI_FILE
        comfy_meta = {"format": "pt", **{k: v for k, v in meta.items() if k.startswith(LINEAGE_PREFIX)}}
        _atomic_save(to_comfyui(sd, alpha), paths["comfyui"], comfy_meta)
    paths["card"] = out / "README.md"
    paths["card"].write_text(model_card(rank=rank, alpha=alpha, target_modules=target_modules, family=family, lineage=lineage))
    return paths


def read_lineage(path: str | Path) -> dict:
    """The `reelora.*` lineage metadata of an adapter file, JSON-decoded (no tensors are loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k[len(LINEAGE_PREFIX):]: json.loads(v) for k, v in meta.items() if k.startswith(LINEAGE_PREFIX)}


def _atomic_save(tensors: dict, path: Path, metadata: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, tmp, metadata=metadata)
    os.replace(tmp, path)


def model_card(*, rank: int, alpha: float, target_modules, family: str, lineage: dict) -> str:
    base = lineage.get("base_model", "?")
    titles = lineage.get("titles") or []
    lines = [
        "---",
        f"base_model: {base}",
        "library_name: diffusers",
        "tags: [lora, video, text-to-video, reelora]",
        "---",
        "",
        f"# LoRA adapter for {base}",
        "",
        f"Trained with reelora ({family} family) for {lineage.get('step', '?')} steps.",
        "",
        "| | |", "|---|---|",
        f"| base model | `{base}` (revision `{lineage.get('base_revision')}`) |",
        f"| rank / alpha | {rank} / {alpha} (scale {alpha / rank:g}) |",
        f"| target modules | `{target_modules}` |",
        f"| clips | {lineage.get('num_clips', '?')} from shards `{lineage.get('shards')}` "
        f"(index sha256 `{lineage.get('shards_index_sha256')}`) |",
        f"| titles | {', '.join(map(str, titles)) or '-'} |",
        "",
        "## Use",
        "",
        "```python",
        "pipe.load_lora_weights(\"path/to/adapter\", weight_name=\"pytorch_lora_weights.safetensors\")",
        "```",
        "",
        "`comfyui_lora.safetensors` holds the same weights under the original Wan module names for ComfyUI.",
        "The full training config and lineage are in the safetensors metadata (`reelora.*` keys).",
        "",
    ]
    return "\n".join(lines)
