"""LoRA on diffusers transformers with peft: attach, state dicts, and export (diffusers + the family's own formats).

API (used by train/ and by the sampler):
    attach_lora(transformer, rank=, alpha=, target_modules=, dropout=, init=, seed=, use_rslora=, use_dora=)
        -> peft LoraConfig
    lora_state_dict(transformer) -> {"blocks.0.attn1.to_q.lora_A.weight": tensor, ...}  (peft names; DoRA adds
        "blocks.0.attn1.to_q.lora_magnitude_vector")
    load_lora_state_dict(transformer, sd)           # exact copy into an attached adapter (resume)
    adapter_metadata(rank, alpha, target_modules, use_rslora=, use_dora=)  # what diffusers rebuilds the LoraConfig from
    lora_scale(rank, alpha, use_rslora) -> float    # the factor peft multiplies B @ A by
    save_adapter(out_dir, sd, rank=, alpha=, target_modules=, family=, lineage=, use_rslora=, use_dora=)
        -> {"diffusers": path, ...}

Files written by `save_adapter` (in out_dir):
    pytorch_lora_weights.safetensors  keys `transformer.<module>.lora_A.weight` / `.lora_B.weight` (DoRA: also
        `transformer.<module>.lora_magnitude_vector`); metadata `lora_adapter_metadata` (JSON: transformer.r,
        transformer.lora_alpha, transformer.use_rslora, transformer.use_dora, transformer.target_modules, ...,
        which `WanPipeline.load_lora_weights` passes to peft's LoraConfig as they are, so rsLoRA's alpha/sqrt(r)
        and DoRA's magnitudes load as trained) and `reelora.*` lineage keys (JSON strings).
    files of the family's `exports` (Wan: comfyui_lora.safetensors, original Wan module names; see models/wan.py),
        with the same lineage keys; their per-module `.alpha` is the one that gives the trained scale as
        alpha / rank (rsLoRA: alpha * sqrt(r)). Not written for DoRA adapters (see `save_adapter`).
    README.md                         model card (models/card.py): base, licence, trigger word, usage.
Only safetensors are written or read: never pickle.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from reelora.files import save_safetensors_atomic, write_text_atomic
from reelora.models.card import model_card
from reelora.models.registry import family_spec

DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"
"""The adapter file name diffusers' `load_lora_weights` looks for (the one name every reader uses)."""
LINEAGE_PREFIX = "reelora."
INITS = {"default": True, "gaussian": "gaussian", "orthogonal": "orthogonal"}


def attach_lora(transformer: torch.nn.Module, *, rank: int, alpha: float, target_modules, dropout: float = 0.0,
                init: str = "default", seed: int | None = 0, adapter_name: str = "default",
                use_rslora: bool = False, use_dora: bool = False):
    """Freeze `transformer` and add a trainable LoRA adapter to it in place (diffusers `add_adapter`).

    Args:
        target_modules: list of module-name suffixes (["to_q", "ffn.net.2"]) or one regex string matched
            against full module names (peft semantics).
        init: "default" (Kaiming A, zero B: the adapter starts as a no-op), "gaussian" or "orthogonal".
        seed: seeds the LoRA init without touching the caller's RNG (None: use the global RNG).
        use_rslora: scale the update by alpha / sqrt(rank) instead of alpha / rank (peft `use_rslora`).
        use_dora: weight-decomposed LoRA (peft `use_dora`): adds a trainable magnitude per output feature of
            each adapted layer, initialised to the base weight's row norms (the adapter still starts as a no-op).
    Returns:
        The peft LoraConfig used.
    Raises:
        ValueError: nothing matched `target_modules` or an unknown init (message names both).
    """
    from peft import LoraConfig

    if init not in INITS:
        raise ValueError(f"lora init {init!r} not supported; choose one of {', '.join(INITS)}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                        init_lora_weights=INITS[init], use_rslora=use_rslora, use_dora=use_dora)
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

    adapted = getattr(transformer, "adapted", None)
    if adapted is not None:  # two experts (models/wan22.Experts): each expert's keys under its component name
        return {f"{e}.{k}": v for e in adapted for k, v in lora_state_dict(getattr(transformer, e)).items()}
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(transformer).items()}


