"""Reading LoRA adapter files safely, whatever trainer wrote them, and attaching them to a pipeline.

Adapters come from our own training (diffusers format with lineage metadata) and from elsewhere:
ComfyUI (`diffusion_model.` keys with `.alpha`) and musubi-tuner / sd-scripts (`lora_unet_` keys).
Files from elsewhere are untrusted, so:

- only safetensors are read. Pickle-based checkpoints (`.bin`, `.pt`, `.ckpt`, `torch.save` zips) are
  refused by extension *and* by content, and nothing here ever calls `torch.load` or `pickle`;
- every tensor is checked for NaN/inf, every key must name a Linear layer of the loaded backbone, and
  every shape must fit that layer, all before the adapter touches the model;
- the effective LoRA scale (lora_alpha / r from the metadata, or a foreign file's `.alpha` / rank, and
  the scale it is mixed at) must be finite and at most MAX_LORA_SCALE in size: past that a LoRA delta
  swamps any backbone, and the clip comes out NaN (caught anyway, at the denoising step).

Key conversion from foreign formats is diffusers' own (the pipeline class's `lora_state_dict`);
multi-adapter mixing and fusing is peft's, through the diffusers pipeline API.
"""
from __future__ import annotations

import json
import math
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reelora.files import sha256_file
from reelora.models.lora import DIFFUSERS_FILE

# Extensions of checkpoint formats that are (or wrap) pickles: refused without being opened.
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz"}
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
# The LoraConfig fields worth recording in provenance (the full peft dict is ~40 mostly-null fields).
LORA_CONFIG_FIELDS = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
MAX_LORA_SCALE = 1e4  # |alpha / rank| and |scale|; trained LoRAs use ~0.5-4, mixing scales ~0-2
# lora_magnitude_vector: a DoRA adapter's per-output-feature magnitude (peft's name; diffusers loads it as DoRA).
_KEY_RE = re.compile(r"^transformer\.(?P<module>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_magnitude_vector)$")


SHARES_KEY = "reelora.shares"
"""Lineage header entry: clips, seconds and share per title and rights holder (models/lineage.py `shares_of`)."""


class AdapterError(ValueError):
    """An adapter file that cannot be used; the message names the file and the problem."""


@dataclass
class Adapter:
    """One LoRA adapter file, read, converted to diffusers keys and (after `validate`) checked."""

    path: Path
    scale: float
    sha256: str
    format: str
    """'diffusers', 'peft' (diffusers keys without the `transformer.` prefix), 'comfyui' or 'musubi'."""
    state_dict: dict[str, torch.Tensor]
    """Diffusers keys: `transformer.<module>.lora_A.weight` / `lora_B.weight` (alpha already folded in)."""
    lora_metadata: dict | None
    """diffusers' `lora_adapter_metadata` (prefixed LoraConfig) to restore alpha/rank; None when folded in."""
    lineage: dict = field(default_factory=dict)
    """Every other safetensors header entry (base model, config, shard index hash, titles...), JSON decoded."""
    name: str = ""
    component: str = "transformer"
    """The pipeline denoiser it loads into: `transformer_2` for a two-expert backbone's low-noise expert."""

    def provenance(self) -> dict:
        """What a sidecar records about this adapter; `shares`: its training footage per title and rights holder."""
        return {
            "path": str(self.path), "scale": self.scale, "sha256": self.sha256, "format": self.format,
            **({"component": self.component} if self.component != "transformer" else {}),
            "lora_config": lora_config_summary(self.lora_metadata, self.state_dict),
            "lineage": {k: v for k, v in self.lineage.items() if k != SHARES_KEY},  # shares once, below
            "shares": self.lineage.get(SHARES_KEY),
        }


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`PATH[:SCALE]` -> (path, scale); a trailing `:x` that is not a number stays part of the path."""
    path, sep, tail = text.rpartition(":")
    if sep and path:
        try:
            return path, float(tail)
        except ValueError:
            pass
    return text, 1.0


def resolve_adapter_path(path: str | Path) -> Path:
    """A file, or a training output / adapter directory holding `pytorch_lora_weights.safetensors`."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in (p / DIFFUSERS_FILE, p / "adapter" / DIFFUSERS_FILE):
            if candidate.is_file():
                return candidate
        found = sorted(p.glob("*.safetensors"))
        if len(found) == 1:
            return found[0]
        listing = ", ".join(f.name for f in found) or "no .safetensors files"
        raise AdapterError(f"adapter {p}: a directory without {DIFFUSERS_FILE} ({listing}); pass the file itself")
    if not p.is_file():
        raise AdapterError(f"adapter {p}: no such file")
    return p


