"""Wan2.1 at its published size through reelora's own training step, sampler and export: time, memory, MFU.

    # CPU smoke run (2 cores, a few minutes, ~6 GB): the real 1.3B architecture on a tiny clip
    python benchmarks/wan_realsize.py --device cpu --frames 5 --height 64 --width 64 --steps 2 --json out.json
    # GPU: every measurement in one process, one JSON (variants run in sequence)
    python benchmarks/wan_realsize.py --device cuda --frames 81 --height 480 --width 832 --rank 32 --dtype bf16 \\
        --both-checkpointing --json wan-1.3b.json [--variant NAME:key=value,key=value ...]

What runs, nothing downloaded (random weights of the published shapes):
  1. Inputs, once: the real `AutoencoderKLWan` config (random weights, float32 as reelora loads it) encodes a
     smooth procedural video to latents of the real shape with `WanSpec.encode_video`; random text embeddings
     [B, 512, 4096] (64 prompt tokens, zero padding, as `WanSpec.encode_prompt` pads) stand in for UMT5's.
  2. Per variant: a real `Config` from the YAML (`--config`, default the family's config for `--size`) with
     the flags, `--set` and the variant's overrides; the published transformer (`models.wan.published_transformer`:
     meta device, then weights drawn on the device in the training dtype); `train/loop.py`'s
     `build_model_and_optimizer` and `accelerator.prepare`, as its `_run` does; `train/step.py`'s `train_step`
     on cache-shaped batches ({key, caption, latents, text}): `--warmup` steps, then `--steps` timed steps.
  3. Export with `models/lora.py`'s `save_adapter` (diffusers + ComfyUI files): `adapter_bytes`.
  4. Sampling with the family's pipeline (`spec.pipeline`), prompt embeddings passed in, output_type latent
     (no VAE decode): the base, then the exported adapter read back and attached by `models/adapters.py`
     (`read_adapter`, `attach`: what `Sampler` does), then fused (`adapters.fuse`). `sample_step_s` is the median
     time of a denoising step after the first: with classifier-free guidance a step is 2 transformer forwards.

Variants. `--both-checkpointing` runs `checkpointing` (train.gradient_checkpointing=true) and then
`no_checkpointing` (false; it skips sampling, which is the same model at inference). `--variant NAME:k=v,k=v`
(repeatable) adds a variant with those config overrides on top of the common ones, e.g.
`--variant fp8:train.base_storage=fp8`; `sample=false` and `warmup=N` in the list are the benchmark's own (skip
that variant's sampling; its untimed steps). A variant whose config does not validate is recorded with its
error and skipped. Each variant builds its own model; between variants memory is freed and CUDA peak stats reset. A CUDA
out-of-memory (or any other failure) in a variant is recorded (`"oom": true`, `"error"`, `"phase"`) and the next
variant runs. The JSON is rewritten after every variant, so a run cut short keeps what it measured.

Reported per variant: `params` (frozen transformer), `lora_params`, `lora_layers` (LoRA-wrapped Linear layers),
`tokens` (latent tokens per sample after patchify), `step_s` (median of the timed steps), `peak_mem_gb`
(training: CUDA max_memory_allocated since the variant started; on CPU the peak RSS of the whole process,
which never goes down), `mfu`, `mfu_lora`, `adapter_bytes` (the diffusers file; `adapter_files` has both),
`sample_step_s` {base, unfused, fused}, `sample_peak_mem_gb`, and the resolved lora/train config. The top level
repeats the first completed variant's figures and adds the device, versions and settings.

FLOPs and MFU (`wan_forward_flops`; matmul FLOPs, 2 per multiply-add, one sample, d = heads x head_dim,
S = latent tokens = (F/1)(H/2)(W/2) of the latents, T = 512 text tokens, L layers, p = 1*2*2 patch volume):
    patch embedding            2 S (16 p) d
    time embedding             2 (256 d + d d + d 6d)                    per sample (not per token)
    text embedding             2 T (4096 d + d d)
    per layer x L:
      self-attn Q, K, V, O     8 S d^2
      self-attn scores+values  4 S^2 d                                   (QK^T and PV)
      cross-attn Q, O          4 S d^2
      cross-attn K, V          4 T d^2                                   (over the 512 text tokens)
      cross-attn scores+values 4 S T d
      FFN                      4 S d ffn
    output projection          2 S d (16 p)
    LoRA, each adapted Linear  2 N r (in + out), N = T for attn2.to_k/to_v, else S
Norms, RoPE, softmax, modulation and other elementwise work are not counted. `mfu` follows the usual
convention: model FLOPs per step = 3 x forward (forward + backward), recompute of gradient checkpointing NOT
counted, divided by the step time and the card's dense bf16 peak (H100 SXM / H200 989 TFLOP/s, H100 PCIe 756,
H100 NVL 835, A100 312; `--peak-tflops` overrides; unknown cards and CPUs get null). The convention overstates
the work of a LoRA step, whose frozen base needs no weight gradients, so `mfu_lora` counts what such a step
must compute: forward, plus backward input gradients of the video-token Linears (all but block 0's Q/K/V,
whose input needs no gradient) and the output projection (1x forward), attention scores+values (2x), LoRA
(2x: weight and input gradients, less A's input gradient where the input needs none: block 0's Q/K/V and the
text-side K/V); none for the patch, time, text embeddings and the text-side K/V (inputs need no gradient,
weights are frozen). It equals what torch's FlopCounterMode counts for a step with SDPA's math backend. Flash attention's backward recomputes the scores and checkpointing
the blocks: neither is counted, so hardware utilisation is higher than both figures.

Import needs: torch, diffusers, peft, accelerate, transformers, safetensors, PyYAML, numpy. Nothing here decodes
video: PyAV, decord and webdataset are never imported (a test checks), so it runs where they are not installed;
reelora itself need not be installed either (run from the checkout, it imports the checkout's packages). On a
CPU it uses one torch thread when the machine is busy (`--threads` overrides; see `auto_threads`).
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _import_this_checkout() -> None:
    """Where reelora is not installed (a bare GPU box with the checkout copied over), import it from this
    checkout, each package where pyproject.toml's package-dir puts it (reelora.models -> models/, ...)."""
    try:
        import reelora.train  # noqa: F401
        return
    except ImportError:
        pass
    import importlib.util

    for name, folder in (("reelora", "reelora"), ("reelora.data", "data"), ("reelora.models", "models"), ("reelora.train", "train")):
        spec = importlib.util.spec_from_file_location(name, ROOT / folder / "__init__.py", submodule_search_locations=[str(ROOT / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        if "." in name:
            setattr(sys.modules["reelora"], name.split(".", 1)[1], module)


_import_this_checkout()
TEXT_LEN = 512  # WanSpec.max_text_len: Wan's cross-attention sees the padded prompt
PROMPT_TOKENS = 64  # non-zero tokens of the stand-in prompt embedding; the rest is zero padding
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0), ("A100", 312.0))
"""Dense bf16 tensor-core peak by device-name substring (first match wins)."""
_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[wan_realsize {time.perf_counter() - _T0:7.1f}s] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------------
# FLOPs (see the module docstring)

_TEXT_SIDE = ("attn2.to_k", "attn2.to_v", "attn2.add_k_proj", "attn2.add_v_proj")


def wan_forward_flops(config: dict, latent_shape: tuple[int, int, int], text_len: int = TEXT_LEN,
                      lora_layers: list[tuple[str, int, int]] = (), rank: int = 0) -> dict[str, int]:
    """Matmul FLOPs of one WanTransformer3DModel forward for one sample, by part.

    Args:
        config: the transformer's config (models.wan.PUBLISHED_TRANSFORMER entry or `transformer.config`).
        latent_shape: latent (frames, height, width) before patchify.
        lora_layers: (module name, in_features, out_features) of each LoRA-wrapped Linear; `rank` its rank.
    """
    pt, ph, pw = config["patch_size"]
    patch = pt * ph * pw
    d = config["num_attention_heads"] * config["attention_head_dim"]
    f, h, w = latent_shape
    s, t, n_layers, ffn = (f // pt) * (h // ph) * (w // pw), text_len, config["num_layers"], config["ffn_dim"]
    return {
        "patch_embed": 2 * s * config["in_channels"] * patch * d,
        "time_embed": 2 * (config["freq_dim"] * d + d * d + d * 6 * d),
        "text_embed": 2 * t * (config["text_dim"] * d + d * d),
        "self_attn_proj": n_layers * 8 * s * d * d,
        "self_attn_core": n_layers * 4 * s * s * d,
        "cross_attn_proj_video": n_layers * 4 * s * d * d,
        "cross_attn_proj_text": n_layers * 4 * t * d * d,
        "cross_attn_core": n_layers * 4 * s * t * d,
        "ffn": n_layers * 4 * s * d * ffn,
        "proj_out": 2 * s * d * config["out_channels"] * patch,
        "lora": sum(2 * (t if name.endswith(_TEXT_SIDE) else s) * rank * (i + o) for name, i, o in lora_layers),
    }


def step_flops(config: dict, parts: dict[str, int], latent_shape: tuple[int, int, int], samples: int,
               lora_layers: list[tuple[str, int, int]] = (), rank: int = 0, text_len: int = TEXT_LEN) -> dict[str, int]:
    """Per optimizer step over `samples` samples: `forward`, `model` (3 x forward, the MFU convention) and `lora`
    (forward + the backward matmuls autograd runs when only the LoRA weights train, see the module docstring)."""
    forward = sum(parts.values())
    d = config["num_attention_heads"] * config["attention_head_dim"]
    pt, ph, pw = config["patch_size"]
    s = (latent_shape[0] // pt) * (latent_shape[1] // ph) * (latent_shape[2] // pw)
    block0_qkv = 6 * s * d * d  # block 0's Q/K/V input is the (frozen) patch embedding: no gradient flows into it
    # LoRA backward: weight gradients of A and B, the input gradient of B, and of A where its input carries one.
    no_input_grad = sum(2 * (text_len if name.endswith(_TEXT_SIDE) else s) * i * rank for name, i, o in lora_layers
                        if name.endswith(_TEXT_SIDE) or re.fullmatch(r"blocks\.0\.attn1\.to_[qkv]", name))
    backward = (parts["self_attn_proj"] - block0_qkv + parts["cross_attn_proj_video"] + parts["ffn"] + parts["proj_out"]
                + 2 * (parts["self_attn_core"] + parts["cross_attn_core"]) + 2 * parts["lora"] - no_input_grad)
    return {"forward": samples * forward, "model": samples * 3 * forward, "lora": samples * (forward + backward)}


def peak_tflops(device_name: str | None, override: float | None) -> float | None:
    if override:
        return override
    for key, value in PEAK_BF16_TFLOPS:
        if device_name and key in device_name:
            return value
    return None


# ---------------------------------------------------------------------------------------------------------
# Command line and variants


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=("1.3b", "14b"), default="1.3b", help="published Wan2.1 T2V transformer")
    ap.add_argument("--config", default=None, help="training YAML (default: configs/wan2.1-t2v-<size>-lora*.yaml)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=81)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed training steps first (compile, allocator, cuBLAS)")
    ap.add_argument("--sample-steps", type=int, default=2, help="timed denoising steps per sampling mode (0: no sampling)")
    ap.add_argument("--rank", type=int, default=None, help="lora.rank (lora.alpha stays as the config says)")
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                    help="train.mixed_precision bf16 (bf16 base, fp32 LoRA) or fp32 ('no'); default: the config's")
    ap.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                    help="train.gradient_checkpointing (default: the config's)")
    ap.add_argument("--both-checkpointing", action="store_true",
                    help="run the variants 'checkpointing' and 'no_checkpointing' in sequence")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,KEY=VALUE",
                    help="an extra variant with these config overrides (repeatable)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="config override for every variant (repeatable), e.g. --set train.batch_size=2")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU: torch intra-op threads (default: all cores on an idle machine, one on a busy one)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the random weights and inputs")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense bf16 peak, for MFU")
    ap.add_argument("--json", default=None, help="write the results here (rewritten after every variant)")
    ap.add_argument("--workdir", default=None, help="where adapters are exported and kept (default: a temporary folder, removed)")
    args = ap.parse_args(argv)
    if args.config is None:
        plain = ROOT / "configs" / f"wan2.1-t2v-{args.size}-lora.yaml"
        args.config = str(plain if plain.is_file() else ROOT / "configs" / f"wan2.1-t2v-{args.size}-lora-fsdp.yaml")
    if args.steps < 1 or args.warmup < 0 or args.sample_steps < 0:
        ap.error("--steps must be >= 1, --warmup and --sample-steps >= 0")
    return args