def load_lora_state_dict(transformer: torch.nn.Module, sd: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy `sd` (names as from `lora_state_dict`) into the attached adapter exactly; every key must match."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = {}
    suffix = f".{adapter_name}.weight"
    for name, p in transformer.named_parameters():
        if "lora_" in name and name.endswith(suffix):
            # peft names a DoRA magnitude `<module>.lora_magnitude_vector` (no `.weight`) in its state dicts
            key = name[: -len(suffix)]
            params[key if key.endswith(".lora_magnitude_vector") else key + ".weight"] = p
    if set(params) != set(sd):
        extra, missing = sorted(set(sd) - set(params))[:3], sorted(set(params) - set(sd))[:3]
        raise ValueError(f"LoRA weights do not fit this adapter: unexpected {extra}, missing {missing}")
    with torch.no_grad():
        for k, p in params.items():
            if p.shape != sd[k].shape:
                raise ValueError(f"LoRA weight {k}: shape {tuple(sd[k].shape)} != adapter's {tuple(p.shape)}")
            value = sd[k]
            if isinstance(p, DTensor):  # sharded by FSDP: every rank holds the full tensor and keeps its own shard
                value = distribute_tensor(value.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
            p.copy_(value)


def adapter_metadata(rank: int, alpha: float, target_modules, use_rslora: bool = False, use_dora: bool = False) -> dict:
    """The LoraConfig fields diffusers' `load_lora_weights` rebuilds the adapter from (so the scaling holds).

    diffusers (>= 0.35) hands these to `peft.LoraConfig(**metadata)` unchanged, so `use_rslora` gives the
    alpha / sqrt(r) scale and `use_dora` the DoRA layers its magnitude vectors load into, as diffusers' own
    `save_lora_adapter` records them.
    """
    meta = {"r": rank, "lora_alpha": alpha, "target_modules": target_modules, "lora_dropout": 0.0,
            "bias": "none", "use_dora": use_dora, "init_lora_weights": True}
    if use_rslora:  # only when set: plain adapters keep the metadata they always had
        meta["use_rslora"] = True
    return meta


def lora_scale(rank: int, alpha: float, use_rslora: bool = False) -> float:
    """The factor peft multiplies B @ A by: alpha / rank, or alpha / sqrt(rank) with rsLoRA."""
    return alpha / (math.sqrt(rank) if use_rslora else rank)


# ---------------------------------------------------------------------------------------------------------
# Export


def save_adapter(out_dir: str | Path, sd: dict[str, torch.Tensor], *, rank: int, alpha: float, target_modules,
                 family: str, lineage: dict | None = None, use_rslora: bool = False,
                 use_dora: bool = False) -> dict[str, Path]:
    """Write the diffusers file, the family's other formats (`spec.exports`) and a model card; returns their paths.

    `lineage` values are JSON-encoded into safetensors metadata under `reelora.<key>`.
    The family's other formats carry one `.alpha` per module that their loaders divide by the rank: they get
    alpha itself, or alpha * sqrt(r) for rsLoRA (alpha * sqrt(r) / r == alpha / sqrt(r)): the trained scale.
    DoRA adapters get the diffusers file only: ComfyUI's `dora_scale` is not peft's magnitude vector (ComfyUI
    divides by the norm of the base weight, or of its columns, depending on its version; peft by the row norm of
    base + update), so a converted file would load without error and compute something else.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to("cpu").contiguous() for k, v in sd.items()}
    lineage = lineage or {}
    spec = family_spec(family)
    experts = getattr(spec, "experts", None)
    if experts:  # two-expert backbone: `sd` keys start with the expert's component name (see lora_state_dict)
        return _save_experts(out, sd, spec, experts, rank=rank, alpha=alpha, target_modules=target_modules,
                             family=family, lineage=lineage, use_rslora=use_rslora, use_dora=use_dora)
    meta = {"format": "pt"}
    packed = {f"transformer.{k}": v for k, v in adapter_metadata(rank, alpha, target_modules, use_rslora, use_dora).items()}
    meta["lora_adapter_metadata"] = json.dumps(packed, indent=2, sort_keys=True)
    meta.update({LINEAGE_PREFIX + k: json.dumps(v, sort_keys=True) for k, v in lineage.items()})
    paths = {"diffusers": out / DIFFUSERS_FILE}
    save_safetensors_atomic({f"transformer.{k}": v for k, v in sd.items()}, paths["diffusers"], meta)
    exports = {}
    other_meta = {"format": "pt", **{k: v for k, v in meta.items() if k.startswith(LINEAGE_PREFIX)}}
    other_formats = {} if use_dora else spec.exports(sd, alpha * math.sqrt(rank) if use_rslora else alpha)
    for key, (name, tensors, note) in other_formats.items():
        paths[key] = out / name
        save_safetensors_atomic(tensors, paths[key], other_meta)
        exports[key] = (name, note)
    paths["card"] = out / "README.md"
    write_text_atomic(paths["card"], model_card(rank=rank, alpha=alpha, target_modules=target_modules, family=family,
                                                lineage=lineage, adapter_dir=out_dir, exports=exports,
                                                use_rslora=use_rslora, use_dora=use_dora))
    return paths


def read_lineage(path: str | Path) -> dict:
    """The `reelora.*` lineage metadata of an adapter file, JSON-decoded (no tensors are loaded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return {k[len(LINEAGE_PREFIX):]: json.loads(v) for k, v in meta.items() if k.startswith(LINEAGE_PREFIX)}


def _save_experts(out: Path, sd: dict[str, torch.Tensor], spec, experts, *, rank, alpha, target_modules, family,
                  lineage, use_rslora, use_dora) -> dict[str, Path]:
    """A two-expert adapter: per trained expert, a diffusers file (`transformer.*` keys, as diffusers'
    `load_lora_weights(..., load_into_transformer_2=True)` loads the second) and a ComfyUI file; one card.

    Each file's lineage records its expert (`reelora.expert`: the pipeline component it belongs to), so a
    reader puts it into the right denoiser. Returns {"diffusers_<component>": path, ..., "card": path}.
    """
    meta = {"format": "pt"}
    packed = {f"transformer.{k}": v for k, v in adapter_metadata(rank, alpha, target_modules, use_rslora, use_dora).items()}
    meta["lora_adapter_metadata"] = json.dumps(packed, indent=2, sort_keys=True)
    paths, exports = {}, {}
    for component in experts:
        part = {k[len(component) + 1:]: v for k, v in sd.items() if k.startswith(component + ".")}
        if not part:
            continue  # lora.experts trained the other one only
        lin = {**lineage, "expert": component}
        lin_meta = {LINEAGE_PREFIX + k: json.dumps(v, sort_keys=True) for k, v in lin.items()}
        name = spec.expert_file(DIFFUSERS_FILE, component)
        paths[f"diffusers_{component}"] = out / name
        save_safetensors_atomic({f"transformer.{k}": v for k, v in part.items()}, out / name, {**meta, **lin_meta})
        exports[f"diffusers_{component}"] = (name, f"diffusers weights of `{component}` (load with "
                                             f"`load_into_transformer_2=True` for transformer_2)"
                                             if component != experts[0] else f"diffusers weights of `{component}`")
        other = {} if use_dora else spec.exports(part, alpha * math.sqrt(rank) if use_rslora else alpha, component)
        for key, (fname, tensors, note) in other.items():
            paths[key] = out / fname
            save_safetensors_atomic(tensors, paths[key], {"format": "pt", **lin_meta})
            exports[key] = (fname, note)
    if not paths:
        raise ValueError(f"no LoRA weights for any expert of {family} ({', '.join(experts)}) in the state dict")
    if "diffusers_transformer" in paths:
        paths["diffusers"] = paths["diffusers_transformer"]
    paths["card"] = out / "README.md"
    write_text_atomic(paths["card"], model_card(rank=rank, alpha=alpha, target_modules=target_modules, family=family,
                                                lineage=lineage, adapter_dir=out, exports=exports,
                                                use_rslora=use_rslora, use_dora=use_dora))
    return paths