def check_safetensors_file(path: Path) -> None:
    """Refuse anything that is not a safetensors file, without deserialising it.

    Reads only the 8-byte header length and the first byte of the JSON header.

    Raises:
        AdapterError: pickle-based extension, pickle/zip content, or a malformed safetensors header.
    """
    why_pickle = ("reelora loads only .safetensors adapters, because unpickling a checkpoint can run arbitrary code. "
                  "Convert it to safetensors in a trusted, isolated environment first.")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterError(f"adapter {path}: refusing a pickle-based checkpoint ({path.suffix}); {why_pickle}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    # A pickle starts with 0x80 (protocol 2+), but so does a safetensors file whose header length's low byte is
    # 0x80: only a file that is not a well-formed safetensors start is called a pickle.
    looks_safetensors = len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= min(_MAX_HEADER_BYTES, size - 8)
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and not looks_safetensors):
        raise AdapterError(f"adapter {path}: content is a pickle / torch.save archive, not safetensors; {why_pickle}")
    if len(head) < 9:
        raise AdapterError(f"adapter {path}: not a safetensors file (only {size} bytes)")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > min(_MAX_HEADER_BYTES, size - 8) or head[8:9] != b"{":
        raise AdapterError(f"adapter {path}: not a safetensors file (bad header); {why_pickle}")


def read_adapter(path: str | Path, scale: float = 1.0, family: str | None = None) -> Adapter:
    """Read a safetensors LoRA, detect its format and convert its keys to diffusers' with diffusers' converters.

    Args:
        path: the adapter file, or a directory holding `pytorch_lora_weights.safetensors`.
        scale: the weight this adapter gets when mixed (0 disables it exactly).
        family: backbone family whose diffusers pipeline converts foreign key layouts (a registered family
            name); needed only for ComfyUI / musubi files.

    Raises:
        AdapterError: not safetensors, NaN/inf values, unknown or mixed key layout, failed conversion.
    """
    from safetensors import SafetensorError, safe_open

    p = resolve_adapter_path(path)
    check_safetensors_file(p)
    try:
        with safe_open(str(p), framework="pt") as f:
            header = dict(f.metadata() or {})
            raw = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise AdapterError(f"adapter {p}: unreadable safetensors file ({exc})") from exc
    if not raw:
        raise AdapterError(f"adapter {p}: contains no tensors")
    for key, t in raw.items():
        if not t.is_floating_point():
            raise AdapterError(f"adapter {p}: tensor {key!r} has dtype {t.dtype}; LoRA weights must be floating point")
        if not torch.isfinite(t).all():
            bad = int((~torch.isfinite(t)).sum())
            raise AdapterError(f"adapter {p}: tensor {key!r} contains {bad} NaN/inf value(s); refusing to sample with it")

    fmt = detect_format(p, raw)
    state_dict, lora_metadata = _to_diffusers(p, fmt, raw, header, family)
    check_scales(p, float(scale), lora_metadata, raw)
    if lora_metadata and lora_metadata.get("transformer.use_dora") is not True \
            and any(k.endswith(".lora_magnitude_vector") for k in state_dict):
        # diffusers would build a plain LoRA from this metadata and drop the magnitudes with a warning
        raise AdapterError(f"adapter {p}: holds DoRA lora_magnitude_vector tensors but its {LORA_METADATA_KEY!r} "
                           f"says use_dora={lora_metadata.get('transformer.use_dora')!r}; refusing to load it without them")
    if float(scale) != 1.0 and any(k.endswith(".lora_magnitude_vector") for k in state_dict):
        # peft scales a DoRA adapter's low-rank direction only, never its magnitudes: scale 0 is not the base
        raise AdapterError(f"adapter {p}: a DoRA adapter (trained with lora.use_dora) mixes at scale 1 only, got "
                           f"{float(scale):g}: peft scales its low-rank part but not its magnitude vectors, so another "
                           f"scale (0 included) does not blend it with the base model")
    lineage = {k: _maybe_json(v) for k, v in header.items() if k not in ("format", LORA_METADATA_KEY)}
    return Adapter(path=p, scale=float(scale), sha256=sha256_file(p), format=fmt, state_dict=state_dict,
                   lora_metadata=lora_metadata, lineage=lineage)