def common_overrides(args: argparse.Namespace) -> list[str]:
    """Config overrides every variant gets: one micro-batch per step (so step_s is per micro-batch), then the flags."""
    out = ["train.grad_accum=1"]
    if args.rank is not None:
        out.append(f"lora.rank={args.rank}")
    if args.dtype is not None:
        out.append(f"train.mixed_precision={'bf16' if args.dtype == 'bf16' else 'no'}")
    if args.gradient_checkpointing is not None:
        out.append(f"train.gradient_checkpointing={str(args.gradient_checkpointing).lower()}")
    return out + list(args.overrides)


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'fp8:train.fp8_base=true,train.x=[a, b]' -> ('fp8', ['train.fp8_base=true', 'train.x=[a, b]']).

    Overrides are split at commas followed by `key=`, so list values keep their commas.

    Raises:
        ValueError: no NAME: prefix, a bad name, or an override without '='.
    """
    name, sep, rest = text.partition(":")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"--variant {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...] with a plain NAME")
    overrides = [o.strip() for o in re.split(r",(?=\s*[A-Za-z_][\w.]*=)", rest) if o.strip()]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"--variant {text!r}: {bad[0]!r} is not KEY=VALUE")
    return name, overrides


VARIANT_KEYS = ("sample", "warmup")
"""Keys of a --variant that are the benchmark's, not config keys: sample=false skips its sampling, warmup=N
sets its untimed steps (e.g. 2 where compilation spans the first steps)."""


def plan_variants(args: argparse.Namespace) -> list[dict]:
    """[{name, overrides, sample[, warmup]}] in run order."""
    base = common_overrides(args)
    plan = []
    if args.both_checkpointing:
        plan.append({"name": "checkpointing", "overrides": base + ["train.gradient_checkpointing=true"], "sample": True})
        # Inference does not checkpoint: sampling would measure the same model as 'checkpointing' again.
        plan.append({"name": "no_checkpointing", "overrides": base + ["train.gradient_checkpointing=false"], "sample": False})
    for text in args.variant:
        name, extra = parse_variant(text)
        own = {k: v for k, _, v in (o.partition("=") for o in extra) if k in VARIANT_KEYS}
        extra = [o for o in extra if o.partition("=")[0] not in VARIANT_KEYS]
        if own.get("sample", "true").lower() not in ("true", "false") or not own.get("warmup", "0").isdigit():
            raise ValueError(f"--variant {text!r}: sample takes true/false, warmup a count")
        plan.append({"name": name, "overrides": base + extra, "sample": own.get("sample", "true").lower() == "true",
                     **({"warmup": int(own["warmup"])} if "warmup" in own else {})})
    if not plan:
        plan.append({"name": "default", "overrides": base, "sample": True})
    names = [p["name"] for p in plan]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must differ: {names}")
    return plan


# ---------------------------------------------------------------------------------------------------------
# Inputs


def procedural_video(frames: int, height: int, width: int) -> torch.Tensor:
    """A smooth moving pattern [1, F, 3, H, W] in [-1, 1] (no file, no decoder)."""
    t = torch.linspace(0, 1, frames).view(frames, 1, 1)
    y = torch.linspace(-1, 1, height).view(1, height, 1)
    x = torch.linspace(-1, 1, width).view(1, 1, width)
    chans = [torch.sin(3.1 * x + 2.0 * torch.pi * t + 0.7 * c) * torch.cos(2.3 * y - torch.pi * t + 0.3 * c) for c in range(3)]
    return torch.stack(chans, dim=1).unsqueeze(0).clamp(-1, 1)


def make_inputs(args: argparse.Namespace, spec, device: torch.device) -> dict:
    """Latents from the real Wan VAE config on a generated video, stand-in text embeddings, the scheduler."""
    from diffusers import AutoencoderKLWan

    from reelora.models.common import count_params, seeded
    from reelora.models.spec import Components
    from reelora.models.wan import PUBLISHED_TRANSFORMER

    with seeded(args.seed):
        vae = AutoencoderKLWan().eval()  # the default config is Wan2.1's VAE; float32 as reelora loads it
    vae.to(device)
    video = procedural_video(args.frames, args.height, args.width)
    log(f"encoding a {args.frames}x{args.height}x{args.width} video with the Wan VAE ({count_params(vae) / 1e6:.0f}M params) on {device}")
    sync(device)
    t0 = time.perf_counter()
    latents = spec.encode_video(Components(family=spec.family, source="benchmark", vae=vae), video)
    sync(device)
    encode_s = time.perf_counter() - t0
    latents = latents[0].float().cpu()  # [16, F', H', W'] as a cache entry holds it
    vae.to("cpu")  # training reads cached latents: the VAE stays out of device memory until sampling
    g = torch.Generator().manual_seed(args.seed + 1)
    text_dim = PUBLISHED_TRANSFORMER[args.size]["text_dim"]  # UMT5-XXL's width, 4096
    prompt = torch.zeros(TEXT_LEN, text_dim)
    prompt[:PROMPT_TOKENS] = torch.randn(PROMPT_TOKENS, text_dim, generator=g)
    scheduler = spec.tiny(seed=args.seed, components=("scheduler",)).scheduler  # Wan's flow UniPC scheduler
    log(f"latents {tuple(latents.shape)} in {encode_s:.1f} s")
    return {"vae": vae, "latents": latents, "prompt": prompt, "scheduler": scheduler, "vae_encode_s": encode_s,
            "vae_params": count_params(vae)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_mem_gb": torch.cuda.max_memory_allocated(device) / 1e9,
                "peak_mem_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9}
    return {"peak_mem_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}  # Linux: KiB


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


# ---------------------------------------------------------------------------------------------------------
# One variant: train, export, sample


def run_variant(rec: dict, plan: dict, args: argparse.Namespace, spec, inputs: dict, device: torch.device, workdir: Path) -> None:
    """Fill `rec` as the variant goes (a failure keeps what was measured before it)."""
    from accelerate import Accelerator

    from reelora.dtypes import parse_dtype
    from reelora.models.lora import save_adapter
    from reelora.models.spec import Components
    from reelora.models.wan import PUBLISHED_IDS, PUBLISHED_TRANSFORMER, published_transformer
    from reelora.train.bench import time_train_steps
    from reelora.train.config import load_config
    from reelora.train.loop import _teardown, build_model_and_optimizer, prepare, with_family_defaults
    from reelora.train.parallel import full_lora_state_dict
    from reelora.train.step import StepContext

    rec["phase"] = "config"
    cfg = with_family_defaults(load_config(args.config, plan["overrides"]), spec)  # the spec: no hub lookup
    rec["config"] = {"lora": dataclasses.asdict(cfg.lora), "train": dataclasses.asdict(cfg.train),
                     "optim": dataclasses.asdict(cfg.optim)}
    mp = cfg.train.mixed_precision
    weight_dtype = parse_dtype("fp32" if mp == "no" else mp, "train.mixed_precision")  # as train/loop.py load_backbone
    reset_memory(device)
    accelerator = Accelerator(mixed_precision=mp, cpu=device.type == "cpu")
    try:
        rec["phase"] = "build"
        t0 = time.perf_counter()
        # train.offload_blocks: as train/loop.py's load_backbone, the base is built in CPU memory and the memory
        # tools move what stays resident (loop.prepare keeps accelerate from moving the whole model).
        build_device = "cpu" if cfg.train.offload_blocks else accelerator.device
        transformer = published_transformer(args.size, device=build_device, dtype=weight_dtype, seed=args.seed)
        comps = Components(family=spec.family, source=f"{PUBLISHED_IDS[args.size]} (architecture, random weights)",
                           transformer=transformer, scheduler=inputs["scheduler"], revision=f"random-seed{args.seed}")
        model, optimizer, lr_schedule, params = build_model_and_optimizer(cfg, spec, comps, accelerator)
        model, optimizer = prepare(cfg, accelerator, model, optimizer)
        rec["build_s"] = time.perf_counter() - t0
        lora_layers = [(n, m.in_features, m.out_features) for n, m in transformer.named_modules() if hasattr(m, "lora_A")]
        rec["params"] = sum(p.numel() for n, p in transformer.named_parameters() if "lora_" not in n)
        rec["lora_params"] = sum(p.numel() for p in params)
        rec["lora_layers"] = len(lora_layers)
        log(f"[{plan['name']}] built in {rec['build_s']:.1f} s: {rec['params']:,} frozen params, {rec['lora_layers']} LoRA "
            f"layers, {rec['lora_params']:,} LoRA params (rank {cfg.lora.rank}), base in {weight_dtype}, "
            f"gradient checkpointing {cfg.train.gradient_checkpointing}")

        latents = inputs["latents"]
        latent_shape = tuple(latents.shape[1:])
        parts = wan_forward_flops(PUBLISHED_TRANSFORMER[args.size], latent_shape, lora_layers=lora_layers, rank=cfg.lora.rank)
        samples = cfg.train.batch_size * cfg.train.grad_accum
        rec["flops"] = {**step_flops(PUBLISHED_TRANSFORMER[args.size], parts, latent_shape, samples, lora_layers, cfg.lora.rank),
                        "forward_parts": parts}

        rec["phase"] = "train"
        b = cfg.train.batch_size
        cache_dtype = weight_dtype  # what `reelora cache --dtype` would store next to this run
        batch = {"key": [f"bench-{i}" for i in range(b)], "caption": ["benchmark"] * b,
                 "latents": latents.to(cache_dtype).unsqueeze(0).repeat(b, 1, 1, 1, 1),
                 "text": {"prompt_embeds": inputs["prompt"].to(cache_dtype).unsqueeze(0).repeat(b, 1, 1)}}
        empty = {"prompt_embeds": torch.zeros(TEXT_LEN, inputs["prompt"].shape[1], dtype=cache_dtype)}
        ctx = StepContext(cfg, accelerator, spec, comps, model, optimizer, lr_schedule, params, empty_text=empty)
        warmup = plan.get("warmup", args.warmup)

        def log_step(step: int, dt: float, warm: bool, metrics: dict) -> None:
            log(f"[{plan['name']}] step {step}{' (warm-up)' if warm else ''}: {dt:.2f} s, loss {metrics['loss']:.4f}")

        # The peak is not reset after the warm-up: peak_mem_gb is the variant's since reset_memory above.
        timed = time_train_steps(ctx, [batch] * cfg.train.grad_accum, args.steps, device, warmup=warmup,
                                 reset_peak_after_warmup=False, on_step=log_step)
        rec["step_times_s"] = timed["step_times_s"]
        rec["step_s"] = timed["step_s"]
        rec["samples_per_s"] = samples / rec["step_s"]
        rec["losses"] = timed["losses"]
        rec.update(peak_memory_gb(device))
        peak = peak_tflops(rec.get("device_name"), args.peak_tflops)
        if peak and device.type == "cuda":
            rec["mfu"] = rec["flops"]["model"] / rec["step_s"] / (peak * 1e12)
            rec["mfu_lora"] = rec["flops"]["lora"] / rec["step_s"] / (peak * 1e12)
        else:
            rec["mfu"] = rec["mfu_lora"] = None
        log(f"[{plan['name']}] step_s {rec['step_s']:.3f}, peak {rec['peak_mem_gb']:.2f} GB"
            + (f", MFU {rec['mfu']:.1%} (LoRA-exact {rec['mfu_lora']:.1%})" if rec["mfu"] is not None else ""))

        rec["phase"] = "export"
        t0 = time.perf_counter()
        transformer = accelerator.unwrap_model(model, keep_fp32_wrapper=False)  # plain forward again, for sampling
        targets = cfg.lora.target_modules if cfg.lora.target_modules is not None else list(spec.lora_targets)
        lineage = {"base_model": PUBLISHED_IDS[args.size], "base_revision": comps.revision, "family": spec.family,
                   "step": warmup + args.steps, "config": cfg.to_dict(), "benchmark": "benchmarks/wan_realsize.py"}
        paths = save_adapter(workdir / plan["name"] / "adapter", full_lora_state_dict(transformer), rank=cfg.lora.rank,
                             alpha=cfg.lora.alpha, target_modules=targets, family=spec.family, lineage=lineage)
        rec["export_s"] = time.perf_counter() - t0
        rec["adapter_files"] = {p.name: p.stat().st_size for k, p in paths.items() if k != "card"}
        rec["adapter_bytes"] = paths["diffusers"].stat().st_size
        log(f"[{plan['name']}] exported {rec['adapter_files']} in {rec['export_s']:.1f} s")

        # Training state goes before sampling: the sampler holds only the frozen model and the adapter.
        del ctx, optimizer, lr_schedule, params, model, batch
        accelerator.free_memory()
        if plan["sample"] and args.sample_steps:
            rec["phase"] = "sample"
            reset_memory(device)
            rec["sample_step_s"] = {}  # filled mode by mode: a failure in one keeps the ones before it
            time_sampling(rec["sample_step_s"], spec, transformer, inputs, paths["diffusers"], args, device, plan["name"])
            rec["sample_peak_mem_gb"] = peak_memory_gb(device)["peak_mem_gb"]
        rec["phase"] = "done"
    finally:
        accelerator.free_memory()
        _teardown(accelerator)  # forget accelerate's singletons: the next variant builds its own Accelerator


def time_sampling(out: dict, spec, transformer, inputs: dict, adapter_file: Path, args, device: torch.device, name: str) -> None:
    """Median seconds per denoising step into `out`: base, the exported adapter attached (unfused), then fused."""
    from reelora.models import adapters as adapter_io
    from reelora.models.spec import Components

    transformer.unload_lora()  # drop the training adapter: sampling reads the exported file back, as a user would
    if transformer.is_gradient_checkpointing:
        transformer.disable_gradient_checkpointing()
    transformer.eval().requires_grad_(False)
    vae = inputs["vae"].to(device)  # the pipeline runs where its first module (the VAE) is; latents are not decoded
    pipe = spec.pipeline(Components(family=spec.family, source="benchmark", transformer=transformer, vae=vae,
                                    scheduler=inputs["scheduler"]))
    pipe.set_progress_bar_config(disable=True)
    guidance = spec.sample_defaults.guidance
    prompt = inputs["prompt"].unsqueeze(0).to(device)

    def denoise() -> float:
        stamps: list[float] = []

        def stamp(pipe, i, t, kwargs):
            sync(device)
            stamps.append(time.perf_counter())
            return kwargs

        with torch.no_grad():
            pipe(prompt_embeds=prompt, negative_prompt_embeds=torch.zeros_like(prompt), num_frames=args.frames,
                 height=args.height, width=args.width, num_inference_steps=args.sample_steps + 1, guidance_scale=guidance,
                 generator=torch.Generator("cpu").manual_seed(args.seed), output_type="latent",
                 max_sequence_length=TEXT_LEN, callback_on_step_end=stamp)
        # The first step carries the setup (timesteps, noise, first-call kernels): time the ones after it.
        return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))

    try:
        out["base"] = denoise()
        log(f"[{name}] sampling base: {out['base']:.3f} s/step (guidance {guidance}: 2 forwards per step)")
        adapter = adapter_io.read_adapter(adapter_file, 1.0, spec.family)
        names = adapter_io.attach(pipe, [adapter], model_name=f"Wan2.1 {args.size}")
        out["unfused"] = denoise()
        log(f"[{name}] sampling unfused adapter: {out['unfused']:.3f} s/step")
        adapter_io.fuse(pipe, names)
        out["fused"] = denoise()
        log(f"[{name}] sampling fused adapter: {out['fused']:.3f} s/step")
    finally:
        inputs["vae"].to("cpu")  # also after a failure: the next variant's peak must not include it


# ---------------------------------------------------------------------------------------------------------


SUMMARY_KEYS = ("params", "lora_params", "lora_layers", "adapter_bytes", "step_s", "peak_mem_gb", "mfu", "mfu_lora",
                "sample_step_s")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    plan = plan_variants(args)
    if device.type == "cpu":
        from reelora.demo.pretrain import auto_threads

        # On a shared box two OpenMP threads wait on each other at every op: a 1.3B forward at 32 tokens took
        # 11.4 s with 2 threads and 1.5 s with 1 on the 2-core development machine under load.
        torch.set_num_threads(args.threads or auto_threads())

    import accelerate
    import diffusers
    import peft
    import transformers

    from reelora.models.registry import family_spec
    from reelora.models.wan import PUBLISHED_IDS

    spec = family_spec("wan")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    result: dict = {
        "benchmark": "wan_realsize", "size": args.size, "model": PUBLISHED_IDS[args.size] + " (architecture, random weights)",
        "config": str(Path(args.config).resolve().relative_to(ROOT)) if Path(args.config).resolve().is_relative_to(ROOT) else args.config,
        "device": device.type, "device_name": device_name, "peak_tflops": peak_tflops(device_name, args.peak_tflops) if device.type == "cuda" else None,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                     "diffusers": diffusers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
                     "transformers": transformers.__version__},
        "settings": {"frames": args.frames, "height": args.height, "width": args.width, "steps": args.steps,
                     "warmup": args.warmup, "sample_steps": args.sample_steps, "sample_guidance": spec.sample_defaults.guidance,
                     "text_len": TEXT_LEN, "seed": args.seed, "overrides": common_overrides(args), "attention": "torch SDPA (diffusers default)"},
        "variants": [],
    }
    log(f"Wan2.1 {args.size} on {device} ({device_name}), variants: {', '.join(p['name'] for p in plan)}")

    # Fail early on a config that does not validate (a typo in --set): every variant would fail alike.
    from reelora.train.config import ConfigError, load_config

    load_config(args.config, common_overrides(args))
    inputs = make_inputs(args, spec, device)
    lat = inputs["latents"].shape
    result.update({"latent_shape": list(lat), "tokens": lat[1] * (lat[2] // 2) * (lat[3] // 2),
                   "vae_params": inputs["vae_params"], "vae_encode_s": inputs["vae_encode_s"]})
    write(args.json, result)

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="wan-realsize-"))
    for p in plan:
        rec = {"name": p["name"], "overrides": p["overrides"], "device_name": device_name, "oom": False}
        result["variants"].append(rec)
        log(f"variant {p['name']}: {' '.join(p['overrides'])}")
        t0 = time.perf_counter()
        try:
            load_config(args.config, p["overrides"])
            run_variant(rec, p, args, spec, inputs, device, workdir)
        except ConfigError as exc:
            rec["error"] = f"config: {exc}"
            log(f"variant {p['name']} skipped: {exc}")
        except Exception as exc:  # one variant's failure (OOM above all) must not cost the others their run
            rec["oom"] = is_oom(exc)
            rec["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc()
            log(f"variant {p['name']} failed in phase {rec.get('phase')}: {'CUDA out of memory' if rec['oom'] else rec['error'][:200]}")
        rec.pop("device_name")
        rec["wall_s"] = time.perf_counter() - t0
        reset_memory(device)
        summarise(result)
        write(args.json, result)
    if not args.workdir:  # the exported adapters were measured; a 1.3B rank-32 pair is ~350 MB
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    result["wall_s"] = time.perf_counter() - _T0
    summarise(result)
    write(args.json, result)
    log("done" + (f": {args.json}" if args.json else ""))
    print(json.dumps({k: result.get(k) for k in ("tokens", *SUMMARY_KEYS)}, indent=1), flush=True)
    return result


def summarise(result: dict) -> None:
    """Top-level copies of the first variant that completed (so a one-variant run reads flat)."""
    done = [v for v in result["variants"] if v.get("phase") == "done"]
    if done:
        result["summary_variant"] = done[0]["name"]
        result.update({k: done[0].get(k) for k in SUMMARY_KEYS})


def write(path: str | None, result: dict) -> None:
    if path:
        from reelora.files import write_json_atomic

        write_json_atomic(path, result)


if __name__ == "__main__":
    main()
