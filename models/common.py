"""Helpers shared by the family specs (composition, not inheritance)."""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

import torch


def flow_match_noise(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified-flow noising as Wan and LTX were trained: x_t = (1 - s) x0 + s noise, target = noise - x0.

    `sigmas` is [B]; it is broadcast over the remaining latent dims.
    """
    s = sigmas.to(latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    noisy = (1.0 - s) * latents + s * noise
    return noisy, noise - latents


@contextmanager
def seeded(seed: int):
    """Build modules under a fixed CPU seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def is_local(source: str) -> bool:
    return Path(source).expanduser().is_dir()


def model_index(source: str, revision: str | None = None) -> dict:
    """Read model_index.json from a local diffusers directory or a hub id (offline mode respected)."""
    if is_local(source):
        path = Path(source).expanduser() / "model_index.json"
        if not path.is_file():
            raise FileNotFoundError(f"{source}: not a diffusers model directory (no model_index.json)")
        return json.loads(path.read_text())
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(source, "model_index.json", revision=revision)
    except Exception as exc:  # offline, unknown repo, no network: say which and why
        raise FileNotFoundError(
            f"model {source!r}: not a built-in tiny name, not a local directory, and its model_index.json "
            f"could not be read from the hub cache ({type(exc).__name__}: {exc}). Download it first "
            f"(`huggingface-cli download {source}`) or pass a local diffusers directory."
        ) from exc
    return json.loads(Path(path).read_text())


def load_kwargs(source: str, subfolder: str, revision: str | None) -> dict:
    kw: dict = {"subfolder": subfolder}
    if not is_local(source) and revision:
        kw["revision"] = revision
    return kw


def weights_hash(source: str) -> str | None:
    """A short content hash of a local model directory's weight files, for lineage; None for hub ids."""
    if not is_local(source):
        return None
    h = hashlib.sha256()
    for f in sorted(Path(source).expanduser().rglob("*.safetensors")):
        h.update(f.relative_to(Path(source).expanduser()).as_posix().encode())
        h.update(str(f.stat().st_size).encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 20))  # first MiB + size: cheap and changes with any retrain
    return h.hexdigest()[:16]


def count_params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------------------
# What both families' load() and tiny() share

# The tiny T5-style text encoder of every `tiny-*` backbone (UMT5 for Wan, T5 for LTX: same config keys).
TINY_TEXT = dict(
    vocab_size=384, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
    relative_attention_max_distance=32, dropout_rate=0.0, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    pad_token_id=0, eos_token_id=1,
)
_WEIGHTED = ("transformer", "vae", "text_encoder")


def load_pretrained(family: str, source: str, classes: dict, *, dtype: torch.dtype, device, components, revision,
                    max_text_len: int, fp32: tuple[str, ...] = ()):
    """Load `components` of a diffusers directory / hub id with `classes[name].from_pretrained`.

    Args:
        classes: component name -> diffusers/transformers class.
        fp32: components kept in float32 whatever `dtype` is (a numerically fragile VAE).
        max_text_len: the family's text length, capped by the tokenizer's own limit.
    """
    from reelora.models.spec import ALL_COMPONENTS, Components

    c = Components(family=family, source=source, revision=revision or weights_hash(source))
    for name in ALL_COMPONENTS:
        if name not in components:
            continue
        kw = load_kwargs(source, name, revision)
        if name in _WEIGHTED:
            kw["torch_dtype"] = torch.float32 if name in fp32 else dtype
        setattr(c, name, classes[name].from_pretrained(source, **kw))
    for m in c.modules().values():
        m.to(device).eval()
    limit = getattr(c.tokenizer, "model_max_length", max_text_len) or max_text_len
    c.extra["max_text_len"] = min(max_text_len, limit)
    return c


def build_tiny(family: str, seed: int, components, builders: dict, max_text_len: int):
    """A `tiny-<family>` Components: each module built by `builders[name]()` under its own derived seed.

    Each component gets its own seed so asking for a subset builds identical weights. The tokenizer is
    byte-level (ByT5): it needs no vocabulary file, so nothing is fetched from a hub.
    """
    from transformers import ByT5Tokenizer

    from reelora.models.spec import Components

    c = Components(family=family, source=f"tiny-{family}", revision=f"seed{seed}")
    for offset, name in enumerate(_WEIGHTED, start=1):
        if name in components:
            with seeded(seed * 1000 + offset):
                setattr(c, name, builders[name]().eval())
    if "tokenizer" in components:
        c.tokenizer = ByT5Tokenizer(model_max_length=max_text_len)
    if "scheduler" in components:
        c.scheduler = builders["scheduler"]()
    c.extra["max_text_len"] = max_text_len
    return c


# ---------------------------------------------------------------------------------------------------------
# Real-size architectures with random weights (benchmarks, shape checks): no download, cheap init


def materialize(module: torch.nn.Module, *, device, dtype: torch.dtype, seed: int = 0, std: float = 0.02,
                keep_fp32: tuple[str, ...] = ()) -> torch.nn.Module:
    """Give every meta parameter of `module` real random storage on `device`, in place; returns `module`.

    For modules built under `accelerate.init_empty_weights()` (parameters on meta, buffers real, such as
    rotary tables). Weights of 2+ dims draw from a uniform distribution of mean 0 and standard deviation
    `std` (twice as fast as normal_ in bf16 on CPU: 8 s instead of 18 s for Wan 1.3B on 2 cores), biases are
    zero and other 1-D weights (norm scales) one: deterministic for a seed, activations of sane size. A
    parameter whose dotted name contains a module name from `keep_fp32` stays float32, as diffusers'
    `from_pretrained(torch_dtype=...)` keeps a model's `_keep_in_fp32_modules`.
    """
    device = torch.device(device)
    g = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, mod in module.named_modules():
            for pname, p in list(mod._parameters.items()):
                if p is None or not p.is_meta:
                    continue
                full = f"{name}.{pname}" if name else pname
                dt = torch.float32 if any(k in full.split(".") for k in keep_fp32) else dtype
                t = torch.empty(p.shape, device=device, dtype=dt)
                if p.ndim >= 2:
                    t.uniform_(-std * 3**0.5, std * 3**0.5, generator=g)
                elif pname == "bias":
                    t.zero_()
                else:
                    t.fill_(1.0)
                mod._parameters[pname] = torch.nn.Parameter(t, requires_grad=p.requires_grad)
    return module.to(device)  # the buffers (built real, on the CPU)