def read_adapters(path: str | Path, scale: float = 1.0, family: str | None = None) -> list[Adapter]:
    """`read_adapter` for every denoiser: one Adapter per expert file of a two-expert backbone (Wan2.2-A14B),
    else `[read_adapter(path, scale, family)]`.

    For a two-expert family a folder gives each expert file reelora wrote (`spec.expert_file`); a single file goes
    to the expert its `reelora.expert` lineage names, else (a file from elsewhere) to `transformer_2` when its name
    says low noise (`low_noise`, `low-noise`, `lownoise`, as ComfyUI's Wan2.2 LoRAs are named) and to `transformer`
    otherwise. All get the same `scale`.

    Raises:
        AdapterError: as `read_adapter`; a folder with no expert file.
    """
    from reelora.models.registry import FAMILIES

    experts = getattr(FAMILIES.get(family), "experts", None) if family else None
    if not experts:
        return [read_adapter(path, scale, family)]
    spec = FAMILIES[family]
    p = Path(path).expanduser()
    if p.is_dir():
        found = [(p / spec.expert_file(DIFFUSERS_FILE, c), c) for c in experts]
        found = [(f, c) for f, c in found if f.is_file()]
        if not found:
            names = ", ".join(spec.expert_file(DIFFUSERS_FILE, c) for c in experts)
            raise AdapterError(f"adapter {p}: a folder without any expert file of a {family} adapter ({names})")
        out = [read_adapter(f, scale, family) for f, _ in found]
        for a, (_, c) in zip(out, found):
            a.component = c
        return out
    a = read_adapter(p, scale, family)
    recorded = a.lineage.get("reelora.expert")
    if recorded in experts:
        a.component = recorded
    elif re.search(r"low[_-]?noise", p.name, re.I):
        a.component = experts[-1]
    return [a]


def check_scales(path: Path, scale: float, metadata: dict | None, raw: dict[str, torch.Tensor]) -> None:
    """Refuse a non-finite or absurd mixing scale, lora_alpha / r metadata, or `.alpha` tensor (see MAX_LORA_SCALE).

    Raises:
        AdapterError: naming the file and the key (or the scale) that is out of range.
    """
    def bad(value: float) -> bool:
        return not math.isfinite(value) or abs(value) > MAX_LORA_SCALE

    if bad(scale):
        raise AdapterError(f"adapter {path}: scale {scale:g} is out of range (finite, at most {MAX_LORA_SCALE:g} in size)")
    if metadata:
        r, alpha = metadata.get("transformer.r"), metadata.get("transformer.lora_alpha")
        where = f"header entry {LORA_METADATA_KEY!r}"
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not r > 0:
            if r is not None or alpha is not None:
                raise AdapterError(f"adapter {path}: {where} key 'transformer.r' is {r!r}, not a positive rank")
        elif alpha is not None:
            if not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
                raise AdapterError(f"adapter {path}: {where} key 'transformer.lora_alpha' is {alpha!r}, not a number")
            eff = alpha / (math.sqrt(r) if metadata.get("transformer.use_rslora") else r)
            if bad(eff):
                raise AdapterError(f"adapter {path}: {where} key 'transformer.lora_alpha' = {alpha:g} with r = {r:g} "
                                   f"scales the LoRA by {eff:g}; refusing more than {MAX_LORA_SCALE:g}")
        for module, v in (metadata.get("transformer.alpha_pattern") or {}).items():
            if not isinstance(v, (int, float)) or bad(float(v) / (r if isinstance(r, (int, float)) and r > 0 else 1)):
                raise AdapterError(f"adapter {path}: {where} key 'transformer.alpha_pattern' gives {module!r} "
                                   f"lora_alpha {v!r}; refusing a LoRA scale beyond {MAX_LORA_SCALE:g}")
    # ComfyUI / musubi: one `.alpha` scalar per module, folded into the weights as alpha / rank
    ranks = {k.split(".lora_")[0]: int(v.shape[0]) for k, v in raw.items()
             if (".lora_down." in k or ".lora_A." in k) and v.ndim == 2}
    for key, t in raw.items():
        if not key.endswith(".alpha") or t.numel() != 1:
            continue
        rank = ranks.get(key[: -len(".alpha")], 1)
        if bad(float(t) / rank):
            raise AdapterError(f"adapter {path}: tensor {key!r} = {float(t):g} with rank {rank} scales the LoRA by "
                               f"{float(t) / rank:g}; refusing more than {MAX_LORA_SCALE:g}")


def detect_format(path: Path, state_dict: dict[str, torch.Tensor]) -> str:
    """'diffusers', 'peft', 'comfyui' or 'musubi', from the key prefixes (all keys must agree)."""
    prefixes = {
        "comfyui": lambda k: k.startswith("diffusion_model."),
        "musubi": lambda k: k.startswith("lora_unet_"),
        "diffusers": lambda k: k.startswith("transformer."),
    }
    seen = {name for k in state_dict for name, test in prefixes.items() if test(k)}
    if len(seen) > 1:
        raise AdapterError(f"adapter {path}: mixes key layouts ({', '.join(sorted(seen))}); cannot tell how to map it")
    if seen:
        fmt = seen.pop()
        stray = [k for k in state_dict if not prefixes[fmt](k)]
        if stray:
            raise AdapterError(f"adapter {path}: {fmt} layout but key {stray[0]!r} has another prefix "
                               f"(text-encoder LoRAs are not supported)")
        return fmt
    if all(".lora_A." in k or ".lora_B." in k for k in state_dict):
        return "peft"
    example = next(iter(state_dict))
    raise AdapterError(f"adapter {path}: unrecognised key layout (e.g. {example!r}); expected diffusers "
                       "'transformer.*.lora_A.weight', ComfyUI 'diffusion_model.*' or musubi 'lora_unet_*' keys")


def _to_diffusers(path, fmt, raw, header, family) -> tuple[dict[str, torch.Tensor], dict | None]:
    metadata = None
    if header.get(LORA_METADATA_KEY):
        try:
            metadata = json.loads(header[LORA_METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise AdapterError(f"adapter {path}: header entry {LORA_METADATA_KEY!r} is not valid JSON ({exc})") from exc
    if fmt == "peft":
        return {f"transformer.{k}": v for k, v in raw.items()}, _prefixed(metadata)
    if fmt == "diffusers":
        return dict(raw), _prefixed(metadata)
    # Foreign layouts: diffusers' converters fold each `.alpha` into the weights, so the rank/alpha
    # metadata (if any) must not be applied a second time.
    if family is None:
        raise AdapterError(f"adapter {path}: a {fmt} file needs the backbone family to convert its keys")
    try:
        from reelora.models.registry import family_spec

        pipeline_cls = family_spec(family).pipeline_class()
    except ValueError as exc:
        raise AdapterError(f"adapter {path}: no LoRA key converter: {exc}") from exc
    try:
        converted = pipeline_cls.lora_state_dict(dict(raw))
    except Exception as exc:  # the converters raise bare KeyError/ValueError on missing pieces
        raise AdapterError(f"adapter {path}: could not convert {fmt} keys for a {family} backbone "
                           f"({type(exc).__name__}: {exc})") from exc
    if isinstance(converted, tuple):
        converted = converted[0]
    return dict(converted), None


def _prefixed(metadata: dict | None) -> dict | None:
    """diffusers writes LoraConfig fields as `transformer.<field>`; accept a bare LoraConfig too."""
    if metadata and not any(k.startswith("transformer.") for k in metadata):
        return {f"transformer.{k}": v for k, v in metadata.items()}
    return metadata


def validate(adapter: Adapter, transformer: torch.nn.Module, model_name: str = "the backbone") -> None:
    """Check every key names a Linear layer of `transformer` and every shape fits it.

    Raises:
        AdapterError: naming the adapter file, the key and what it expected.
    """
    p, cls = adapter.path, type(transformer).__name__
    modules = dict(transformer.named_modules())
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in adapter.state_dict.items():
        m = _KEY_RE.match(key)
        if not m:
            raise AdapterError(f"adapter {p}: key {key!r} is not a transformer LoRA weight "
                               "(expected 'transformer.<module>.lora_A.weight' / 'lora_B.weight' / 'lora_magnitude_vector')")
        parts.setdefault(m["module"], {})[m["part"]] = t
    for name, pieces in parts.items():
        layer = modules.get(name)
        if layer is None:
            raise AdapterError(f"adapter {p} does not match {model_name}: it targets module {name!r}, which "
                               f"{cls} does not have (was it trained for another model family or size?)")
        base = getattr(layer, "base_layer", layer)  # already wrapped by an earlier adapter
        if not isinstance(base, torch.nn.Linear):
            raise AdapterError(f"adapter {p}: module {name!r} is a {type(base).__name__}, not a Linear layer")
        a, b = pieces.get("lora_A.weight"), pieces.get("lora_B.weight")
        if a is None or b is None:
            missing = "lora_A" if a is None else "lora_B"
            raise AdapterError(f"adapter {p}: module {name!r} has no {missing} weight")
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != base.in_features or b.shape[0] != base.out_features \
                or a.shape[0] != b.shape[1]:
            raise AdapterError(
                f"adapter {p} does not match {model_name}: module {name!r} is Linear({base.in_features} -> "
                f"{base.out_features}) but lora_A is {tuple(a.shape)} and lora_B is {tuple(b.shape)} "
                f"(expected (rank, {base.in_features}) and ({base.out_features}, rank))")
        magnitude = pieces.get("lora_magnitude_vector")
        if magnitude is not None and tuple(magnitude.shape) != (base.out_features,):
            raise AdapterError(f"adapter {p}: module {name!r} lora_magnitude_vector (DoRA) is {tuple(magnitude.shape)}, "
                               f"expected ({base.out_features},)")
        bias = pieces.get("lora_B.bias")
        if bias is not None and tuple(bias.shape) != (base.out_features,):
            raise AdapterError(f"adapter {p}: module {name!r} lora_B.bias is {tuple(bias.shape)}, "
                               f"expected ({base.out_features},)")


def attach(pipe: Any, adapters: list[Adapter], model_name: str = "the backbone") -> list[str]:
    """Validate, load and mix `adapters` into `pipe.transformer` with their scales; returns adapter names.

    Each adapter becomes a named peft adapter; `set_adapters` applies the scales (0 adds exactly
    nothing, so scale 0 reproduces the base model bit for bit).
    """
    for a in adapters:  # all checks before any adapter is loaded: no half-modified backbone on error
        denoiser = getattr(pipe, a.component, None)
        if denoiser is None:
            raise AdapterError(f"adapter {a.path} belongs to `{a.component}`, which {model_name} does not have")
        validate(a, denoiser, model_name)
    names = []
    for i, a in enumerate(adapters):
        a.name = a.name or f"lora{i}"
        with warnings.catch_warnings():
            # peft warns that a second adapter makes a multi-adapter model: that is the point here.
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            pipe.load_lora_into_transformer(dict(a.state_dict), transformer=getattr(pipe, a.component),
                                            adapter_name=a.name, metadata=a.lora_metadata, _pipeline=pipe)
        names.append(a.name)
    components = {a.component for a in adapters}
    if components == {"transformer"}:
        pipe.set_adapters(names, [a.scale for a in adapters])
    else:  # two experts: each denoiser mixes its own adapters (the pipeline's set_adapters wants each name in each)
        for c in sorted(components):
            mine = [a for a in adapters if a.component == c]
            getattr(pipe, c).set_adapters([a.name for a in mine], [a.scale for a in mine])
    return names


def fuse(pipe: Any, names: list[str]) -> None:
    """Merge the active adapters (at their set scales) into the base weights and drop the LoRA layers."""
    if not names:
        return
    # Each denoiser holding adapters (two for Wan2.2-A14B) fuses its own.
    for c in ("transformer", "transformer_2"):
        denoiser = getattr(pipe, c, None)
        mine = [n for n in names if denoiser is not None and n in (getattr(denoiser, "peft_config", None) or {})]
        if mine:
            pipe.fuse_lora(components=[c], lora_scale=1.0, adapter_names=mine)
    # After fusing, the peft wrappers only cost time; unloading keeps the fused weights.
    pipe.unload_lora_weights()


def lora_config_summary(metadata: dict | None, state_dict: dict[str, torch.Tensor]) -> dict:
    """Rank / alpha / targets, from the diffusers metadata when present, else inferred from the tensors."""
    out: dict = {}
    if metadata:
        for k in LORA_CONFIG_FIELDS:
            v = metadata.get(f"transformer.{k}")
            if v not in (None, {}, []):
                out[k] = v
    if "r" not in out:
        ranks = sorted({int(t.shape[0]) for k, t in state_dict.items() if k.endswith("lora_A.weight")})
        out["r"] = ranks[0] if len(ranks) == 1 else ranks
        out["alpha_folded_into_weights"] = True
    out["modules"] = sum(1 for k in state_dict if k.endswith("lora_A.weight"))
    return out


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except (json.JSONDecodeError, TypeError):
        return value
